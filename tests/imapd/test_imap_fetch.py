"""FETCH over real sockets: BODYSTRUCTURE of nested multipart, message/rfc822 and
malformed MIME, sections, partial fetches, RFC822.*, \\Seen side effects."""

from __future__ import annotations

import imaplib
from pathlib import Path

import pytest

from imapd.fetch import LoadedMessage, body_structure, envelope

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


def test_structures_from_bytes():
    m = LoadedMessage(NESTED)
    assert body_structure(m.tree, True) == NESTED_STRUCTURE
    for raw, expected in MALFORMED.items():
        assert body_structure(LoadedMessage(raw).tree, True) == expected
    # Absurd nesting is cut off, not recursed into without end.
    deep = b"Content-Type: message/rfc822\r\n\r\n" * 500 + b"x"
    assert body_structure(LoadedMessage(deep).tree, True).count(b'"rfc822"') <= 25
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
