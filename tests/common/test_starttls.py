"""The STARTTLS discard (CVE-2011-0411) in the three daemons that offer STARTTLS, over
real sockets: a command sent in the same packet right behind STARTTLS (or POP3's
STLS) is never executed nor answered, before or after the handshake, and the
daemon's log shows that common.tls.start_tls threw exactly those bytes away."""

from __future__ import annotations

import re

import pytest

from tests.common.daemons import LineClient, config, start
from tests.support import wait_for


def discarded(daemon, n: int) -> bool:
    return bool(re.search(rf"discarded {n} bytes the client sent after STARTTLS before the TLS handshake",
                          daemon.output()))


@pytest.fixture(scope="module", params=["mta", "imapd", "pop3d"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(request.param)
    etc = config(tmp, request.param, mx=True)  # the MTA's plain listener is an MX one
    daemon, ports = start(etc, request.param)
    yield request.param, daemon, ports
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output(), daemon.output()


def test_command_pipelined_behind_starttls_is_never_run(server):
    name, daemon, ports = server
    c = LineClient(ports["plain"])
    if name == "mta":
        assert c.smtp_reply()[0].startswith(b"220 ")
        c.send(b"EHLO client.example\r\n")
        assert b"STARTTLS" in b"\n".join(c.smtp_reply())
        injected = b"VRFY postmaster\r\n"  # 252 if run; NOOP's 250 is what must come
        c.send(b"STARTTLS\r\n" + injected)
        assert c.smtp_reply() == [b"220 2.0.0 Ready to start TLS"]
        c.starttls()
        c.send(b"NOOP\r\n")
        assert c.smtp_reply() == [b"250 2.0.0 OK"]
        c.send(b"EHLO client.example\r\n")
        assert b"STARTTLS" not in b"\n".join(c.smtp_reply())  # the session is the TLS one
    elif name == "imapd":
        assert c.line().startswith(b"* OK")
        injected = b"b LOGIN alice@example.test postroom\r\n"
        c.send(b"a STARTTLS\r\n" + injected)
        assert c.until_tag(b"a") == [b"a OK Begin TLS negotiation now"]
        c.starttls()
        c.send(b"c NOOP\r\n")
        assert c.until_tag(b"c") == [b"c OK NOOP completed"]  # no "b OK" first
        c.send(b"d SELECT INBOX\r\n")
        assert c.until_tag(b"d")[-1].startswith(b"d BAD")  # the injected LOGIN did not log in
    else:
        assert c.line().startswith(b"+OK")
        injected = b"USER alice@example.test\r\n"
        c.send(b"STLS\r\n" + injected)
        assert c.line() == b"+OK Begin TLS negotiation now."
        c.starttls()
        c.send(b"PASS postroom\r\n")
        assert c.line().startswith(b"-ERR No user name given")  # the USER never counted
        c.send(b"CAPA\r\n")
        assert c.line().startswith(b"+OK")
    c.close()
    # The shared helper did the discarding: it logged exactly the injected bytes.
    wait_for(lambda: discarded(daemon, len(injected)), timeout=5, what="the discard log line")


def test_starttls_without_pipelining_discards_nothing(server):
    name, daemon, ports = server
    before = daemon.output().count("bytes the client sent after STARTTLS")
    c = LineClient(ports["plain"])
    if name == "mta":
        c.smtp_reply()
        c.send(b"EHLO client.example\r\n")
        c.smtp_reply()
        c.send(b"STARTTLS\r\n")
        assert c.smtp_reply() == [b"220 2.0.0 Ready to start TLS"]
        c.starttls()
        c.send(b"NOOP\r\n")
        assert c.smtp_reply() == [b"250 2.0.0 OK"]
    elif name == "imapd":
        c.line()
        c.send(b"a STARTTLS\r\n")
        c.until_tag(b"a")
        c.starttls()
        c.send(b"b NOOP\r\n")
        assert c.until_tag(b"b") == [b"b OK NOOP completed"]
    else:
        c.line()
        c.send(b"STLS\r\n")
        c.line()
        c.starttls()
        c.send(b"NOOP\r\n")
        assert c.line().startswith(b"-ERR")  # NOOP needs a login in POP3; it was read over TLS
    c.close()
    assert daemon.output().count("bytes the client sent after STARTTLS") == before
