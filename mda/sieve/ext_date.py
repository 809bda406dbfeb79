"""mda.sieve.ext_date -- the "date" and "currentdate" tests (RFC 5260).

date tests a date-part of a date in a header field (for Received, the date after
the last ";"); currentdate tests the time of delivery. :zone "+hhmm" converts to
that zone, :originalzone keeps the header's own; without either the server's
local zone is used. A header whose date does not parse, or cannot be shown in the
zone asked for (year 9999 a zone to the east), makes the test false.
"""

from __future__ import annotations

import email.utils
import re
from datetime import date, datetime, timedelta, timezone

from .commands import check_match
from .ext_index import add_index_tags
from .interpreter import Context
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("date")

DATE_PARTS = ("year", "month", "day", "date", "julian", "hour", "minute", "second", "time",
              "iso8601", "std11", "zone", "weekday")
_ZONE = re.compile(r"([+-])(\d\d)(\d\d)\Z")
_MJD_EPOCH = date(1858, 11, 17)


def parse_zone(value: str) -> timezone | None:
    m = _ZONE.match(value.strip())
    if not m or int(m.group(3)) >= 60 or int(m.group(2)) >= 24:
        return None
    delta = timedelta(hours=int(m.group(2)), minutes=int(m.group(3)))
    return timezone(-delta if m.group(1) == "-" else delta)


def _zone_text(dt: datetime, colon: bool = False) -> str:
    offset = dt.utcoffset() or timedelta(0)
    sign = "-" if offset < timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}{':' if colon else ''}{minutes % 60:02d}"


def date_part(dt: datetime, part: str) -> str:
    part = part.lower()
    if part == "year":
        return f"{dt.year:04d}"
    if part == "month":
        return f"{dt.month:02d}"
    if part == "day":
        return f"{dt.day:02d}"
    if part == "date":
        return f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}"
    if part == "julian":
        return str((dt.date() - _MJD_EPOCH).days)
    if part == "hour":
        return f"{dt.hour:02d}"
    if part == "minute":
        return f"{dt.minute:02d}"
    if part == "second":
        return f"{dt.second:02d}"
    if part == "time":
        return f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}"
    if part == "iso8601":
        return dt.strftime("%Y-%m-%dT%H:%M:%S") + _zone_text(dt, colon=True)
    if part == "std11":
        return email.utils.format_datetime(dt)
    if part == "zone":
        return _zone_text(dt)
    if part == "weekday":
        return str((dt.weekday() + 1) % 7)   # 0 is Sunday
    raise ValueError(part)


def _in_zone(node: Node, ctx: Context, dt: datetime) -> datetime:
    if node.tags.get("originalzone"):
        return dt
    if "zone" in node.tags:
        tz = parse_zone(ctx.string(node, "zone"))
        if tz is None:
            raise ctx.fail(f"bad time zone {node.tags['zone']!r}", node)
        return dt.astimezone(tz)
    return dt.astimezone()


def parse_header_date(value: str, header: str) -> datetime | None:
    if header.lower() == "received":
        value = value.rpartition(";")[2]
    try:
        dt = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if dt is None:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt


def check_date(node: Node, checker: Checker) -> None:
    check_match(node, checker)
    part = node.positional[-2]
    if "${" not in part and part.lower() not in DATE_PARTS:
        raise checker.fail(node, f"unknown date part {part!r}")
    zone = node.tags.get("zone")
    if zone is not None and "${" not in zone and parse_zone(zone) is None:
        raise checker.fail(node, f"bad time zone {zone!r} (use +hhmm or -hhmm)")
    if node.tags.get("last") and "index" not in node.tags:
        raise checker.fail(node, ":last needs :index")


def _part(node: Node, ctx: Context, dt: datetime) -> str:
    part = ctx.string(node, len(node.positional) - 2)
    if part.lower() not in DATE_PARTS:
        raise ctx.fail(f"unknown date part {part!r}", node)
    return date_part(_in_zone(node, ctx, dt), part)


def test_date(node: Node, ctx: Context) -> bool:
    header = ctx.string(node, 0)
    found = ctx.message.header(header)
    index = node.tags.get("index")
    if index is not None:
        i = len(found) - index if node.tags.get("last") else index - 1
        found = [found[i]] if 0 <= i < len(found) else []
    else:
        found = found[:1]
    values = []
    for value in found:
        dt = parse_header_date(value, header)
        if dt is not None:
            try:
                values.append(_part(node, ctx, dt))
            except (OverflowError, ValueError):
                continue   # out of range once converted (Date: Fri, 31 Dec 9999 23:59:59 -1200)
    return ctx.match(node, values, node.positional[2])


def test_currentdate(node: Node, ctx: Context) -> bool:
    return ctx.match(node, [_part(node, ctx, ctx.env.now())], node.positional[1])


REGISTRY.test(Spec("date", "test", test_date, extension="date", positional=("string", "string", "stringlist"),
                   uses=("comparator", "match"), check=check_date, tags={
                       "zone": TagSpec("zone", "string", "zone"),
                       "originalzone": TagSpec("originalzone", None, "zone"),
                   }))
REGISTRY.test(Spec("currentdate", "test", test_currentdate, extension="date", positional=("string", "stringlist"),
                   uses=("comparator", "match"), check=check_date, tags={"zone": TagSpec("zone", "string", "zone")}))
add_index_tags("date")
