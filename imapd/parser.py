"""imapd.parser -- the IMAP4rev1 grammar without I/O.

Two layers:

* `CommandFramer` cuts the client's byte stream into whole commands. A command is a
  line, or several lines joined by literals (`{n}` synchronising, `{n+}`
  non-synchronising, RFC 7888). The framer says when to send a continuation
  request, and refuses a line or literal over its limit *before* reading it (no
  continuation is sent; a non-synchronising literal the client pushes anyway is
  skipped without being stored), so the connection survives.
* `Reader` walks one framed command: atoms, quoted strings, literals, lists,
  numbers, dates, sequence sets with `*`, flag lists, fetch attributes and search
  keys. Every mistake is a `ParseError`, which the protocol answers with a tagged
  BAD.

SECURITY: everything here is client input. Every size and count is bounded: the
line, each literal, the whole command, the number of literals, list nesting, the
number of sequence ranges and search-key depth. Nothing here touches a file.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass

MAX_NUMBER = 2**32 - 1
MAX_MODSEQ = 2**63 - 1
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_INDEX = {m.lower(): i + 1 for i, m in enumerate(MONTHS)}

# ATOM-CHAR: any CHAR except atom-specials: ( ) { SP CTL % * " \ ]
_ATOM_SPECIALS = set(b'(){ %*"\\]') | set(range(0, 32)) | {127}
ATOM_CHARS = frozenset(c for c in range(1, 128) if c not in _ATOM_SPECIALS)
ASTRING_CHARS = ATOM_CHARS | {ord("]")}
LIST_CHARS = ATOM_CHARS | {ord("%"), ord("*"), ord("]")}
TAG_CHARS = ASTRING_CHARS - {ord("+")}
FETCH_WORD_CHARS = ATOM_CHARS - {ord("["), ord("<")}

_DIGITS = frozenset(b"0123456789")
_SECTION_WORD = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.")
#: Reader._take's compiled character runs, by character set.
_RUNS: dict[frozenset, re.Pattern] = {}
_LITERAL_AT_END = re.compile(rb"\{(\d{1,10})(\+?)\}\r?\n\Z")
_LITERAL = re.compile(rb"[~]?\{(\d{1,10})\+?\}\r\n")
_DATE = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
_DATE_TIME = re.compile(rb'"([ \d]\d)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"')
#: Reader.maybe: whether a token has letters (compared without case).
_CASELESS: dict[bytes, bool] = {}


def char_class(chars) -> bytes:
    """A regular expression character class of these octets: b"[...]"."""
    return b"[" + b"".join(re.escape(bytes([c])) for c in sorted(chars)) + b"]"


class ParseError(Exception):
    """The command is not valid IMAP; answered with a tagged BAD carrying `text`."""

    def __init__(self, text: str, code: str | None = None):
        super().__init__(text)
        self.text = text
        self.code = code


# --------------------------------------------------------------------------- framing

@dataclass(frozen=True)
class Command:
    """One whole command as the client sent it, literals included (final CRLF removed)."""
    data: bytes


@dataclass(frozen=True)
class Continue:
    """Send a continuation request: the client is waiting to send a literal."""


@dataclass(frozen=True)
class Refused:
    """A command refused by the framer before being read whole; `response` is the
    complete tagged reply to send (CRLF included)."""
    tag: bytes
    response: bytes


@dataclass(frozen=True)
class Limits:
    max_line: int = 64 * 1024          # one line of a command, without literals
    max_literal: int = 64 * 1024 * 1024  # one literal (APPEND's message)
    max_command: int = 65 * 1024 * 1024  # everything of one command
    max_literals: int = 64             # literals in one command
    literal_minus: bool = False        # LITERAL-: non-synchronising literals <= 4096


def tag_of(line: bytes) -> bytes:
    """The tag at the start of a (possibly broken) command line, or b"*" if none is valid."""
    tag = line.split(b" ", 1)[0].rstrip(b"\r\n")
    if tag and len(tag) <= 64 and all(c in TAG_CHARS for c in tag):
        return tag
    return b"*"


class CommandFramer:
    """Cuts a byte stream into commands. Feed bytes; get Command / Continue / Refused."""

    def __init__(self, limits: Limits = Limits()):
        self.limits = limits
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._size = 0
        self._literals = 0
        self._literal_left = 0      # bytes of an accepted literal still to read
        self._skip_left = 0         # bytes of a refused non-synchronising literal to drop
        self._discard_line = False  # dropping an over-long line up to its LF
        self._discard_command = False  # dropping the rest of a refused command

    @property
    def pending(self) -> int:
        """Bytes held in memory (buffer plus a command in progress)."""
        return len(self._buf) + self._size

    @property
    def in_command(self) -> bool:
        return bool(self._parts) or self._literal_left > 0

    def discard_input(self) -> None:
        """Forget everything buffered (after STARTTLS: nothing sent in clear text may count)."""
        self._buf.clear()
        self._reset()
        self._skip_left = 0
        self._discard_line = False
        self._discard_command = False

    def _reset(self) -> None:
        self._parts = []
        self._size = 0
        self._literals = 0
        self._literal_left = 0

    def append(self, data: bytes) -> None:
        """Buffer input without framing it yet (`next_events` does that)."""
        self._buf += data

    def feed(self, data: bytes) -> list:
        self._buf += data
        return self.next_events()

    def next_events(self, limit: int | None = None) -> list:
        """Framing events from buffered data; at most `limit` commands (the protocol
        asks for one at a time so that STARTTLS can discard what follows it)."""
        buf = self._buf
        if (limit == 1 and not (self._skip_left or self._literal_left or self._discard_line
                                or self._discard_command or self._parts)):
            # The common case: one whole CRLF line, no literal at its end.
            nl = buf.find(b"\n")
            if 2 <= nl < self.limits.max_line and buf[nl - 1] == 0x0D and buf[nl - 2] != 0x7D:
                data = bytes(buf[: nl - 1])
                del buf[: nl + 1]
                return [Command(data)]
        events: list = []
        lim = self.limits
        while self._buf:
            if limit is not None and sum(isinstance(e, Command) for e in events) >= limit:
                break
            if self._skip_left:
                n = min(self._skip_left, len(self._buf))
                del self._buf[:n]
                self._skip_left -= n
                continue
            if self._literal_left:
                n = min(self._literal_left, len(self._buf))
                self._parts.append(bytes(self._buf[:n]))
                del self._buf[:n]
                self._literal_left -= n
                continue
            nl = self._buf.find(b"\n")
            if self._discard_line:
                if nl < 0:
                    self._buf.clear()
                    break
                del self._buf[: nl + 1]
                self._discard_line = False
                continue
            if nl < 0:
                if len(self._buf) > lim.max_line:
                    head = self._parts[0] if self._parts else bytes(self._buf[:80])
                    if not self._discard_command:
                        events.append(self._refuse(head, b"BAD", "Command line too long"))
                    self._reset()
                    self._discard_command = False
                    self._buf.clear()
                    self._discard_line = True
                break
            line = bytes(self._buf[: nl + 1])
            del self._buf[: nl + 1]
            head = self._parts[0] if self._parts else line
            if len(line) > lim.max_line:
                if not self._discard_command:
                    events.append(self._refuse(head, b"BAD", "Command line too long"))
                self._reset()
                self._discard_command = False
                continue
            m = _LITERAL_AT_END.search(line)
            if self._discard_command:
                # Rest of a refused command: skip its non-synchronising literals too.
                if m and m.group(2):
                    self._skip_left = int(m.group(1))
                else:
                    self._discard_command = False
                continue
            if not line.endswith(b"\r\n"):
                # Bare LF: IMAP lines end with CRLF. Refuse, keep the connection.
                events.append(self._refuse(head, b"BAD", "Lines must end with CRLF"))
                self._reset()
                if m and m.group(2):
                    self._skip_left = int(m.group(1))
                    self._discard_command = True
                continue
            self._parts.append(line)
            self._size += len(line)
            if m is None:
                events.append(Command(b"".join(self._parts)[:-2]))
                self._reset()
                continue
            n = int(m.group(1))
            nonsync = bool(m.group(2))
            self._literals += 1
            problem = None
            if self._literals > lim.max_literals:
                problem = (b"BAD", "Too many literals")
            elif n > MAX_NUMBER or n > lim.max_literal or self._size + n > lim.max_command:
                problem = (b"NO", "[TOOBIG] Literal too big")
            elif nonsync and lim.literal_minus and n > 4096:
                problem = (b"BAD", "[TOOBIG] Non-synchronising literal over 4096 bytes")
            if problem:
                events.append(self._refuse(self._parts[0], *problem))
                self._reset()
                if nonsync:
                    self._skip_left = n
                    self._discard_command = True
                continue
            if not nonsync:
                events.append(Continue())
            self._literal_left = n
            self._size += n
            if n == 0:
                continue
        return events

    def _refuse(self, head: bytes, kind: bytes, text: str) -> Refused:
        tag = tag_of(head)
        return Refused(tag, tag + b" " + kind + b" " + text.encode() + b"\r\n")


# --------------------------------------------------------------------------- values

@dataclass(frozen=True)
class SequenceSet:
    """A sequence set; `None` stands for `*` (the largest number in use)."""
    ranges: tuple[tuple[int | None, int | None], ...]

    def resolve(self, largest: int) -> list[tuple[int, int]]:
        """Normalised (low, high) ranges with `*` replaced by `largest`."""
        out = []
        for a, b in self.ranges:
            a = largest if a is None else a
            b = largest if b is None else b
            if a > b:
                a, b = b, a
            out.append((a, b))
        return out

    def contains(self, n: int, largest: int) -> bool:
        return any(a <= n <= b for a, b in self.resolve(largest))

    def numbers(self, largest: int, limit: int) -> list[int]:
        """The numbers, sorted, that also lie in 1..limit (never more than limit of them)."""
        seen: set[int] = set()
        for a, b in self.resolve(largest):
            seen.update(range(max(a, 1), min(b, limit) + 1))
        return sorted(seen)

    def __str__(self) -> str:
        def one(v):
            return "*" if v is None else str(v)
        return ",".join(one(a) if a == b else f"{one(a)}:{one(b)}" for a, b in self.ranges)


@dataclass(frozen=True)
class Section:
    """BODY[section]: part numbers, then "" / HEADER / HEADER.FIELDS / HEADER.FIELDS.NOT / TEXT / MIME."""
    part: tuple[int, ...] = ()
    text: str = ""
    fields: tuple[str, ...] = ()

    def __str__(self) -> str:
        s = ".".join(str(p) for p in self.part)
        if self.text:
            s = f"{s}.{self.text}" if s else self.text
        if self.text.startswith("HEADER.FIELDS"):
            s += " (" + " ".join(self.fields) + ")"
        return s


@dataclass(frozen=True)
class FetchAtt:
    name: str                      # FLAGS, UID, BODY, BODY.PEEK, BODYSTRUCTURE, ...
    section: Section | None = None
    partial: tuple[int, int] | None = None  # (origin, count)


@dataclass(frozen=True)
class SearchKey:
    """One search key. `op` names it (ALL, FLAG, NOT, OR, AND, SEQ, UID, HEADER,
    BODY, TEXT, BEFORE/ON/SINCE, SENTBEFORE/SENTON/SENTSINCE, LARGER, SMALLER, NEW,
    OLD, RECENT, MODSEQ); `args` holds its operands."""
    op: str
    args: tuple = ()


FETCH_MACROS = {
    "ALL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"),
    "FAST": ("FLAGS", "INTERNALDATE", "RFC822.SIZE"),
    "FULL": ("FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"),
}
SIMPLE_FETCH = {"ENVELOPE", "FLAGS", "INTERNALDATE", "RFC822", "RFC822.HEADER", "RFC822.SIZE",
                "RFC822.TEXT", "UID", "BODYSTRUCTURE", "BODY", "MODSEQ"}

SYSTEM_FLAGS = {"\\ANSWERED": "\\Answered", "\\FLAGGED": "\\Flagged", "\\DELETED": "\\Deleted",
                "\\SEEN": "\\Seen", "\\DRAFT": "\\Draft"}
# Search keys that test a system flag: key -> (flag, wanted)
FLAG_KEYS = {
    "ANSWERED": ("\\Answered", True), "UNANSWERED": ("\\Answered", False),
    "DELETED": ("\\Deleted", True), "UNDELETED": ("\\Deleted", False),
    "DRAFT": ("\\Draft", True), "UNDRAFT": ("\\Draft", False),
    "FLAGGED": ("\\Flagged", True), "UNFLAGGED": ("\\Flagged", False),
    "SEEN": ("\\Seen", True), "UNSEEN": ("\\Seen", False),
}
STRING_KEYS = {"BCC", "CC", "FROM", "SUBJECT", "TO"}
DATE_KEYS = {"BEFORE", "ON", "SINCE", "SENTBEFORE", "SENTON", "SENTSINCE"}
MAX_SEARCH_DEPTH = 64
MAX_SEARCH_KEYS = 1000
MAX_SEQ_RANGES = 10000
MAX_LIST_ITEMS = 1000


class Reader:
    """A cursor over one framed command. Methods consume what they return."""

    def __init__(self, data: bytes, pos: int = 0, max_depth: int = 32):
        self.data = data
        self.pos = pos
        self.max_depth = max_depth
        self._keys = 0

    # -- primitives

    def peek(self) -> int | None:
        return self.data[self.pos] if self.pos < len(self.data) else None

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def end(self) -> None:
        if not self.at_end():
            raise ParseError("Unexpected extra arguments")

    def expect(self, token: bytes) -> None:
        if not self.maybe(token):
            raise ParseError(f"Expected {token.decode()!r}")

    def sp(self) -> None:
        pos = self.pos
        if pos < len(self.data) and self.data[pos] == 0x20:
            self.pos = pos + 1
            return
        raise ParseError("Missing argument" if self.at_end() else "Expected a space")

    def maybe(self, token: bytes) -> bool:
        """Consume `token` if it is next (letters compared without case)."""
        pos = self.pos
        if self.data.startswith(token, pos):
            self.pos = pos + len(token)
            return True
        caseless = _CASELESS.get(token)
        if caseless is None:
            caseless = _CASELESS[token] = token.upper() != token.lower()
        if caseless and self.data[pos: pos + len(token)].upper() == token.upper():
            self.pos = pos + len(token)
            return True
        return False

    def _take(self, chars: frozenset) -> bytes:
        """The longest run of `chars` at the position (one regular expression match per
        character set, not a Python loop per octet)."""
        rx = _RUNS.get(chars)
        if rx is None:
            rx = _RUNS[chars] = re.compile(char_class(chars) + b"*")
        start = self.pos
        self.pos = rx.match(self.data, start).end()
        return self.data[start: self.pos]

    def atom(self) -> str:
        s = self._take(ATOM_CHARS)
        if not s:
            raise ParseError("Expected an atom")
        return s.decode("ascii")

    def tag(self) -> bytes:
        s = self._take(TAG_CHARS)
        if not s or len(s) > 64:
            raise ParseError("Invalid tag")
        return s

    def number(self, nonzero: bool = False) -> int:
        s = self._take(_DIGITS)
        if not s or len(s) > 10:
            raise ParseError("Expected a number")
        n = int(s)
        if n > MAX_NUMBER or (nonzero and n == 0):
            raise ParseError("Number out of range")
        return n

    def modseq(self, nonzero: bool = True) -> int:
        """mod-sequence-value (RFC 7162): 1*DIGIT up to 2^63 - 1."""
        s = self._take(_DIGITS)
        if not s or len(s) > 19:
            raise ParseError("Expected a mod-sequence")
        n = int(s)
        if n > MAX_MODSEQ or (nonzero and n == 0):
            raise ParseError("Mod-sequence out of range")
        return n

    def quoted(self) -> bytes:
        self.expect(b'"')
        out = bytearray()
        d = self.data
        while True:
            if self.pos >= len(d):
                raise ParseError("Unterminated quoted string")
            c = d[self.pos]
            self.pos += 1
            if c == 0x22:
                return bytes(out)
            if c == 0x5C:
                if self.pos >= len(d) or d[self.pos] not in (0x22, 0x5C):
                    raise ParseError("Invalid escape in quoted string")
                c = d[self.pos]
                self.pos += 1
            elif c in (0x0D, 0x0A, 0):
                raise ParseError("Invalid character in quoted string")
            out.append(c)

    def literal(self) -> bytes:
        m = _LITERAL.match(self.data, self.pos)
        if not m:
            raise ParseError("Invalid literal")
        n = int(m.group(1))
        start = m.end()
        if start + n > len(self.data):
            raise ParseError("Truncated literal")
        self.pos = start + n
        return self.data[start: start + n]

    def string(self) -> bytes:
        c = self.peek()
        if c == 0x22:
            return self.quoted()
        if c == 0x7B:
            return self.literal()
        raise ParseError("Expected a string")

    def astring(self) -> bytes:
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        s = self._take(ASTRING_CHARS)
        if not s:
            raise ParseError("Expected a string or atom")
        return s

    def nstring(self) -> bytes | None:
        if self.maybe(b"NIL"):
            return None
        return self.string()

    def list_mailbox(self) -> bytes:
        """list-mailbox: a string, or an atom that may hold % and *."""
        c = self.peek()
        if c in (0x22, 0x7B):
            return self.string()
        s = self._take(LIST_CHARS)
        if not s:
            raise ParseError("Expected a mailbox pattern")
        return s

    def paren_list(self, item, allow_empty: bool = True) -> list:
        """( item *(SP item) ): `item` reads one element."""
        self.expect(b"(")
        out = []
        if self.maybe(b")"):
            if not allow_empty:
                raise ParseError("Empty list")
            return out
        while True:
            out.append(item())
            if len(out) > MAX_LIST_ITEMS:
                raise ParseError("List too long")
            if self.maybe(b")"):
                return out
            self.sp()

    # -- IMAP values

    def flag(self) -> str:
        if self.maybe(b"\\"):
            if self.maybe(b"*"):
                return "\\*"
            name = "\\" + self.atom()
            return SYSTEM_FLAGS.get(name.upper(), name)
        return self.atom()

    def flag_list(self) -> list[str]:
        return self.paren_list(self.flag)

    def flags_arg(self) -> list[str]:
        """A flag list, or (for STORE) flags without parentheses."""
        if self.peek() == 0x28:
            return self.flag_list()
        out = [self.flag()]
        while self.maybe(b" "):
            out.append(self.flag())
            if len(out) > MAX_LIST_ITEMS:
                raise ParseError("Too many flags")
        return out

    def sequence_set(self) -> SequenceSet:
        ranges = []
        while True:
            a = self._seq_number()
            b = a
            if self.maybe(b":"):
                b = self._seq_number()
            ranges.append((a, b))
            if len(ranges) > MAX_SEQ_RANGES:
                raise ParseError("Sequence set too long")
            if not self.maybe(b","):
                return SequenceSet(tuple(ranges))

    def _seq_number(self) -> int | None:
        if self.maybe(b"*"):
            return None
        try:
            return self.number(nonzero=True)
        except ParseError:
            raise ParseError("Invalid sequence set") from None

    def date(self) -> _dt.date:
        quoted = self.maybe(b'"')
        m = _DATE.match(self.data, self.pos)
        if not m:
            raise ParseError("Invalid date")
        self.pos = m.end()
        if quoted:
            self.expect(b'"')
        month = _MONTH_INDEX.get(m.group(2).decode().lower())
        try:
            return _dt.date(int(m.group(3)), month or 0, int(m.group(1)))
        except (ValueError, TypeError):
            raise ParseError("Invalid date") from None

    def date_time(self) -> _dt.datetime:
        m = _DATE_TIME.match(self.data, self.pos)
        if not m:
            raise ParseError("Invalid date-time")
        self.pos = m.end()
        g = [x.decode() for x in m.groups()]
        month = _MONTH_INDEX.get(g[1].lower())
        try:
            tz = _dt.timezone((-1 if g[6] == "-" else 1) * _dt.timedelta(hours=int(g[7]), minutes=int(g[8])))
            return _dt.datetime(int(g[2]), month or 0, int(g[0].strip()), int(g[3]), int(g[4]), int(g[5]), tzinfo=tz)
        except (ValueError, TypeError):
            raise ParseError("Invalid date-time") from None

    # -- FETCH

    def fetch_atts(self) -> list[FetchAtt]:
        if self.peek() == 0x28:
            return self.paren_list(self.fetch_att, allow_empty=False)
        save = self.pos
        word = self._take(FETCH_WORD_CHARS).decode().upper()
        if word in FETCH_MACROS:
            return [FetchAtt(n) for n in FETCH_MACROS[word]]
        self.pos = save
        return [self.fetch_att()]

    def fetch_att(self) -> FetchAtt:
        word = self._take(FETCH_WORD_CHARS).decode().upper()
        if word in ("BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK") and self.peek() == 0x5B:
            if word.startswith("BINARY"):
                raise ParseError("BINARY is not supported")
            section = self.section()
            partial = None
            if self.maybe(b"<"):
                origin = self.number()
                self.expect(b".")
                count = self.number(nonzero=True)
                self.expect(b">")
                partial = (origin, count)
            return FetchAtt(word, section, partial)
        if word in SIMPLE_FETCH:
            return FetchAtt(word)
        raise ParseError("Invalid fetch attribute")

    def section(self) -> Section:
        self.expect(b"[")
        parts: list[int] = []
        text = ""
        fields: tuple[str, ...] = ()
        if self.maybe(b"]"):
            return Section()
        while self.peek() is not None and 0x30 <= self.peek() <= 0x39:
            parts.append(self.number(nonzero=True))
            if len(parts) > 50:
                raise ParseError("Section too deep")
            if not self.maybe(b"."):
                break
        if not (parts and self.peek() == 0x5D):
            word = self._take(_SECTION_WORD).decode().upper()
            allowed = {"HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT", "TEXT"} | ({"MIME"} if parts else set())
            if word not in allowed:
                raise ParseError("Invalid section")
            text = word
            if word.startswith("HEADER.FIELDS"):
                self.sp()
                fields = tuple(f.decode("ascii", "replace").upper()
                               for f in self.paren_list(self.astring, allow_empty=False))
        self.expect(b"]")
        return Section(tuple(parts), text, fields)

    # -- SEARCH

    def search_program(self, decode) -> SearchKey:
        """search-key *(SP search-key) to the end; `decode` turns string bytes into text
        in the command's charset (raising ParseError)."""
        keys = [self.search_key(decode, 0)]
        while not self.at_end():
            self.sp()
            keys.append(self.search_key(decode, 0))
        return keys[0] if len(keys) == 1 else SearchKey("AND", tuple(keys))

    def search_key(self, decode, depth: int) -> SearchKey:
        if depth > MAX_SEARCH_DEPTH:
            raise ParseError("Search too deeply nested")
        self._keys += 1
        if self._keys > MAX_SEARCH_KEYS:
            raise ParseError("Search program too long")
        c = self.peek()
        if c == 0x28:
            return SearchKey("AND", tuple(self.paren_list(lambda: self.search_key(decode, depth + 1), allow_empty=False)))
        if c is not None and (0x30 <= c <= 0x39 or c == 0x2A):
            return SearchKey("SEQ", (self.sequence_set(),))
        word = self.atom().upper()
        if word == "ALL":
            return SearchKey("ALL")
        if word in FLAG_KEYS:
            return SearchKey("FLAG", FLAG_KEYS[word])
        if word in ("KEYWORD", "UNKEYWORD"):
            self.sp()
            return SearchKey("FLAG", (self.atom(), word == "KEYWORD"))
        if word in ("NEW", "OLD", "RECENT"):
            return SearchKey(word)
        if word == "UNRECENT":  # not in RFC 3501 grammar but harmless; treat as NOT RECENT
            return SearchKey("NOT", (SearchKey("RECENT"),))
        if word in STRING_KEYS:
            self.sp()
            return SearchKey("HEADER", (word, decode(self.astring())))
        if word in ("BODY", "TEXT"):
            self.sp()
            return SearchKey(word, (decode(self.astring()),))
        if word == "HEADER":
            self.sp()
            name = self.astring().decode("ascii", "replace")
            self.sp()
            return SearchKey("HEADER", (name.upper(), decode(self.astring())))
        if word in DATE_KEYS:
            self.sp()
            return SearchKey(word, (self.date(),))
        if word in ("LARGER", "SMALLER"):
            self.sp()
            return SearchKey(word, (self.number(),))
        if word == "UID":
            self.sp()
            return SearchKey("UID", (self.sequence_set(),))
        if word == "MODSEQ":
            # RFC 7162: MODSEQ [entry-name entry-type] value; the per-flag entry is
            # accepted and the message's mod-sequence compared (as the RFC allows).
            self.sp()
            if self.peek() == 0x22:
                self.quoted()
                self.sp()
                if self.atom().lower() not in ("priv", "shared", "all"):
                    raise ParseError("Invalid MODSEQ entry type")
                self.sp()
            return SearchKey("MODSEQ", (self.modseq(nonzero=False),))
        if word == "NOT":
            self.sp()
            return SearchKey("NOT", (self.search_key(decode, depth + 1),))
        if word == "OR":
            self.sp()
            a = self.search_key(decode, depth + 1)
            self.sp()
            return SearchKey("OR", (a, self.search_key(decode, depth + 1)))
        raise ParseError("Unknown search key")


_COMMAND_HEAD = re.compile(b"(" + char_class(TAG_CHARS) + b"+) (" + char_class(ATOM_CHARS) + b"+)")


def parse_command_head(data: bytes) -> tuple[bytes, str, Reader]:
    """tag SP command-name; returns (tag, NAME, reader positioned after the name)."""
    m = _COMMAND_HEAD.match(data)
    if m is not None and len(m.group(1)) <= 64:
        name = m.group(2).decode("ascii").upper()
        if name != "UID":
            return m.group(1), name, Reader(data, m.end())
    r = Reader(data)
    tag = r.tag()
    r.sp()
    name = r.atom().upper()
    if name == "UID":
        r.sp()
        name = "UID " + r.atom().upper()
    return tag, name, r
