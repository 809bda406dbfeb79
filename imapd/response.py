"""imapd.response -- IMAP values written for the wire.

Strings go out quoted when that is safe and as literals otherwise (8-bit data, CR,
LF, NUL or anything long), so no value taken from a message or a client can break
the framing of a response.
"""

from __future__ import annotations

import datetime as _dt
import re

from .parser import ASTRING_CHARS, MONTHS, char_class

MAX_QUOTED = 1024
# What a quoted string cannot carry (anything but printable ASCII), and what an
# astring cannot be sent as an atom with: one regular expression scan each.
_UNQUOTABLE = re.compile(rb"[^\x20-\x7e]")
_NOT_ASTRING = re.compile(b"[^" + char_class(ASTRING_CHARS)[1:])


def string(value: bytes | str) -> bytes:
    """A quoted string or, when quoting cannot carry it, a literal."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if len(value) <= MAX_QUOTED and not _UNQUOTABLE.search(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def literal(value: bytes | None) -> bytes:
    """Message content: always a literal (as clients expect for body data), or NIL."""
    if value is None:
        return b"NIL"
    return b"{%d}\r\n" % len(value) + value


def nstring(value: bytes | str | None) -> bytes:
    return b"NIL" if value is None else string(value)


def astring(value: bytes | str) -> bytes:
    """An atom where the grammar allows one, a string otherwise (mailbox names)."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if value and not _NOT_ASTRING.search(value) and value.upper() != b"NIL":
        return value
    return string(value)


_DATE_TIMES: dict[float, bytes] = {}


def date_time(ts: float | _dt.datetime) -> bytes:
    """INTERNALDATE form: "dd-Mon-yyyy hh:mm:ss +zzzz", in the server's local zone
    (a message's is shown again and again: the last few thousand are kept)."""
    if not isinstance(ts, _dt.datetime):
        got = _DATE_TIMES.get(ts)
        if got is None:
            if len(_DATE_TIMES) >= 4096:
                _DATE_TIMES.clear()
            got = _DATE_TIMES[ts] = date_time(_dt.datetime.fromtimestamp(ts).astimezone())
        return got
    if ts.tzinfo is None:
        ts = ts.astimezone()
    offset = ts.utcoffset() or _dt.timedelta(0)
    minutes = int(offset.total_seconds() // 60)
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (f"{ts.day:02d}-{MONTHS[ts.month - 1]}-{ts.year:04d} {ts.hour:02d}:{ts.minute:02d}:"
            f"{ts.second:02d} {sign}{minutes // 60:02d}{minutes % 60:02d}")
    return b'"' + text.encode() + b'"'


def paren(items) -> bytes:
    return b"(" + b" ".join(items) + b")"
