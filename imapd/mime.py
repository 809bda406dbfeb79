"""imapd.mime -- a MIME tree of one message, with byte offsets, for FETCH and SEARCH.

Our own small parser rather than the `email` package because IMAP needs the exact
octets of every header and body part (BODY[1.2.MIME], sizes, line counts) and must
give a sensible answer for anything: a missing boundary, an unterminated multipart,
a header without a colon, 8-bit garbage. Malformed structure degrades to a
text/plain leaf, and a message/rfc822 part past the nesting or part limit to an
application/octet-stream leaf; nothing here raises on message content.

The message is taken with CRLF line ends (the store's bytes are converted by the
caller), so offsets and sizes are those a client sees.

SECURITY: message content is hostile. Nesting depth and the number of parts are
bounded; all work is linear in the message size per level.
"""

from __future__ import annotations

import re

MAX_DEPTH = 20
MAX_PARTS = 500

_HEADER_END = re.compile(rb"\r?\n\r?\n")


def to_crlf(data: bytes) -> bytes:
    """Bare LF (as maildir files often hold) to CRLF; CRLF left alone."""
    lf = data.count(b"\n")
    if lf == 0 or lf == data.count(b"\r\n"):
        return data
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def split_header(data: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body). A message with no blank line is all header."""
    if data.startswith(b"\r\n"):
        return data[:2], data[2:]
    if data.startswith(b"\n"):
        return data[:1], data[1:]
    m = _HEADER_END.search(data)
    if not m:
        return data, b""
    return data[: m.end()], data[m.end():]


_FIELD_NAME = re.compile(rb"[\x21-\x7e]+")


def parse_header_fields(header: bytes) -> list[tuple[str, bytes, bytes]]:
    """[(lower-case name, unfolded value, raw field with its line ends)] in order.
    Lines that are not fields (no colon, bad name) are skipped."""
    fields: list[tuple[str, bytes, bytes]] = []
    valid_name = _FIELD_NAME.fullmatch
    lines = header.split(b"\n")
    i, n = 0, len(lines)
    while i < n:
        first = lines[i]
        i += 1
        if first == b"" or first == b"\r":
            continue
        j = i
        while j < n and lines[j][:1] in (b" ", b"\t"):
            j += 1
        name, colon, value = first.partition(b":")
        name = name.strip()
        if colon and name and valid_name(name):
            if j == i:
                fields.append((name.decode("ascii").lower(), value.strip(), first + b"\n"))
            else:
                more = lines[i:j]
                unfolded = value.rstrip(b"\r") + b"".join(x.rstrip(b"\r") for x in more)
                fields.append((name.decode("ascii").lower(), unfolded.strip(), b"\n".join([first, *more]) + b"\n"))
        i = j
    return fields


_WSP_RUN = re.compile(rb"[ \t\r\n]*")
_TOKEN_RUNS = {stops: re.compile(b"[^" + re.escape(stops) + rb" \t\r\n(]*") for stops in (b";", b"=;")}


def select_fields(fields: list[tuple[str, bytes, bytes]], names: tuple[str, ...], negate: bool) -> bytes:
    """The raw fields (of parse_header_fields) named, or all others with negate, and
    a blank line: BODY[HEADER.FIELDS (...)] and BODY[HEADER.FIELDS.NOT (...)]."""
    wanted = {n.lower() for n in names}
    return to_crlf(b"".join(raw for name, _v, raw in fields if (name in wanted) != negate)) + b"\r\n"


def _skip_cfws(s: bytes, i: int) -> int:
    """Past white space and (nested, escaped) comments."""
    n = len(s)
    while True:
        i = _WSP_RUN.match(s, i).end()
        if i >= n or s[i] != 0x28:
            return i
        depth = 1
        i += 1
        while i < n and depth:
            c = s[i]
            if c == 0x5C:
                i += 1
            elif c == 0x28:
                depth += 1
            elif c == 0x29:
                depth -= 1
            i += 1


def _token(s: bytes, i: int, stops: bytes) -> tuple[bytes, int]:
    """A quoted string (unquoted) or a run of characters up to one of `stops`."""
    i = _skip_cfws(s, i)
    if i < len(s) and s[i] == 0x22:
        out = bytearray()
        i += 1
        while i < len(s) and s[i] != 0x22:
            if s[i] == 0x5C and i + 1 < len(s):
                i += 1
            out.append(s[i])
            i += 1
        return bytes(out), i + 1
    end = _TOKEN_RUNS[stops].match(s, i).end()
    return s[i:end], end


def parse_params(value: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """`main; a=b; c="d"` -> (main, [(a, b), (c, d)]). Junk parameters are dropped."""
    main, i = _token(value, 0, b";")
    params: list[tuple[bytes, bytes]] = []
    while i < len(value) and len(params) < 50:
        i = _skip_cfws(value, i)
        if i >= len(value):
            break
        if value[i] != 0x3B:
            i = value.find(b";", i)
            if i < 0:
                break
        i += 1
        name, i = _token(value, i, b"=;")
        i = _skip_cfws(value, i)
        if i < len(value) and value[i] == 0x3D:
            val, i = _token(value, i + 1, b";")
            if name:
                params.append((name, val))
    return main, params


class Part:
    """One node of the MIME tree: a message (the root, or one inside message/rfc822)
    or a body part. `header` and `body` are the exact octets."""

    def __init__(self, data: bytes, depth: int = 0, default_type: bytes = b"text/plain", counter=None):
        self.counter = counter if counter is not None else [0]
        self.counter[0] += 1
        self.header, self.body = split_header(data)
        self.fields = parse_header_fields(self.header)
        self.children: list[Part] = []
        self.message: Part | None = None
        ctype = self.get(b"content-type")
        self.params: list[tuple[bytes, bytes]] = []
        if ctype is not None:
            main, self.params = parse_params(ctype)
            maintype, slash, subtype = main.partition(b"/")
            if not slash or not maintype or not subtype:
                maintype, subtype = b"text", b"plain"
                self.params = []
        else:
            maintype, _, subtype = default_type.partition(b"/")
            if maintype == b"text":
                self.params = [(b"charset", b"us-ascii")]
        self.maintype, self.subtype = maintype, subtype
        too_deep = depth >= MAX_DEPTH or self.counter[0] >= MAX_PARTS
        if self.is_multipart:
            boundary = self.param(b"boundary")
            if boundary and not too_deep:
                child_default = b"message/rfc822" if subtype.lower() == b"digest" else b"text/plain"
                for chunk in split_multipart(self.body, boundary):
                    if self.counter[0] >= MAX_PARTS:
                        break
                    self.children.append(Part(chunk, depth + 1, child_default, self.counter))
            if not self.children:
                # Malformed: no boundary or no parts. Serve it as one text/plain leaf.
                self.maintype, self.subtype, self.params = b"text", b"plain", []
        elif self.is_message_rfc822:
            if too_deep:
                # A message/rfc822 body structure must carry the inner message's
                # envelope, structure and line count; past the limit there is none,
                # so the part is served as opaque bytes instead.
                self.maintype, self.subtype, self.params = b"application", b"octet-stream", []
            else:
                self.message = Part(self.body, depth + 1, b"text/plain", self.counter)

    @property
    def is_multipart(self) -> bool:
        return self.maintype.lower() == b"multipart"

    @property
    def is_message_rfc822(self) -> bool:
        return self.maintype.lower() == b"message" and self.subtype.lower() in (b"rfc822", b"global")

    def get(self, name: bytes) -> bytes | None:
        """The first field of that name, unfolded, or None."""
        key = name.decode().lower()
        for fname, value, _raw in self.fields:
            if fname == key:
                return value
        return None

    def param(self, name: bytes) -> bytes | None:
        for k, v in self.params:
            if k.lower() == name.lower():
                return v
        return None

    def header_fields(self, names: tuple[str, ...], negate: bool) -> bytes:
        """HEADER.FIELDS (names) or HEADER.FIELDS.NOT: the matching raw fields and a blank line."""
        return select_fields(self.fields, names, negate)

    def find(self, path: tuple[int, ...]) -> "Part | None":
        """The body part a section number names (RFC 3501 6.4.5)."""
        container: Part | None = self
        node: Part | None = self
        for number in path:
            if container is None:
                return None
            if container.children:
                node = container.children[number - 1] if number <= len(container.children) else None
            elif number == 1:
                node = container
            else:
                node = None
            if node is None:
                return None
            # A multipart's parts are numbered below it; a message/rfc822 part's
            # numbers continue in the message it carries.
            container = node.message if node.message is not None else (node if node.children else None)
        return node


def split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The body parts between `--boundary` delimiter lines. The CRLF before a
    delimiter belongs to it. A missing close delimiter ends the last part at the end.
    (Delimiters are found with bytes.find: a regular expression starting with a line
    break alternative is tried at every octet of a large attachment.)"""
    marker = b"--" + boundary
    size = len(body)
    parts: list[bytes] = []
    start = None
    pos = 0
    while True:
        at = body.find(marker, pos)
        if at < 0:
            break
        pos = at + 1
        if at and body[at - 1] != 0x0A:
            continue  # not at the start of a line
        after = at + len(marker)
        close = body.startswith(b"--", after)
        if close:
            after += 2
        while after < size and body[after] in (0x20, 0x09):
            after += 1
        if after < size:
            if body[after] == 0x0A:
                after += 1
            elif body.startswith(b"\r\n", after):
                after += 2
            else:
                continue  # a longer word that starts like the boundary
        begin = at
        if at and body[at - 1] == 0x0A:
            begin = at - 2 if at >= 2 and body[at - 2] == 0x0D else at - 1
        if start is not None:
            parts.append(body[start:max(begin, start)])
        if close:
            return parts
        start = pos = after
        if len(parts) >= MAX_PARTS:
            return parts
    if start is not None:
        parts.append(body[start:])
    return parts


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
