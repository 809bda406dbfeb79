"""imapd.search -- evaluate RFC 3501 search keys against messages.

Every key of RFC 3501 6.4.4: flags and keywords, NEW / OLD / RECENT, sequence and
UID sets, internal and sent dates, sizes, header fields (decoded from RFC 2047,
compared case-insensitively), BODY and TEXT (text parts decoded from base64 and
quoted-printable and from their charset), NOT, OR and lists. Strings arrive in
UTF-8 or US-ASCII (CHARSET); anything else is refused by the command with
[BADCHARSET].

SECURITY: the search program is bounded by the parser; message content is hostile
and decoded with errors replaced, never raised.
"""

from __future__ import annotations

import base64
import binascii
import datetime as _dt
import email.header
import email.utils
import quopri
from dataclasses import dataclass
from typing import Callable

from .fetch import LoadedMessage
from .mime import Part
from .parser import SearchKey

CHARSETS = ("UTF-8", "US-ASCII")


@dataclass
class Candidate:
    """What the search sees of one message; `load` reads its content on demand."""
    seq: int
    uid: int
    flags: frozenset
    recent: bool
    internaldate: float
    size: Callable[[], int]
    load: Callable[[], LoadedMessage]
    modseq: int = 0


def decode_header_text(value: bytes) -> str:
    """A header value with RFC 2047 words decoded; never raises."""
    text = value.decode("utf-8", "replace")
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except Exception:
        return text


def _decode_body(part: Part) -> str:
    cte = (part.get(b"content-transfer-encoding") or b"").strip().lower()
    data = part.body
    try:
        if cte == b"base64":
            data = base64.b64decode(b"".join(data.split()), validate=False)
        elif cte == b"quoted-printable":
            data = quopri.decodestring(data)
    except (binascii.Error, ValueError):
        pass
    charset = (part.param(b"charset") or b"utf-8").decode("ascii", "replace")
    try:
        return data.decode(charset, "replace")
    except (LookupError, ValueError):  # unknown charset, or a name Python cannot look up
        return data.decode("utf-8", "replace")


def body_text(tree: Part) -> str:
    """The text of every text/* leaf (and of messages inside message/rfc822), decoded."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if node.children:
            stack.extend(reversed(node.children))
        elif node.message is not None:
            out.append("\n".join(decode_header_text(v) for _n, v, _r in node.message.fields))
            stack.append(node.message)
        elif node.maintype.lower() in (b"text", b"message"):
            out.append(_decode_body(node))
    return "\n".join(out)


def _sent_date(tree: Part, fallback: float) -> _dt.date:
    value = tree.get(b"date")
    if value:
        parsed = email.utils.parsedate_tz(value.decode("ascii", "replace"))
        if parsed:
            try:
                return _dt.date(parsed[0], parsed[1], parsed[2])
            except ValueError:
                pass
    return _dt.datetime.fromtimestamp(fallback).date()


class Evaluator:
    """Evaluates one search program over candidates; `largest_seq` / `largest_uid`
    give `*` its value."""

    def __init__(self, largest_seq: int, largest_uid: int):
        self.largest_seq = largest_seq
        self.largest_uid = largest_uid
        self._texts: dict[int, dict] = {}

    def matches(self, key: SearchKey, c: Candidate) -> bool:
        op, args = key.op, key.args
        if op == "ALL":
            return True
        if op == "AND":
            return all(self.matches(k, c) for k in args)
        if op == "OR":
            return self.matches(args[0], c) or self.matches(args[1], c)
        if op == "NOT":
            return not self.matches(args[0], c)
        if op == "FLAG":
            name, wanted = args
            have = any(f.lower() == name.lower() for f in c.flags)
            return have == wanted
        if op == "RECENT":
            return c.recent
        if op == "NEW":
            return c.recent and "\\Seen" not in c.flags
        if op == "OLD":
            return not c.recent
        if op == "SEQ":
            return args[0].contains(c.seq, self.largest_seq)
        if op == "UID":
            return args[0].contains(c.uid, self.largest_uid)
        if op == "MODSEQ":
            return c.modseq >= args[0]
        if op == "LARGER":
            return c.size() > args[0]
        if op == "SMALLER":
            return c.size() < args[0]
        if op in ("BEFORE", "ON", "SINCE"):
            return self._compare_date(op, _dt.datetime.fromtimestamp(c.internaldate).date(), args[0])
        if op in ("SENTBEFORE", "SENTON", "SENTSINCE"):
            return self._compare_date(op[4:], _sent_date(c.load().tree, c.internaldate), args[0])
        if op == "HEADER":
            name, text = args
            tree = c.load().tree
            wanted = name.lower()
            values = [v for n, v, _r in tree.fields if n == wanted]
            if not text:
                return bool(values)
            needle = text.casefold()
            return any(needle in decode_header_text(v).casefold() for v in values)
        if op == "BODY":
            return args[0].casefold() in self._text(c, "body")
        if op == "TEXT":
            return args[0].casefold() in self._text(c, "text")
        return False

    @staticmethod
    def _compare_date(op: str, have: _dt.date, want: _dt.date) -> bool:
        if op == "BEFORE":
            return have < want
        if op == "ON":
            return have == want
        return have >= want

    def _text(self, c: Candidate, which: str) -> str:
        cache = self._texts.setdefault(c.uid, {})
        if which not in cache:
            tree = c.load().tree
            body = body_text(tree)
            cache["body"] = body.casefold()
            header = "\n".join(f"{n}: {decode_header_text(v)}" for n, v, _r in tree.fields)
            cache["text"] = (header + "\n" + body).casefold()
        return cache[which]


def decoder_for(charset: str):
    """A function turning search-string bytes into text in `charset`; None if unknown."""
    cs = charset.upper()
    if cs not in CHARSETS:
        return None

    def decode(data: bytes) -> str:
        from .parser import ParseError
        try:
            return data.decode("ascii" if cs == "US-ASCII" else "utf-8")
        except UnicodeDecodeError:
            raise ParseError(f"Search string is not valid {cs}") from None
    return decode
