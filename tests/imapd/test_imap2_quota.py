"""QUOTA (RFC 9208) over a real socket with imaplib: the usage matches the Maildir++
`maildirsize` the MDA keeps, the limits are the user's quota rules."""

from __future__ import annotations

import imaplib

import pytest

from common.storage import MailStore
from imapd.quota import quota_response, quotaroot_response, resources

QUOTA_USER = "quota@example.test"  # userdb_quota_rule=*:storage=2K in tests/imapd/conftest.py


def test_resources_and_responses():
    assert resources((2048, None), (1500, 3)) == [("STORAGE", 1, 2)]
    assert resources((None, 10), (1500, 3)) == [("MESSAGE", 3, 10)]
    assert resources((None, None), (1, 1)) == []
    assert quota_response("", [("STORAGE", 1, 2), ("MESSAGE", 3, 10)]) == b'* QUOTA "" (STORAGE 1 2 MESSAGE 3 10)\r\n'
    assert quotaroot_response(b"INBOX", [""]) == b'* QUOTAROOT INBOX ""\r\n'


def maildirsize_usage(maildir) -> tuple[int, int]:
    lines = (maildir / "maildirsize").read_text().splitlines()[1:]
    return sum(int(x.split()[0]) for x in lines), sum(int(x.split()[1]) for x in lines)


def untagged(c, name):
    return c.untagged_responses.pop(name, [])


def test_getquotaroot_matches_maildirsize(imapd_server):
    c = imapd_server.client(QUOTA_USER)
    try:
        caps = c.capability()[1][0].split()
        assert b"QUOTA" in caps and b"QUOTA=RES-STORAGE" in caps and b"QUOTASET" not in caps
        # the MDA delivers one message, IMAP appends another
        maildir = imapd_server.maildir(QUOTA_USER)
        MailStore(maildir).deliver(b"Subject: by the MDA\r\n\r\n" + b"m" * 700 + b"\r\n", quota=(2048, None))
        assert c.append("INBOX", None, None, b"Subject: by IMAP\r\n\r\n" + b"i" * 500 + b"\r\n")[0] == "OK"
        used, count = maildirsize_usage(maildir)
        assert count == 2 and used > 1024
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK"
        assert data == [[b'INBOX ""'], [b'"" (STORAGE %d 2)' % (used // 1024)]]
        typ, data = c.getquota('""')
        assert typ == "OK" and data == [b'"" (STORAGE %d 2)' % (used // 1024)]
        # over the limit now: APPEND refused, and QUOTA shows why
        typ, data = c.append("INBOX", None, None, b"Subject: x\r\n\r\n" + b"x" * 900 + b"\r\n")
        assert typ == "NO" and b"OVERQUOTA" in data[0]
    finally:
        c.logout()


def test_user_without_limits_and_errors(imapd):
    c = imapd.client()
    try:
        typ, data = c.getquotaroot("INBOX")
        assert typ == "OK" and data == [[b'INBOX ""'], [b'"" ()']]
        typ, data = c.getquota('"other"')
        assert typ == "NO" and b"NONEXISTENT" in data[0]
        typ, data = c.getquotaroot("NoSuchBox")
        assert typ == "NO" and "NONEXISTENT" in str(data)
        typ, data = c.setquota('""', "(STORAGE 512)")
        assert typ == "NO"
        with pytest.raises(imaplib.IMAP4.error):
            c.setquota('""', "(STORAGE)")
        typ, data = c.getquotaroot("..")
        assert typ == "NO" and "CANNOT" in str(data)
    finally:
        c.logout()
