"""SEARCH and UID SEARCH with every RFC 3501 search key, CHARSET UTF-8 / US-ASCII."""

from __future__ import annotations

import imaplib

import pytest

M1 = (b"From: Alice Example <alice@example.test>\r\nTo: bob@example.test\r\nCc: carol@example.test\r\n"
      b"Bcc: dave@example.test\r\nSubject: Quarterly report\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
      b"X-Tag: alpha\r\n\r\nThe numbers are in.\r\n")
M2 = (b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n"
      b"Date: Wed, 10 Jan 2024 10:00:00 +0000\r\nContent-Type: text/plain; charset=utf-8\r\n"
      b"Content-Transfer-Encoding: quoted-printable\r\n\r\nSch=C3=B6ne Gr=C3=BC=C3=9Fe aus K=C3=B6ln\r\n" + b"x" * 2000 + b"\r\n")
M3 = (b"From: carol@example.test\r\nTo: alice@example.test\r\nSubject: lunch?\r\n"
      b"Date: Sat, 20 Jan 2024 10:00:00 +0000\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
      b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\nUGl6emEgYXQgbm9vbg==\r\n--b--\r\n")


@pytest.fixture(scope="module")
def box(imapd_server):
    c = imapd_server.client("alice@example.test")
    c.append("INBOX", r"(\Seen \Answered)", '"01-Jan-2024 12:00:00 +0000"', M1)
    c.append("INBOX", r"(\Flagged $Work)", '"10-Jan-2024 12:00:00 +0000"', M2)
    c.append("INBOX", r"(\Deleted \Draft)", '"20-Jan-2024 12:00:00 +0000"', M3)
    c.select("INBOX")
    yield c
    c.logout()


def search(c, *criteria, charset=None):
    typ, data = c.search(charset, *criteria)
    assert typ == "OK", data
    return [int(x) for x in data[0].split()]


CASES = [
    (("ALL",), [1, 2, 3]),
    (("ANSWERED",), [1]), (("UNANSWERED",), [2, 3]),
    (("DELETED",), [3]), (("UNDELETED",), [1, 2]),
    (("DRAFT",), [3]), (("UNDRAFT",), [1, 2]),
    (("FLAGGED",), [2]), (("UNFLAGGED",), [1, 3]),
    (("SEEN",), [1]), (("UNSEEN",), [2, 3]),
    (("KEYWORD", "$Work"), [2]), (("UNKEYWORD", "$Work"), [1, 3]),
    (("RECENT",), [1, 2, 3]), (("NEW",), [2, 3]), (("OLD",), []),  # appended, then the first SELECT
    (("2:*",), [2, 3]), (("1,3",), [1, 3]),
    (("UID", "1:2"), [1, 2]),
    (("BEFORE", "10-Jan-2024"), [1]), (("ON", "10-Jan-2024"), [2]), (("SINCE", "10-Jan-2024"), [2, 3]),
    (("SENTBEFORE", "10-Jan-2024"), [1]), (("SENTON", "20-Jan-2024"), [3]), (("SENTSINCE", "2-Jan-2024"), [2, 3]),
    (("LARGER", "1000"), [2]), (("SMALLER", "1000"), [1, 3]),
    (("FROM", "alice"), [1]), (("TO", "alice@"), [2, 3]), (("CC", "carol"), [1]), (("BCC", "dave"), [1]),
    (("SUBJECT", "REPORT"), [1]),
    (("HEADER", "X-Tag", "alpha"), [1]), (("HEADER", "X-Tag", '""'), [1]),
    (("BODY", "numbers"), [1]), (("BODY", "pizza"), [3]), (("BODY", "Quarterly"), []),
    (("TEXT", "Quarterly"), [1]), (("TEXT", "noon"), [3]),
    (("NOT", "SEEN"), [2, 3]), (("OR", "SEEN", "FLAGGED"), [1, 2]),
    (("(FLAGGED SINCE 1-Jan-2024)",), [2]),
    (("NOT", "(OR DELETED ANSWERED)"), [2]),
]


@pytest.mark.parametrize("criteria,expected", CASES, ids=[" ".join(c) for c, _ in CASES])
def test_every_search_key(box, criteria, expected):
    assert search(box, *criteria) == expected


def test_charset_utf8_and_encoded_words(box):
    utf8 = "Grüße".encode()
    box.literal = utf8
    typ, data = box.search("UTF-8", "SUBJECT")
    assert typ == "OK" and data[0] == b"2"
    box.literal = "Köln".encode()
    typ, data = box.search("UTF-8", "BODY")
    assert data[0] == b"2"
    assert search(box, "SUBJECT", "lunch", charset="US-ASCII") == [3]
    typ, data = box.search("KOI8-R", "ALL")
    assert typ == "NO" and data[0].startswith(b"[BADCHARSET (UTF-8 US-ASCII)]")


def test_uid_search_and_bad_programs(box):
    typ, data = box.uid("SEARCH", "FLAGGED")
    assert data == [b"2"]
    typ, data = box.uid("SEARCH", "UID", "3:*")
    assert data == [b"3"]
    for bad in (("NOSUCHKEY",), ("SINCE", "yesterday"), ("LARGER", "big"), ("OR", "SEEN")):
        with pytest.raises(imaplib.IMAP4.error):
            box.search(None, *bad)
