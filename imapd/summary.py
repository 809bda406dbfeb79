"""imapd.summary -- what FETCH ENVELOPE / BODY / BODYSTRUCTURE, SORT and THREAD need
of a message, worked out once and kept in the mailbox's postroom-cache
(common.storage.cache), so a large mailbox is not read again by the next session,
the next worker or after a restart.

Two kinds per message: its envelope header fields (plus References), taken from
the header alone, and its body structure (imapd.fetch.structure_node), taken from
the whole message. Both are JSON, with header octets as latin-1 strings.

SECURITY: the cache file is user-writable. A kept value is parsed as strict JSON and
checked against the exact shape this module writes (types, bounded depth and size)
before use, and is only ever rendered again through imapd.response's quoting: a
forged value can change what a user sees of their own mail, never the protocol.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict

from .fetch import ENVELOPE_FIELDS, PART_FIELDS, Fields, structure_node
from .mime import _HEADER_END, MAX_DEPTH, MAX_PARTS, parse_header_fields, select_fields, split_header, to_crlf

HEADERS = 1
STRUCTURE = 2
#: How much of a message is read for its header fields.
HEADER_LIMIT = 64 * 1024
HEADER_STEP = 4096

_ENVELOPE_NAMES = frozenset(n.decode() for n in ENVELOPE_FIELDS)
_PART_NAMES = frozenset(n.decode() for n in PART_FIELDS)


class _Rendered:
    """ENVELOPE, BODYSTRUCTURE and BODY as last rendered for a message file, in this
    process, least recently used out past `budget` bytes: a message's content never
    changes under its file's base name, and rendering its address lists and parts
    again is most of what a FETCH of them costs."""

    def __init__(self, budget: int):
        self.budget = budget
        self.size = 0
        self.items: OrderedDict[tuple, object] = OrderedDict()
        self.sizes: dict[tuple, int] = {}

    def get(self, key: tuple) -> bytes | None:
        value = self.items.get(key)
        if value is not None:
            self.items.move_to_end(key)
        return value

    def put(self, key: tuple, value, size: int | None = None) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= self.sizes.pop(key)
        size = len(value) if size is None else size
        self.items[key] = value
        self.sizes[key] = size
        self.size += size
        while self.size > self.budget and self.items:
            dropped, _value = self.items.popitem(last=False)
            self.size -= self.sizes.pop(dropped)


_rendered = _Rendered(4 << 20)


class TopHeader:
    """A message's top-level header (CRLF, blank line included) and, parsed on first
    use, its fields: what BODY[HEADER], BODY[HEADER.FIELDS ...] and RFC822.HEADER
    answer from, without reading the body or parsing the MIME parts."""

    __slots__ = ("header", "_fields")

    def __init__(self, header: bytes):
        self.header = header
        self._fields = None

    def header_fields(self, names: tuple[str, ...], negate: bool) -> bytes:
        """As imapd.mime.Part.header_fields."""
        if self._fields is None:
            self._fields = parse_header_fields(self.header)
        return select_fields(self._fields, names, negate)


_headers = _Rendered(2 << 20)


def top_header(sel, uid: int) -> TopHeader:
    """The message's top-level header: from a message this session has loaded, from
    those kept in this process (by file base name: a message's content never changes
    under it), or read from the start of its file up to the blank line."""
    got = sel._loaded.get(uid)
    if got is not None:
        return TopHeader(got.header_and_body()[0])
    key = (str(sel.mailbox.path), sel.message(uid).basename)
    value = _headers.get(key)
    if value is not None:
        return value
    header = _read_header(sel.mailbox, uid)
    value = TopHeader(header) if header is not None else TopHeader(sel.load(uid).header_and_body()[0])
    _headers.put(key, value, len(value.header))
    return value


def _header_ends(data: bytes) -> bool:
    return data.startswith((b"\r\n", b"\n")) or _HEADER_END.search(data) is not None


def _read_start(box, uid: int) -> bytes:
    """The start of the message's file, read in steps: through the blank line that
    ends its header, or HEADER_LIMIT octets (a little more), or all of it."""
    with box.open(uid) as f:
        data = f.read(HEADER_STEP)
        while not _header_ends(data) and len(data) < HEADER_LIMIT:
            more = f.read(HEADER_STEP)
            if not more:
                break  # all header, no body
            data += more
    return data


def _read_header(box, uid: int) -> bytes | None:
    """The top-level header as split_header gives it from the whole message (CRLF);
    None past HEADER_LIMIT (the caller reads the whole message)."""
    data = _read_start(box, uid)
    if len(data) >= HEADER_LIMIT and not _header_ends(data):
        return None
    return split_header(to_crlf(data))[0]


def renderer(sel, kind: str, label: bytes, make):
    """A FETCH item renderer (uid, msg) -> label + the rendering of item `kind`:
    the one kept for the message, or make(uid) (then kept)."""
    path = str(sel.mailbox.path)
    get = _rendered.get

    def render(uid: int, msg) -> bytes:
        key = (path, msg.basename, kind)
        value = get(key)
        if value is None:
            value = make(uid)
            _rendered.put(key, value)
        return label + value
    return render


def header_fields(sel, uid: int) -> Fields:
    """The message's envelope header fields (first occurrence, unfolded)."""
    box = sel.mailbox
    raw = box.cached(uid, HEADERS)
    if raw is not None:
        values = _load(raw, _check_fields)
        if values is not None:
            return Fields(values)
    got = sel._loaded.get(uid)
    if got is not None:
        tree = got.tree
        values = {n.decode(): v.decode("latin-1") for n in ENVELOPE_FIELDS if (v := tree.get(n)) is not None}
    else:
        values = _read_fields(box, uid)
    box.keep(uid, HEADERS, json.dumps(values, separators=(",", ":")).encode())
    return Fields(values)


def structure(sel, uid: int) -> dict:
    """The message's body structure node (imapd.fetch.structure_node)."""
    box = sel.mailbox
    raw = box.cached(uid, STRUCTURE)
    if raw is not None:
        node = _load(raw, lambda v: _check_node(v, 0, [0]))
        if node is not None:
            return node
    node = structure_node(sel.load(uid).tree)
    box.keep(uid, STRUCTURE, json.dumps(node, separators=(",", ":")).encode())
    return node


# One regex picks the fields out of a header (far cheaper than splitting it into all
# its fields): first occurrence, folding removed, as Part.get gives them.
_FIELD_RE = re.compile(rb"^(" + b"|".join(re.escape(n) for n in ENVELOPE_FIELDS) + rb")[ \t]*:(.*(?:\r?\n[ \t].*)*)",
                       re.I | re.M)
_FOLD_RE = re.compile(rb"\r?\n(?=[ \t])")


def _read_fields(box, uid: int) -> dict[str, str]:
    header, _body = split_header(_read_start(box, uid)[:HEADER_LIMIT])
    return {k.decode(): v.decode("latin-1") for k, v in header_values(header).items()}


def header_values(header: bytes) -> dict[bytes, bytes]:
    """The first value of each envelope field (and References) in a header, unfolded."""
    out: dict[bytes, bytes] = {}
    for m in _FIELD_RE.finditer(header):
        out.setdefault(m.group(1).lower(), _FOLD_RE.sub(b"", m.group(2)).strip())
    return out


def _load(raw: bytes, check):
    try:
        value = json.loads(raw)
        return value if check(value) else None
    except (ValueError, TypeError, RecursionError):
        return None


def _check_fields(v, names=_ENVELOPE_NAMES) -> bool:
    return isinstance(v, dict) and all(k in names and isinstance(x, str) for k, x in v.items())


def _check_node(v, depth: int, count: list[int]) -> bool:
    """The shape structure_node makes, bounded as imapd.mime bounds a tree."""
    count[0] += 1
    if depth > 2 * MAX_DEPTH + 2 or count[0] > MAX_PARTS * 2 or not isinstance(v, dict):
        return False
    if not (isinstance(v.get("t"), str) and isinstance(v.get("s"), str) and isinstance(v.get("p"), list)
            and all(isinstance(kv, list) and len(kv) == 2 and all(isinstance(x, str) for x in kv) for kv in v["p"])
            and _check_fields(v.get("h"), _PART_NAMES)):
        return False
    if "c" in v:
        return set(v) == {"t", "s", "p", "h", "c"} and isinstance(v["c"], list) and bool(v["c"]) and \
            all(_check_node(c, depth + 1, count) for c in v["c"])
    if not (isinstance(v.get("n"), int) and isinstance(v.get("l"), int) and v["n"] >= 0 and v["l"] >= 0):
        return False
    if "m" in v:
        m = v["m"]
        return set(v) == {"t", "s", "p", "h", "n", "l", "m"} and isinstance(m, dict) and set(m) == {"e", "b"} \
            and _check_fields(m["e"]) and _check_node(m["b"], depth + 1, count)
    return set(v) == {"t", "s", "p", "h", "n", "l"}
