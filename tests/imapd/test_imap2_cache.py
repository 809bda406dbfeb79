"""FETCH ENVELOPE / BODYSTRUCTURE and SORT through the mailbox cache: the same answers
cached and not, kept across a restart, and a forged cache file can change nothing
but what the user sees of their own mail (never the protocol)."""

from __future__ import annotations

import json
import struct
import zlib

from common.storage import cache as cache_mod

from .conftest import Raw

MULTI = (b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: cached\r\n"
         b"Message-ID: <c1@example.test>\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
         b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b"\r\n\r\n'
         b"--b\r\nContent-Type: text/plain\r\n\r\nhello\r\n--b\r\nContent-Type: message/rfc822\r\n\r\n"
         b"Subject: inner\r\nFrom: x@y.test\r\n\r\ninner body\r\n--b--\r\n")


def login(server) -> Raw:
    c = Raw(server.port)
    c.line()
    assert c.cmd(b"l", b'LOGIN "%s" postroom' % server.user.encode())[-1].startswith(b"l OK")
    return c


def fetch_lines(c: Raw) -> list[bytes]:
    return [line for line in c.cmd(b"f", b"UID FETCH 1:* (ENVELOPE BODYSTRUCTURE BODY)") if b" FETCH " in line]


def test_envelope_and_structure_are_cached_and_identical(imapd):
    c = login(imapd)
    for i in range(3):
        imapd.deliver(MULTI.replace(b"cached", b"cached %d" % i), imapd.user)
    c.cmd(b"s", b"EXAMINE INBOX")
    first = fetch_lines(c)
    assert len(first) == 3 and b'"cached 0"' in first[0] and b'"inner"' in first[0]
    cache = imapd.maildir() / cache_mod.CACHE
    assert cache.exists() and cache.stat().st_size > 500
    c.cmd(b"z", b"LOGOUT")
    # a new session (and the daemon reading the cache, not the files) answers the same
    size = cache.stat().st_size
    c = login(imapd)
    c.cmd(b"s", b"EXAMINE INBOX")
    assert fetch_lines(c) == first
    assert cache.stat().st_size == size  # nothing worked out again
    out = c.cmd(b"o", b"SORT (SUBJECT) UTF-8 ALL")
    assert out[0] == b"* SORT 1 2 3"
    c.cmd(b"z", b"LOGOUT")


def test_a_forged_cache_cannot_break_the_protocol(imapd):
    imapd.deliver(MULTI, imapd.user)
    c = login(imapd)
    c.cmd(b"s", b"EXAMINE INBOX")
    honest = fetch_lines(c)
    c.cmd(b"z", b"LOGOUT")
    cache = imapd.maildir() / cache_mod.CACHE
    head = cache.read_bytes().split(b"\n", 1)[0] + b"\n"

    def record(uid, kind, value: bytes) -> bytes:
        crc = zlib.crc32(value, int(head.split()[2]))  # started from the UIDVALIDITY
        return struct.pack("<IBII", uid, kind, len(value), crc) + value

    evil_fields = json.dumps({"subject": "x\r\n* BYE forged\r\na1 OK"}).encode()
    bad_shape = json.dumps({"t": "text", "s": "plain", "p": [], "h": {}, "n": "lots"}).encode()
    cache.write_bytes(head + record(1, 1, evil_fields) + record(1, 2, bad_shape))
    # the server keeps what it rendered for a message file in memory (its content
    # never changes): a fresh server reads the forged records
    imapd.daemon.stop()
    imapd.daemon.start(wait_ports=(imapd.port, imapd.tls_port))
    m = imapd.client()
    m.select("INBOX", readonly=True)
    typ, data = m.uid("FETCH", "1", "(ENVELOPE BODYSTRUCTURE)")
    assert typ == "OK"
    # the forged subject arrives as one literal string inside the ENVELOPE...
    assert isinstance(data[0], tuple) and data[0][1] == b"x\r\n* BYE forged\r\na1 OK"
    # ...and the structure of the wrong shape is not used: worked out again, as before
    assert data[1].split(b"BODYSTRUCTURE", 1)[1] == honest[0].split(b"BODYSTRUCTURE", 1)[1].split(b" BODY (")[0] + b")"
    assert m.noop()[0] == "OK"  # the session goes on
    m.logout()


def test_rendered_items_kept_in_memory_stay_within_their_budget():
    from imapd.summary import _Rendered
    kept = _Rendered(100)
    for i in range(10):
        kept.put(("box", f"m{i}", "ENVELOPE"), b"x" * 30)
        assert kept.size <= 100
    assert kept.get(("box", "m0", "ENVELOPE")) is None  # least recently used went first
    assert kept.get(("box", "m9", "ENVELOPE")) == b"x" * 30
    kept.put(("box", "m9", "ENVELOPE"), b"y" * 10)  # replaced, not counted twice
    assert kept.size == sum(len(v) for v in kept.items.values()) <= 100
