"""imapd.sort -- SORT (RFC 5256 section 3): base subjects, sort keys, ordering.

Pure functions over `SortFields`, the few values of a message that SORT and THREAD
look at (taken from its header by `fields_of`). No I/O: the command module
(`imapd.commands.ext_sort`) loads messages and sends the answer.

Rules from RFC 5256: strings compare with i;ascii-casemap (ASCII letters folded to
upper case); FROM, TO and CC compare the addr-mailbox (local part) of the first
address; DATE is the Date: header in UTC, or the internal date when it has none
or it cannot be parsed; SUBJECT is the base subject (section 2.1); ties keep the
ascending sequence order; REVERSE turns the following key around.

SECURITY: header values are hostile: they are decoded with errors replaced, the
subject's cleaning loops end because every pass removes text, and every value is
bounded to MAX_KEY characters before it is compared.
"""

from __future__ import annotations

import email.utils
import re
from dataclasses import dataclass

from .fetch import parse_addresses
from .parser import ParseError
from .search import decode_header_text

SORT_KEYS = ("ARRIVAL", "CC", "DATE", "FROM", "REVERSE", "SIZE", "SUBJECT", "TO")
MAX_KEY = 1000
MAX_CRITERIA = 20

# RFC 5256 section 5 (ABNF), matched on the already cleaned subject:
_BLOB = r"\[[^\[\]]*\][ ]*"                       # subj-blob
_REFWD = r"(?:re|fwd?)[ ]*(?:" + _BLOB + r")?:"    # subj-refwd
_LEADER = re.compile(r"(?:" + _BLOB + r")*" + _REFWD + r"|[ ]+", re.I)
_BLOB_AT_START = re.compile(_BLOB)
_FWD_WRAPPED = re.compile(r"\[fwd:(.*)\]\Z", re.I | re.S)
_WSP_RUN = re.compile(r"[ \t\r\n]+")


def base_subject(subject: str) -> tuple[str, bool]:
    """RFC 5256 2.1: (base subject, whether it was a reply or forward)."""
    s = _WSP_RUN.sub(" ", subject)[:MAX_KEY * 4]
    is_reply = False
    while True:
        # (2) trailers: "(fwd)" and whitespace at the end
        while True:
            if s.endswith(" "):
                s = s[:-1]
            elif s[-5:].lower() == "(fwd)":
                s = s[:-5]
            else:
                break
        # (3)-(5) leaders and blobs at the start, until nothing changes
        while True:
            before = s
            m = _LEADER.match(s)
            if m and m.group(0):
                if m.group(0).strip():
                    is_reply = True
                s = s[m.end():]
            m = _BLOB_AT_START.match(s)
            if m and s[m.end():]:
                s = s[m.end():]
            if s == before:
                break
        # (6) "[fwd: ... ]" wrapper
        m = _FWD_WRAPPED.match(s)
        if not m:
            break
        s = m.group(1)
        is_reply = True
    return s.upper()[:MAX_KEY] if s.isascii() else _ascii_upper(s)[:MAX_KEY], is_reply


def _ascii_upper(s: str) -> str:
    """i;ascii-casemap: only a-z are folded."""
    return "".join(c.upper() if "a" <= c <= "z" else c for c in s)


@dataclass(frozen=True)
class SortFields:
    """What SORT and THREAD need of one message."""
    seq: int
    uid: int
    arrival: float
    size: int
    date: float                 # sent date in UTC seconds (internal date as the fallback)
    subject: str                # base subject, folded
    is_reply: bool
    from_: str = ""
    to: str = ""
    cc: str = ""
    message_id: str = ""
    references: tuple[str, ...] = ()


def _first_mailbox(value: bytes | None) -> str:
    if not value:
        return ""
    for name, _adl, mailbox, host in parse_addresses(value):
        if mailbox is not None and host is not None:
            return _ascii_upper(mailbox.decode("utf-8", "replace"))[:MAX_KEY]
    return ""


_MSG_ID = re.compile(rb"<([^<>\s]{1,250})>")
MAX_REFERENCES = 100


def message_ids(value: bytes | None) -> list[str]:
    """The msg-ids in a References or In-Reply-To value, in order, bounded."""
    if not value:
        return []
    return [m.decode("ascii", "replace") for m in _MSG_ID.findall(value[:64 * 1024])][-MAX_REFERENCES:]


def sent_date(value: bytes | None, fallback: float) -> float:
    if value:
        try:
            parsed = email.utils.parsedate_tz(value.decode("ascii", "replace"))
            if parsed is not None:
                return float(email.utils.mktime_tz(parsed))
        except (ValueError, OverflowError, TypeError):
            pass
    return fallback


#: What fields_of can compute; THREAD stands for Message-ID and References.
FIELD_GROUPS = frozenset({"SUBJECT", "DATE", "FROM", "TO", "CC", "THREAD"})


def fields_of(seq: int, uid: int, arrival: float, size: int, get, wanted=FIELD_GROUPS) -> SortFields:
    """SortFields from a header: `get(name: bytes) -> bytes | None` gives the first
    value of a field (lower-case name). Only the `wanted` groups are computed (the
    others keep their empty defaults): parsing addresses is the costly part."""
    subject, is_reply = base_subject(decode_header_text(get(b"subject") or b"")) \
        if "SUBJECT" in wanted or "THREAD" in wanted else ("", False)
    refs: list[str] = []
    mid: list[str] = []
    if "THREAD" in wanted:
        refs = message_ids(get(b"references"))
        if not refs:
            refs = message_ids(get(b"in-reply-to"))[:1]
        mid = message_ids(get(b"message-id"))
    date = sent_date(get(b"date"), arrival) if "DATE" in wanted or "THREAD" in wanted else arrival
    return SortFields(seq, uid, arrival, size, date, subject, is_reply,
                      _first_mailbox(get(b"from")) if "FROM" in wanted else "",
                      _first_mailbox(get(b"to")) if "TO" in wanted else "",
                      _first_mailbox(get(b"cc")) if "CC" in wanted else "",
                      mid[0] if mid else "", tuple(refs))


def parse_criteria(r) -> list[tuple[str, bool]]:
    """( [REVERSE] key ... ) from a Reader, as [(KEY, reverse)]."""
    words = [w.upper() for w in r.paren_list(r.atom, allow_empty=False)]
    if len(words) > MAX_CRITERIA:
        raise ParseError("Too many sort criteria")
    out: list[tuple[str, bool]] = []
    reverse = False
    for w in words:
        if w not in SORT_KEYS:
            raise ParseError("Unknown sort criterion")
        if w == "REVERSE":
            if reverse:
                raise ParseError("REVERSE twice")
            reverse = True
            continue
        out.append((w, reverse))
        reverse = False
    if reverse:
        raise ParseError("REVERSE without a sort key")
    return out


_VALUE = {
    "ARRIVAL": lambda f: f.arrival,
    "CC": lambda f: f.cc,
    "DATE": lambda f: f.date,
    "FROM": lambda f: f.from_,
    "SIZE": lambda f: f.size,
    "SUBJECT": lambda f: f.subject,
    "TO": lambda f: f.to,
}


def sort_messages(items: list[SortFields], criteria: list[tuple[str, bool]]) -> list[SortFields]:
    """The messages in the order the criteria give; equal ones by sequence number."""
    out = sorted(items, key=lambda f: f.seq)
    for key, reverse in reversed(criteria):  # stable sorts, least significant key first
        out.sort(key=_VALUE[key], reverse=reverse)
    return out
