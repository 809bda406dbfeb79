"""Over real sockets: LOGINDISABLED until STARTTLS, STARTTLS injection discarded,
literal and line limits refused before reading with the connection kept, the login
timeout."""

from __future__ import annotations

import time

import pytest

from tests.support import Daemon, free_port
from tests.support.config import base_config

from .conftest import Raw, write_imapd_yaml


@pytest.fixture(scope="module")
def strict(tmp_path_factory):
    """A server where loopback is not trusted with passwords, with small limits."""
    tmp = tmp_path_factory.mktemp("strict")
    etc = base_config(tmp)
    core = etc / "postroom.yaml"
    core.write_text(core.read_text().replace("auth:\n", "auth:\n  loopback_is_secure: false\n"))
    port, tls_port = free_port(), free_port()
    write_imapd_yaml(etc, port, tls_port, "limits:\n  max_line: 4K\n  max_message_size: 100K\n  login_timeout: 1s\n  idle_keepalive: 1s\n")
    daemon = Daemon("imapd.main", etc).start(wait_ports=(port,))
    yield port
    assert daemon.stop() == 0, daemon.output()
    assert "Traceback" not in daemon.output()


def test_logindisabled_until_starttls(strict):
    c = Raw(strict)
    greeting = c.line()
    assert b"LOGINDISABLED" in greeting and b"STARTTLS" in greeting and b"AUTH=PLAIN" not in greeting
    c.send(b"a LOGIN alice@example.test postroom\r\n")
    assert c.until(b"a")[-1].startswith(b"a NO [PRIVACYREQUIRED]")
    c.send(b"b AUTHENTICATE PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwb3N0cm9vbQ==\r\n")
    assert c.until(b"b")[-1].startswith(b"b NO [PRIVACYREQUIRED]")
    c.send(b"c STARTTLS\r\n")
    assert c.until(b"c")[-1].startswith(b"c OK")
    c.starttls()
    c.send(b"d CAPABILITY\r\n")
    caps = c.until(b"d")[0]
    assert b"AUTH=PLAIN" in caps and b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps
    c.send(b"e LOGIN alice@example.test postroom\r\n")
    assert c.until(b"e")[-1].startswith(b"e OK")


def test_starttls_injection_discarded(strict):
    c = Raw(strict)
    c.line()
    c.send(b"a STARTTLS\r\nb LOGIN alice@example.test postroom\r\nc SELECT INBOX\r\n")
    assert c.until(b"a") == [b"a OK Begin TLS negotiation now"]
    assert c.buf == b""
    c.starttls()
    c.send(b"d NOOP\r\n")
    lines = c.until(b"d")
    assert lines == [b"d OK NOOP completed"], lines
    c.send(b"e SELECT INBOX\r\n")
    assert c.until(b"e")[-1] == b"e BAD Log in first"


def test_literal_over_limit_refused_before_reading(strict):
    c = Raw(strict)
    c.line()
    c.send(b"a STARTTLS\r\n")
    c.until(b"a")
    c.starttls()
    c.send(b"l LOGIN alice@example.test postroom\r\n")
    c.until(b"l")
    c.send(b"b APPEND INBOX {200000}\r\n")
    line = c.line()
    assert line == b"b NO [TOOBIG] Literal too big"  # no "+" continuation came first
    # A non-synchronising one is read and thrown away, then the connection goes on.
    c.send(b"c APPEND INBOX {150000+}\r\n" + b"x" * 150000 + b"\r\nd NOOP\r\n")
    assert c.line() == b"c NO [TOOBIG] Literal too big"
    assert c.until(b"d") == [b"d OK NOOP completed"]
    c.send(b"e NOOP " + b"y" * 10000 + b"\r\nf NOOP\r\n")
    assert c.line() == b"e BAD Command line too long"
    assert c.until(b"f") == [b"f OK NOOP completed"]
    c.send(b"g APPEND INBOX {5}\r\n")
    assert c.line().startswith(b"+ ")
    c.send(b"hello\r\n")
    assert c.until(b"g")[-1].startswith(b"g OK [APPENDUID")


def test_logged_in_sessions_get_the_autologout_not_the_login_timeout(strict):
    c = Raw(strict)
    c.line()
    c.send(b"a STARTTLS\r\n")
    c.until(b"a")
    c.starttls()
    c.send(b"l LOGIN alice@example.test postroom\r\ns SELECT INBOX\r\n")
    c.until(b"s")
    time.sleep(1.5)
    c.send(b"i IDLE\r\n")
    assert c.line().startswith(b"+ ")
    t0 = time.monotonic()
    assert c.line() == b"* OK Still here"  # the IDLE keepalive
    assert time.monotonic() - t0 < 3
    c.send(b"DONE\r\n")
    assert c.until(b"i")[-1] == b"i OK Idle completed"


def test_login_timeout(strict):
    c = Raw(strict)
    c.line()
    t0 = time.monotonic()
    assert c.line() == b"* BYE Autologout; idle for too long"
    assert 0.5 < time.monotonic() - t0 < 4
    with pytest.raises((EOFError, ConnectionError)):
        c.line()


def test_proxy_protocol_address_used(tmp_path):
    """Behind a proxy the client's address from the PROXY header decides the
    plaintext rule: 192.0.2.5 is not loopback, so LOGINDISABLED."""
    etc = base_config(tmp_path)
    port = free_port()
    (etc / "imapd.yaml").write_text(f"""\
listeners:
  imap:
    endpoint: tcp:{port}:interface=127.0.0.1
    tls: starttls
    proxy_protocol: true
    proxy_from: [127.0.0.1]
""")
    daemon = Daemon("imapd.main", etc).start(wait_ports=(port,))
    try:
        c = Raw(port)
        c.send(b"PROXY TCP4 192.0.2.5 127.0.0.1 40000 143\r\n")
        greeting = c.line()
        assert b"LOGINDISABLED" in greeting, greeting
        direct = Raw(port)
        direct.send(b"PROXY TCP4 127.0.0.1 127.0.0.1 40001 143\r\n")
        assert b"AUTH=PLAIN" in direct.line()
    finally:
        assert daemon.stop() == 0, daemon.output()
    assert "192.0.2.5" in daemon.output()
