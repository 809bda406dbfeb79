"""FETCH over real sockets: BODYSTRUCTURE of nested multipart, message/rfc822 and
malformed MIME, sections, partial fetches, RFC822.*, \\Seen side effects.

`check_body` holds every BODYSTRUCTURE a test sees to RFC 3501's `body` grammar, as
a client's parser would: a message/rfc822 part must carry an envelope, a body and a
line count."""

from __future__ import annotations

import imaplib
import re
from pathlib import Path

import pytest

from imapd.fetch import LoadedMessage, body_structure, envelope
from imapd.mime import MAX_DEPTH, MAX_PARTS

NESTED = (Path(__file__).parent / "data" / "nested.eml").read_bytes().replace(b"\n", b"\r\n")

NESTED_STRUCTURE = (
    b'((("text" "plain" ("charset" "utf-8") NIL NIL "QUOTED-PRINTABLE" 16 1 NIL NIL NIL NIL)'
    b'("text" "html" ("charset" "utf-8") NIL NIL "7BIT" 12 1 NIL NIL NIL NIL) "alternative" ("boundary" "inner") NIL NIL NIL)'
    b'("message" "rfc822" NIL NIL NIL "7BIT" 62 (NIL "inner message" ((NIL NIL "carol" "example.test")) '
    b'((NIL NIL "carol" "example.test")) ((NIL NIL "carol" "example.test")) NIL NIL NIL NIL NIL) '
    b'("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL) 4 NIL ("attachment" ("filename" "fwd.eml")) NIL NIL)'
    b'("application" "pdf" ("name" "x.pdf") NIL NIL "BASE64" 12 NIL ("attachment" ("filename" "x.pdf")) ("en" "de") NIL)'
    b' "mixed" ("boundary" "outer") NIL NIL NIL)'
)

MALFORMED = {
    # multipart without a boundary: one text/plain leaf
    b"Content-Type: multipart/mixed\r\n\r\nno boundary here\r\n":
        b'("text" "plain" NIL NIL NIL "7BIT" 18 1 NIL NIL NIL NIL)',
    # unterminated multipart: the last part runs to the end
    b"Content-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nunterminated":
        b'(("text" "plain" NIL NIL NIL "7BIT" 12 1 NIL NIL NIL NIL) "mixed" ("boundary" "x") NIL NIL NIL)',
    # no blank line, 8-bit garbage and NUL
    b"garbage without header end \xff\x00":
        b'("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)',
    # broken Content-Type
    b"Content-Type: /\r\n\r\nbody":
        b'("text" "plain" NIL NIL NIL "7BIT" 4 1 NIL NIL NIL NIL)',
}


# --------------------------------------------------------------------------- the grammar

class Num(int):
    """A number token (a string token is a str, NIL is None)."""


_TOKEN = re.compile(rb'\s*(?:(\()|(\))|"((?:[^"\\\r\n]|\\["\\])*)"|\{(\d+)\}\r\n|(NIL)(?=[\s()])|(\d+)(?=[\s()]))')


def parse_parens(data: bytes) -> list:
    """One parenthesised list of IMAP response syntax into Python lists, strictly:
    quoted strings and literals become str, numbers Num, NIL None."""
    stack: list[list] = []
    top: list | None = None
    i = 0
    while True:
        m = _TOKEN.match(data, i)
        assert m, f"not IMAP syntax at {i}: {data[i:i + 60]!r}"
        i = m.end()
        if m.group(1):
            stack.append([])
            continue
        if m.group(2):
            done = stack.pop()
            if not stack:
                assert data[i:].strip() == b"", data[i:]
                return done
            stack[-1].append(done)
            continue
        assert stack, "a value outside parentheses"
        if m.group(3) is not None:
            value = re.sub(rb"\\(.)", rb"\1", m.group(3)).decode("utf-8", "replace")
        elif m.group(4) is not None:
            n = int(m.group(4))
            value, i = data[i:i + n].decode("utf-8", "replace"), i + n
        elif m.group(5):
            value = None
        else:
            value = Num(int(m.group(6)))
        stack[-1].append(value)
    return top  # pragma: no cover


def _number(x, loose: bool) -> bool:
    return isinstance(x, Num) or (loose and isinstance(x, str) and x.isdigit())


def _string(x) -> bool:
    return isinstance(x, str) and not isinstance(x, Num)


def _nstring(x) -> bool:
    return x is None or _string(x)


def _params(x) -> bool:
    return x is None or (isinstance(x, list) and x and len(x) % 2 == 0 and all(map(_string, x)))


def _check_envelope(env) -> None:
    assert isinstance(env, list) and len(env) == 10, f"envelope: {env!r}"
    assert _nstring(env[0]) and _nstring(env[1]) and _nstring(env[8]) and _nstring(env[9]), env
    for addresses in env[2:8]:
        assert addresses is None or (isinstance(addresses, list) and addresses), addresses
        for address in addresses or ():
            assert isinstance(address, list) and len(address) == 4 and all(map(_nstring, address)), address


def _check_extension(ext: list, loose: bool) -> None:
    """body-fld-dsp, body-fld-lang, body-fld-loc, body-extension*: each optional in turn."""
    if ext:
        dsp = ext[0]
        assert dsp is None or (isinstance(dsp, list) and len(dsp) == 2 and _string(dsp[0]) and _params(dsp[1])), dsp
    if len(ext) > 1:
        lang = ext[1]
        assert _nstring(lang) or (isinstance(lang, list) and lang and all(map(_string, lang))), lang
    if len(ext) > 2:
        assert _nstring(ext[2]), ext[2]


def check_body(body, loose: bool = False) -> int:
    """Assert body is a valid RFC 3501 `body`; returns how many message/rfc822 parts it
    holds. loose: numbers may come as digit strings (Twisted's parser gives those)."""
    assert isinstance(body, list) and body, f"body: {body!r}"
    if isinstance(body[0], list):  # body-type-mpart: 1*body SP media-subtype [SP body-ext-mpart]
        count = next(i for i, b in enumerate(body + [None]) if not isinstance(b, list))
        parts, rest = body[:count], body[count:]
        assert rest and _string(rest[0]), f"multipart subtype: {rest!r}"
        if len(rest) > 1:
            assert _params(rest[1]), rest[1]
            _check_extension(rest[2:], loose)
        return sum(check_body(p, loose) for p in parts)
    assert len(body) >= 7, f"body fields: {body!r}"
    kind, subtype, params, cid, desc, enc, octets = body[:7]
    assert _string(kind) and _string(subtype) and _params(params), body[:3]
    assert _nstring(cid) and _nstring(desc) and _string(enc) and _number(octets, loose), body[3:7]
    rest = body[7:]
    nested = 0
    if kind.lower() == "message" and subtype.lower() in ("rfc822", "global"):
        assert len(rest) >= 3, f"message/rfc822 without envelope, body and lines: {body!r}"
        _check_envelope(rest[0])
        nested = 1 + check_body(rest[1], loose)
        assert _number(rest[2], loose), f"lines: {rest[2]!r}"
        rest = rest[3:]
    elif kind.lower() == "text":
        assert rest and _number(rest[0], loose), f"text without lines: {body!r}"
        rest = rest[1:]
    if rest:  # body-ext-1part: md5 then the common extension fields
        assert _nstring(rest[0]), rest[0]
        _check_extension(rest[1:], loose)
    return nested


def fetched_bytes(data) -> bytes:
    """imaplib's answer to one FETCH, literals put back in place."""
    return b"".join(x[0] + b"\r\n" + x[1] if isinstance(x, tuple) else x for x in data)


def nested_messages(depth: int, multipart: bool) -> bytes:
    """A message holding `depth` message/rfc822 parts one inside the other, each
    alone (multipart False) or as the second part of a multipart/mixed."""
    inner = b"From: leaf@example.test\r\nSubject: leaf\r\n\r\nleaf body\r\n"
    for level in range(depth):
        if multipart:
            boundary = b"b%d" % level
            inner = (b"From: l%d@example.test\r\nSubject: level %d\r\nContent-Type: multipart/mixed; boundary=%s\r\n\r\n"
                     b"--%s\r\nContent-Type: text/plain\r\n\r\ntext %d\r\n--%s\r\nContent-Type: message/rfc822\r\n\r\n"
                     % (level, level, boundary, boundary, level, boundary) + inner + b"\r\n--%s--\r\n" % boundary)
        else:
            inner = b"Subject: level %d\r\nContent-Type: message/rfc822\r\n\r\n" % level + inner
    return inner


# The top is a message/rfc822 in both, so the limit falls on a message/rfc822 part.
DEEP = {"alone": nested_messages(25, False),
        "multipart": b"Content-Type: message/rfc822\r\n\r\n" + nested_messages(25, True)}
#: The message/rfc822 parts served with their message: each level is one MIME level
#: alone, two inside a multipart.
DEEP_SERVED = {"alone": MAX_DEPTH, "multipart": MAX_DEPTH // 2}


def test_grammar_check_catches_a_message_part_without_its_message():
    with pytest.raises(AssertionError, match="envelope"):
        check_body(parse_parens(b'("message" "rfc822" NIL NIL NIL "7BIT" 129 NIL NIL NIL NIL)'))
    assert check_body(parse_parens(NESTED_STRUCTURE)) == 1


@pytest.mark.parametrize("shape", DEEP)
def test_nesting_limit_gives_a_valid_structure(shape):
    """Past MAX_DEPTH a message/rfc822 part is an application/octet-stream leaf."""
    tree = LoadedMessage(DEEP[shape]).tree
    for extensible in (True, False):
        structure = body_structure(tree, extensible)
        assert check_body(parse_parens(structure)) == DEEP_SERVED[shape]
        assert b'("application" "octet-stream" NIL NIL NIL "7BIT" ' in structure


def test_part_limit_gives_a_valid_structure():
    """Past MAX_PARTS no further part is parsed; a message/rfc822 part reached at
    the limit is an application/octet-stream leaf."""
    inner = b"Content-Type: message/rfc822\r\n\r\nSubject: in\r\n\r\nx\r\n"
    raw = (b"Content-Type: multipart/mixed; boundary=p\r\n\r\n"
           + b"".join(b"--p\r\n" + inner for _ in range(MAX_PARTS)) + b"--p--\r\n")
    structure = body_structure(LoadedMessage(raw).tree, True)
    served = check_body(parse_parens(structure))
    assert 0 < served < MAX_PARTS // 2
    assert structure.count(b'("application" "octet-stream" ') == 1


def test_structures_from_bytes():
    m = LoadedMessage(NESTED)
    assert body_structure(m.tree, True) == NESTED_STRUCTURE
    for raw, expected in MALFORMED.items():
        assert body_structure(LoadedMessage(raw).tree, True) == expected
    # Absurd nesting is cut off, not recursed into without end.
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 500 + b"x"
    structure = body_structure(LoadedMessage(deep).tree, True)
    assert structure.count(b'"rfc822"') <= 25
    check_body(parse_parens(structure))
    env = envelope(LoadedMessage(b'From: <<<@@@>>>,,,"x\r\nTo: undisclosed-recipients:;\r\n\r\n').tree)
    assert env.startswith(b"(NIL NIL ") and b'(NIL NIL "undisclosed-recipients" NIL) (NIL NIL NIL NIL)' in env


def _fetch(c, spec):
    typ, data = c.fetch("1", spec)
    assert typ == "OK", data
    return data


def test_bodystructure_and_sections_over_imap(imapd):
    c = imapd.client()
    c.append("INBOX", None, None, NESTED)
    c.select("INBOX")
    data = _fetch(c, "(BODYSTRUCTURE)")
    assert data[0] == b"1 (BODYSTRUCTURE " + NESTED_STRUCTURE + b")"
    data = _fetch(c, "(BODY)")
    assert data[0].startswith(b'1 (BODY (((\"text\" \"plain\" (\"charset\" \"utf-8\") NIL NIL \"QUOTED-PRINTABLE\" 16 1)')
    expected = {
        "BODY.PEEK[1.1]": b"Hello w=C3=B6rld",
        "BODY.PEEK[1.2.MIME]": b"Content-Type: text/html; charset=utf-8\r\n\r\n",
        "BODY.PEEK[2.HEADER]": b"From: carol@example.test\r\nSubject: inner message\r\n\r\n",
        "BODY.PEEK[2.1]": b"Inner body",
        "BODY.PEEK[3]": b"JVBERi0xLjQK",
        "BODY.PEEK[HEADER.FIELDS.NOT (FROM TO DATE MIME-VERSION CONTENT-TYPE)]": b"Subject: nested\r\n\r\n",
    }
    for spec, want in expected.items():
        data = _fetch(c, f"({spec})")
        assert data[0][1] == want, (spec, data)
    data = _fetch(c, "(BODY.PEEK[4])")
    assert data[0] == b"1 (BODY[4] NIL)"
    c.logout()


def test_partial_fetches(imapd):
    c = imapd.client()
    c.append("INBOX", None, None, NESTED)
    c.select("INBOX")
    data = _fetch(c, "(BODY.PEEK[]<0.10>)")
    assert data[0][0].endswith(b"BODY[]<0> {10}") and data[0][1] == NESTED[:10]
    data = _fetch(c, "(BODY.PEEK[TEXT]<5.7>)")
    text = NESTED.split(b"\r\n\r\n", 1)[1]
    assert data[0][1] == text[5:12]
    data = _fetch(c, f"(BODY.PEEK[]<{len(NESTED) - 3}.100>)")
    assert data[0][1] == NESTED[-3:]
    data = _fetch(c, f"(BODY.PEEK[]<{len(NESTED) + 10}.5>)")
    assert data[0][0].endswith(b"BODY[]<%d> {0}" % (len(NESTED) + 10)) and data[0][1] == b""
    data = _fetch(c, "(FLAGS)")
    assert b"\\Seen" not in data[0]
    c.logout()


def test_rfc822_items_and_seen(imapd):
    c = imapd.client()
    c.append("INBOX", None, None, NESTED)
    c.select("INBOX")
    data = _fetch(c, "(RFC822.HEADER)")
    assert data[0][1] == NESTED.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n"
    assert b"\\Seen" not in _fetch(c, "(FLAGS)")[0]
    data = _fetch(c, "(RFC822.TEXT)")
    assert data[0][1] == NESTED.split(b"\r\n\r\n", 1)[1]
    assert b"\\Seen" in b"".join(x if isinstance(x, bytes) else x[0] for x in data)
    data = _fetch(c, "(RFC822)")
    assert data[0][1] == NESTED
    data = _fetch(c, "FULL")
    assert b"ENVELOPE" in data[0] and b"BODY (" in data[0] and b"INTERNALDATE" in data[0]
    typ, data = c.uid("FETCH", "1", "(FLAGS)")
    assert data[0].startswith(b"1 (UID 1 FLAGS")


    with pytest.raises(imaplib.IMAP4.error, match="Invalid message sequence number"):
        c.fetch("5", "(FLAGS)")
    typ, data = c.uid("FETCH", "5", "(FLAGS)")
    assert typ == "OK" and data == [None]
    c.logout()


def test_lf_only_maildir_file_served_with_crlf(imapd):
    from common.storage import MailStore
    lf = NESTED.replace(b"\r\n", b"\n")
    MailStore(imapd.maildir()).deliver(lf)
    c = imapd.client()
    c.select("INBOX")
    data = _fetch(c, "(RFC822.SIZE BODY.PEEK[])")
    assert data[0][1] == NESTED
    assert b"RFC822.SIZE %d" % len(NESTED) in data[0][0]
    c.logout()


@pytest.mark.parametrize("shape", DEEP)
def test_deeply_nested_messages_over_imap(imapd, shape):
    c = imapd.client()
    c.append("INBOX", None, None, DEEP[shape])
    c.select("INBOX")
    for item in ("BODYSTRUCTURE", "BODY"):
        raw = fetched_bytes(_fetch(c, f"({item})"))
        prefix = b"1 (" + item.encode() + b" "
        assert raw.startswith(prefix) and raw.endswith(b")")
        structure = parse_parens(raw[len(prefix):-1])
        assert check_body(structure) == DEEP_SERVED[shape]
    assert _fetch(c, "(BODY.PEEK[])")[0][1] == DEEP[shape]
    c.logout()


def test_malformed_mime_over_imap(imapd):
    """Each malformed sample APPENDed as it is: its BODYSTRUCTURE is the sensible
    answer and BODY[] gives back every byte."""
    c = imapd.client()
    for raw in MALFORMED:
        assert c.append("INBOX", None, None, raw)[0] == "OK"
    c.select("INBOX")
    for number, (raw, expected) in enumerate(MALFORMED.items(), 1):
        typ, data = c.fetch(str(number), "(BODYSTRUCTURE BODY.PEEK[])")
        assert typ == "OK", data
        head, body = data[0]
        assert head.startswith(b"%d (BODYSTRUCTURE " % number + expected + b" BODY[] {"), head
        assert body == raw
        check_body(parse_parens(expected))
    c.logout()


MALFORMED_ADDRESSES = {
    # a ")" outside any comment used to keep the address tokenizer from advancing
    b"a)b": b"((NIL NIL \"ab\" NIL))",
    b"Joe) <joe@example.test>": b"((\"Joe\" NIL \"joe\" \"example.test\"))",
    b"(unclosed comment <x@y>": b"NIL",
    b"\"unclosed quote <x@y>": b"((NIL NIL \"unclosed quote <x@y>\" NIL))",
    b"))),,,;;;": b"NIL",
}


@pytest.mark.parametrize("value", list(MALFORMED_ADDRESSES))
def test_malformed_addresses_over_imap(imapd, value):
    """Stray parentheses, unclosed comments and quotes in From: give an answer (what
    could be recognised, or NIL), never a stuck worker."""
    c = imapd.client()
    c.sock.settimeout(10)
    raw = b"From: " + value + b"\r\nSubject: s\r\n\r\nbody\r\n"
    assert c.append("INBOX", None, None, raw)[0] == "OK"
    typ, count = c.select("INBOX")
    typ, data = c.fetch(count[0].decode(), "(ENVELOPE)")
    assert typ == "OK", data
    fields = parse_parens(data[0].split(b"(ENVELOPE ", 1)[1][:-1])
    assert fields[1] == "s"
    expected = parse_parens(MALFORMED_ADDRESSES[value]) if MALFORMED_ADDRESSES[value] != b"NIL" else None
    assert fields[2] == expected
    c.logout()


def test_header_read_in_steps_matches_the_whole_message(tmp_path, monkeypatch):
    """FETCH answers BODY[HEADER...] and RFC822.HEADER from the start of the file
    alone: whatever the line ends and wherever the steps cut the blank line, the
    header is the one split from the whole message."""
    import random

    from imapd import summary
    from imapd.mime import _HEADER_END, split_header, to_crlf

    class Box:
        def open(self, uid):
            return open(path, "rb")

    monkeypatch.setattr(summary, "HEADER_STEP", 3)
    monkeypatch.setattr(summary, "HEADER_LIMIT", 64)
    rng = random.Random(11)
    pieces = [b"A: b", b"\r\n", b"\n", b"\r", b" c", b"\r\n\r\n", b"\n\n", b"x"]
    path = tmp_path / "m"
    for _ in range(3000):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 30)))
        path.write_bytes(data)
        got = summary._read_header(Box(), 1)
        whole = split_header(to_crlf(data))[0]
        if got is None:  # no blank line in the first 66 octets (22 steps): read whole
            assert len(data) >= 66 and not data.startswith((b"\r\n", b"\n")) and not _HEADER_END.search(data[:66])
        else:
            assert got == whole, data
