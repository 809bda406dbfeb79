"""MULTIAPPEND (RFC 3502) over a real socket: several messages in one APPEND get
consecutive UIDs with their own flags and dates, and a command that cannot save
all of them saves none."""

from __future__ import annotations

import calendar
import imaplib
import time

from common.storage import MailStore

from .imap2_raw import Raw

QUOTA_USER = "quota@example.test"  # 2 KiB of storage (tests/imapd/conftest.py)


def lit(data: bytes) -> bytes:
    return b"{%d+}\r\n" % len(data) + data


def test_multiappend_saves_all_with_their_flags_and_dates(imapd):
    c = Raw(imapd.port, imapd.user)
    try:
        assert b"MULTIAPPEND" in c.cmd(b"c CAPABILITY")[0].split()
        one, two, three = (b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in (1, 2, 3))
        got = c.cmd(b"a APPEND INBOX (\\Seen) " + lit(one) + b' (\\Flagged $Work) "05-Feb-2024 10:00:00 +0000" '
                    + lit(two) + b" " + lit(three))
        assert got[-1].startswith(b"a OK [APPENDUID ") and got[-1].split()[4] == b"1:3]"
        assert b"* 3 RECENT" in c.cmd(b"s SELECT INBOX")  # appended: \Recent for the first SELECT
        got = c.cmd(b"f FETCH 1:3 (FLAGS INTERNALDATE RFC822.SIZE)")
        assert got[0].startswith(b"* 1 FETCH (FLAGS (\\Seen \\Recent) INTERNALDATE ")
        assert got[0].endswith(b" RFC822.SIZE %d)" % len(one))
        assert got[1].startswith(b"* 2 FETCH (FLAGS (\\Flagged $Work \\Recent) INTERNALDATE ")
        assert time.mktime(imaplib.Internaldate2tuple(got[1])) == calendar.timegm((2024, 2, 5, 10, 0, 0))
        assert got[2].startswith(b"* 3 FETCH (FLAGS (\\Recent) ")
    finally:
        c.close()


def test_multiappend_is_all_or_nothing(imapd):
    c = Raw(imapd.port, imapd.user)
    try:
        good = b"Subject: good\r\n\r\nbody\r\n"
        got = c.cmd(b"a APPEND INBOX " + lit(good) + b" " + lit(b""))
        assert got[-1].startswith(b"a NO")
        got = c.cmd(b"b APPEND INBOX " + lit(good) + b" (\\Bogus) " + lit(good))
        assert got[-1].startswith(b"b BAD")
        got = c.cmd(b"c APPEND NoSuchBox " + lit(good) + b" " + lit(good))
        assert got[-1].startswith(b"c NO [TRYCREATE]")
        assert c.cmd(b"d STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 0)"
    finally:
        c.close()
    assert MailStore(imapd.maildir()).open_mailbox("INBOX").messages == []


def test_multiappend_over_quota_saves_none(imapd_server):
    c = Raw(imapd_server.port, QUOTA_USER)
    try:
        big = b"Subject: big\r\n\r\n" + b"x" * 1200 + b"\r\n"
        got = c.cmd(b"a APPEND INBOX " + lit(big) + b" " + lit(big))
        assert got[-1].startswith(b"a NO [OVERQUOTA]")
        assert c.cmd(b"d STATUS INBOX (MESSAGES)")[0] == b"* STATUS INBOX (MESSAGES 0)"
        got = c.cmd(b"e APPEND INBOX " + lit(big))
        assert got[-1].startswith(b"e OK [APPENDUID")
    finally:
        c.close()
