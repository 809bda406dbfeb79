"""ESEARCH (RFC 4731), STATUS=SIZE (RFC 8438) and APPENDLIMIT (RFC 7889) over a real
socket with imaplib, and the ESEARCH answer bytes."""

from __future__ import annotations

import imaplib

import pytest

import imapd.protocol  # noqa: F401 -- loads imapd.commands in its order
from imapd.esearch import response, return_options
from imapd.parser import ParseError, Reader


def test_esearch_response_bytes():
    assert response(b"a1", False, [2, 3, 4, 9], frozenset({"MIN", "MAX", "COUNT", "ALL"})) == \
        b'* ESEARCH (TAG "a1") MIN 2 MAX 9 COUNT 4 ALL 2:4,9\r\n'
    assert response(b"a2", True, [], frozenset({"MIN", "MAX", "COUNT", "ALL"})) == b'* ESEARCH (TAG "a2") UID COUNT 0\r\n'
    assert response(b"a3", True, [], frozenset({"ALL"})) == b'* ESEARCH (TAG "a3") UID\r\n'


@pytest.mark.parametrize("text, options", [
    (b"RETURN () ALL", {"ALL"}), (b"RETURN (min Count) ALL", {"MIN", "COUNT"}), (b"ALL", None),
])
def test_return_options(text, options):
    got = return_options(Reader(text))
    assert (set(got) if got is not None else None) == options


@pytest.mark.parametrize("text", [b"RETURN (SAVE) ALL", b"RETURN (MIN MIN) ALL", b"RETURN MIN ALL", b"RETURN (MIN)ALL"])
def test_return_options_refused(text):
    with pytest.raises(ParseError):
        return_options(Reader(text))


MSG = b"From: a@example.test\r\nSubject: %d\r\n\r\nbody %d\r\n"


@pytest.fixture(scope="module")
def box(imapd_server):
    c = imapd_server.client("user38@example.test")
    for i in range(1, 8):
        c.append("INBOX", r"(\Seen)" if i in (2, 3, 4, 7) else None, None, MSG % (i, i))
    c.select("INBOX")
    c.store("1", "+FLAGS", r"(\Deleted)")
    c.expunge()  # UIDs 2..7 remain as sequence numbers 1..6
    yield c
    c.logout()


def esearch(c, *args, uid=False):
    typ, data = c._simple_command("UID", "SEARCH", *args) if uid else c._simple_command("SEARCH", *args)
    assert typ == "OK", data
    return c._untagged_response(typ, data, "ESEARCH")[1][0]


def test_capabilities(box):
    caps = box.capability()[1][0].split()
    assert b"ESEARCH" in caps and b"STATUS=SIZE" in caps
    assert any(c.startswith(b"APPENDLIMIT=") and int(c.split(b"=")[1]) > 0 for c in caps)


def test_search_return_all_forms(box):
    tag_free = lambda s: s.split(b") ", 1)[1] if b") " in s else b""
    assert tag_free(esearch(box, "RETURN", "(MIN MAX COUNT ALL)", "SEEN")) == b"MIN 1 MAX 6 COUNT 4 ALL 1:3,6"
    assert tag_free(esearch(box, "RETURN", "()", "UNSEEN")) == b"ALL 4:5"
    assert tag_free(esearch(box, "RETURN", "(COUNT)", "CHARSET", "UTF-8", "SUBJECT", "5")) == b"COUNT 1"
    assert tag_free(esearch(box, "RETURN", "(MIN MAX COUNT)", "SUBJECT", "nothing")) == b"COUNT 0"


def test_uid_search_return(box):
    got = esearch(box, "RETURN", "(MIN MAX ALL)", "SEEN", uid=True)
    assert got.startswith(b'(TAG "') and got.endswith(b") UID MIN 2 MAX 7 ALL 2:4,7")


def test_plain_search_unchanged(box):
    assert box.search(None, "SEEN") == ("OK", [b"1 2 3 6"])


def test_bad_return_option(box):
    with pytest.raises(imaplib.IMAP4.error):
        box._simple_command("SEARCH", "RETURN", "(SAVE)", "ALL")


def test_status_size_and_appendlimit(box, imapd_server):
    typ, data = box.status("INBOX", "(MESSAGES SIZE APPENDLIMIT)")
    assert typ == "OK"
    sizes = sum(len(MSG % (i, i)) for i in range(2, 8))
    limit = int(next(c for c in box.capability()[1][0].split() if c.startswith(b"APPENDLIMIT=")).split(b"=")[1])
    assert data[0] == b"INBOX (MESSAGES 6 SIZE %d APPENDLIMIT %d)" % (sizes, limit)
    with pytest.raises(imaplib.IMAP4.error):
        box.status("INBOX", "(MESSAGES NOSUCH)")
