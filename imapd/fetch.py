"""imapd.fetch -- FETCH data items: ENVELOPE, BODY / BODYSTRUCTURE (with extension
data), BODY[section]<partial>, RFC822.*, sizes and dates.

Works on the MIME tree of `imapd.mime`; every value goes through `imapd.response`
so nothing from a message can break the response framing.

SECURITY: message content is hostile; the MIME tree is bounded, addresses are
parsed by a bounded loop, malformed input yields NIL or a text/plain answer.
"""

from __future__ import annotations

import re

from .mime import Part, count_lines, split_header, to_crlf
from .parser import Section
from .response import nstring, paren, string

MAX_ADDRESSES = 500


# --------------------------------------------------------------------------- addresses

# One token per match: optional white space, then a special, an atom, the start of
# a comment or quoted string (read by hand: nesting and escapes), a stray ")" or the end.
_ADDR_TOKEN = re.compile(rb'[ \t\r\n]*(?:([<>@,;:.\[\]])|([^ \t\r\n()<>@,;:".\[\]]+)|([("])|(\))|$)')


def _addr_tokens(s: bytes):
    """Lexical tokens of an address list: specials, quoted strings, atoms; comments
    and stray ")" dropped. Every step consumes input, so it always ends."""
    i, n = 0, len(s)
    match = _ADDR_TOKEN.match
    while i < n:
        m = match(s, i)
        i = m.end()
        kind = m.lastindex
        if kind == 1:
            tok = m.group(1)
            yield (tok.decode(), tok)
        elif kind == 2:
            yield ("a", m.group(2))
        elif kind == 3:
            if s[i - 1] == 0x28:
                i = _skip_comment(s, i - 1)
            else:
                out = bytearray()
                while i < n and s[i] != 0x22:
                    if s[i] == 0x5C and i + 1 < n:
                        i += 1
                    out.append(s[i])
                    i += 1
                yield ("q", bytes(out))
                i += 1
        elif kind is None:
            break


def _skip_comment(s: bytes, i: int) -> int:
    """The index after the (nested, escaped) comment starting at s[i] == "("."""
    depth, n = 0, len(s)
    while i < n:
        c = s[i]
        if c == 0x5C:
            i += 1
        elif c == 0x28:
            depth += 1
        elif c == 0x29:
            depth -= 1
            if depth == 0:
                break
        i += 1
    return i + 1


# The common forms, `Name Words <local@domain>` and `local@domain`, in a list that
# holds nothing else: one match each (the general parser gives the same answer).
_WORD = rb'[^ \t\r\n()<>@,;:".\[\]]+'
_DOTTED = _WORD + rb'(?:\.' + _WORD + rb')*'
_SIMPLE_ADDRESS = re.compile(rb'[ \t]*(?:(?:(' + _WORD + rb'(?:[ \t]+' + _WORD + rb')*)[ \t]*)?<(' + _DOTTED + rb')@('
                             + _DOTTED + rb')>|(' + _DOTTED + rb')@(' + _DOTTED + rb'))[ \t]*(?:,|\Z)')


def _simple_addresses(value: bytes) -> list[tuple] | None:
    """parse_addresses of a list of only the common forms, or None for anything else."""
    out: list[tuple] = []
    pos, n = 0, len(value)
    match = _SIMPLE_ADDRESS.match
    while pos < n:
        m = match(value, pos)
        if m is None or len(out) >= MAX_ADDRESSES:
            return None
        name, local, domain, bare_local, bare_domain = m.groups()
        if local is not None:
            out.append((b" ".join(name.split()) if name is not None else None, None, local, domain))
        else:
            out.append((None, None, bare_local, bare_domain))
        pos = m.end()
    return out or None


def parse_addresses(value: bytes) -> list[tuple]:
    """An address-list header into IMAP address structures:
    (name, adl, mailbox, host), with group start (None, None, group, None) and
    group end (None, None, None, None). Garbage yields what could be recognised."""
    simple = _simple_addresses(value)
    if simple is not None:
        return simple
    out: list[tuple] = []
    phrase: list[bytes] = []
    local: list[bytes] = []
    domain: list[bytes] = []
    in_angle = False
    seen_at = False
    in_group = False

    def finish():
        nonlocal phrase, local, domain, seen_at
        if local or domain:
            name = b" ".join(phrase) if phrase and (in_angle_used[0]) else None
            out.append((name, None, b"".join(local), b"".join(domain) if domain else None))
        elif phrase and not in_angle_used[0]:
            # A bare word with no @: treat it as a local part (Dovecot does).
            out.append((None, None, b"".join(phrase), None))
        phrase, local, domain, seen_at = [], [], [], False
        in_angle_used[0] = False

    in_angle_used = [False]
    for kind, tok in _addr_tokens(value):
        if len(out) >= MAX_ADDRESSES:
            break
        if kind == "<":
            in_angle = True
            in_angle_used[0] = True
            local, domain, seen_at = [], [], False
        elif kind == ">":
            in_angle = False
        elif kind == "@":
            if not in_angle and not local and phrase:
                local, phrase = [b"".join(phrase)], []
            seen_at = True
        elif kind == ":" and not in_angle:
            if not in_group:
                out.append((None, None, b" ".join(phrase), None))
                phrase = []
                in_group = True
        elif kind == ";" and not in_angle:
            finish()
            if in_group:
                out.append((None, None, None, None))
                in_group = False
        elif kind == "," and not in_angle:
            finish()
        elif kind in ("a", "q", ".", "[", "]"):
            if in_angle or seen_at:
                (domain if seen_at else local).append(tok)
            elif local:
                local.append(tok)
            else:
                if kind == "." and phrase:
                    phrase[-1] += tok
                else:
                    phrase.append(tok)
    finish()
    if in_group:
        out.append((None, None, None, None))
    return out


def _address_list(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    addrs = parse_addresses(value)
    if not addrs:
        return b"NIL"
    return paren(paren([nstring(x) for x in a]) for a in addrs)


def envelope(msg) -> bytes:
    """ENVELOPE of a message: anything with get(name) -> bytes | None (a Part, or the
    header fields imapd.summary keeps)."""
    def h(name: bytes):
        return msg.get(name)

    rendered: dict[bytes | None, bytes] = {}

    def addresses(value: bytes | None) -> bytes:  # From is often Sender and Reply-To too
        got = rendered.get(value)
        if got is None:
            got = rendered[value] = _address_list(value)
        return got

    sender = h(b"sender") or h(b"from")
    reply_to = h(b"reply-to") or h(b"from")
    items = [
        nstring(h(b"date")), nstring(h(b"subject")),
        addresses(h(b"from")), addresses(sender), addresses(reply_to),
        addresses(h(b"to")), addresses(h(b"cc")), addresses(h(b"bcc")),
        nstring(h(b"in-reply-to")), nstring(h(b"message-id")),
    ]
    return paren(items)


# --------------------------------------------------------------------------- body structure

#: The envelope's header fields, and References for THREAD.
ENVELOPE_FIELDS = (b"date", b"subject", b"from", b"sender", b"reply-to", b"to", b"cc", b"bcc", b"in-reply-to",
                   b"message-id", b"references")
#: The header fields of a body part that BODYSTRUCTURE shows.
PART_FIELDS = (b"content-id", b"content-description", b"content-transfer-encoding", b"content-md5",
               b"content-disposition", b"content-language", b"content-location")


def _text(b: bytes) -> str:
    return b.decode("latin-1")


def structure_node(part: Part) -> dict:
    """What BODY and BODYSTRUCTURE need of a MIME tree, as plain data (str values are
    the octets as latin-1) that imapd.summary can keep and body_structure renders."""
    node: dict = {"t": _text(part.maintype), "s": _text(part.subtype),
                  "p": [[_text(k), _text(v)] for k, v in part.params],
                  "h": {_text(n): _text(v) for n in PART_FIELDS if (v := part.get(n)) is not None}}
    if part.children:
        node["c"] = [structure_node(c) for c in part.children]
        return node
    node["n"] = len(part.body)
    node["l"] = count_lines(part.body)
    if part.message is not None:
        node["m"] = {"e": {_text(n): _text(v) for n in ENVELOPE_FIELDS if (v := part.message.get(n)) is not None},
                     "b": structure_node(part.message)}
    return node


class Fields:
    """Header fields by name (bytes), as Part.get gives them."""

    def __init__(self, values: dict[str, str]):
        self.values = values

    def get(self, name: bytes) -> bytes | None:
        v = self.values.get(_text(name))
        return v.encode("latin-1") if v is not None else None


def _params(params) -> bytes:
    if not params:
        return b"NIL"
    return paren(string(x.encode("latin-1")) for kv in params for x in kv)


def _disposition(get) -> bytes:
    value = get(b"content-disposition")
    if value is None:
        return b"NIL"
    from .mime import parse_params
    main, params = parse_params(value)
    if not main:
        return b"NIL"
    p = paren(string(x) for kv in params for x in kv) if params else b"NIL"
    return paren([string(main), p])


def _language(get) -> bytes:
    value = get(b"content-language")
    if value is None:
        return b"NIL"
    langs = [x.strip() for x in value.split(b",") if x.strip()][:20]
    if not langs:
        return b"NIL"
    if len(langs) == 1:
        return string(langs[0])
    return paren(string(x) for x in langs)


def body_structure(node, extensible: bool) -> bytes:
    """BODYSTRUCTURE (extensible=True) or BODY of a structure node (or of a Part)."""
    if isinstance(node, Part):
        node = structure_node(node)
    get = Fields(node["h"]).get
    subtype = node["s"].encode("latin-1")
    if "c" in node:
        items = [b"".join(body_structure(c, extensible) for c in node["c"]), string(subtype)]
        if extensible:
            items += [_params(node["p"]), _disposition(get), _language(get), nstring(get(b"content-location"))]
        return paren(items)
    encoding = get(b"content-transfer-encoding")
    encoding = encoding.split()[0] if encoding and encoding.split() else b"7BIT"
    maintype = node["t"].encode("latin-1")
    items = [string(maintype), string(subtype), _params(node["p"]),
             nstring(get(b"content-id")), nstring(get(b"content-description")),
             string(encoding.upper() if encoding.lower() in (b"7bit", b"8bit", b"binary", b"base64", b"quoted-printable") else encoding),
             b"%d" % node["n"]]
    if "m" in node:
        inner = node["m"]
        items += [envelope(Fields(inner["e"])), body_structure(inner["b"], extensible), b"%d" % node["l"]]
    elif maintype.lower() == b"text":
        items.append(b"%d" % node["l"])
    if extensible:
        items += [nstring(get(b"content-md5")), _disposition(get), _language(get),
                  nstring(get(b"content-location"))]
    return paren(items)


# --------------------------------------------------------------------------- sections

def section_bytes(root: Part, section: Section) -> bytes | None:
    """The octets BODY[section] names, or None when the section does not exist."""
    if not section.part:
        node = root
        target = root
    else:
        node = root.find(section.part)
        if node is None:
            return None
        target = node.message
    text = section.text
    if text == "":
        return node.body if section.part else root.header + root.body
    if text == "MIME":
        return node.header
    if target is None:
        return None
    if text == "HEADER":
        return target.header
    if text == "TEXT":
        return target.body
    if text == "HEADER.FIELDS":
        return target.header_fields(section.fields, negate=False)
    if text == "HEADER.FIELDS.NOT":
        return target.header_fields(section.fields, negate=True)
    return None


def partial(data: bytes | None, spec: tuple[int, int] | None) -> bytes | None:
    if data is None or spec is None:
        return data
    origin, count = spec
    return data[origin: origin + count]


class LoadedMessage:
    """A message's CRLF octets and its MIME tree, parsed on first use."""

    def __init__(self, raw: bytes):
        self.data = to_crlf(raw)
        self._tree: Part | None = None

    @property
    def tree(self) -> Part:
        if self._tree is None:
            self._tree = Part(self.data)
        return self._tree

    def header_and_body(self) -> tuple[bytes, bytes]:
        """The top-level header and body, as the tree's root has them, without
        parsing the MIME parts below (for HEADER, TEXT, RFC822.HEADER, RFC822.TEXT)."""
        if self._tree is not None:
            return self._tree.header, self._tree.body
        return split_header(self.data)

    @property
    def size(self) -> int:
        return len(self.data)
