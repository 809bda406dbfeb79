"""The LMTP server of a running postroom-mda, spoken to with smtplib's LMTP client
over a unix socket and TCP: one reply per recipient after DATA, in order."""

from __future__ import annotations

import smtplib
import socket

import pytest

from tests.mda.mda_support import MESSAGE, folder_files, mda_config, write_script
from tests.support import Daemon, free_port, wait_for


def lmtp_yaml(sock, port) -> str:
    return f"""consumer:
  enabled: false
listeners:
  lmtp:
    endpoint: unix:{sock}:mode=660
    tls: none
  lmtp-tcp:
    endpoint: tcp:{port}:interface=127.0.0.1
    tls: none
"""


@pytest.fixture
def lmtp_daemon(tmp_path):
    sock = tmp_path / "run" / "lmtp.sock"
    port = free_port()
    etc = mda_config(tmp_path, lmtp_yaml(sock, port), user_extra={"bob@example.test": "userdb_quota_rule=*:storage=1"})
    d = Daemon("mda.main", etc).start(wait_ports=(port,))
    wait_for(sock.exists, timeout=10, what="the LMTP socket")
    yield sock, port, d
    assert d.stop() == 0


def send(client: smtplib.LMTP, sender: str, rcpts: list[str], message: bytes):
    """MAIL, RCPTs, DATA; returns the RCPT replies and the per-recipient DATA replies."""
    assert client.mail(sender)[0] == 250
    rcpt_replies = [client.rcpt(r) for r in rcpts]
    accepted = [r for r, rep in zip(rcpts, rcpt_replies) if rep[0] == 250]
    data_replies = []
    if accepted:
        data_replies.append(client.data(message))
        data_replies += [client.getreply() for _ in accepted[1:]]
    return rcpt_replies, data_replies


def test_lmtp_one_reply_per_recipient(tmp_path, lmtp_daemon):
    sock, _port, _d = lmtp_daemon
    write_script(tmp_path, 'require "fileinto"; fileinto "Lmtp";')
    with smtplib.LMTP(str(sock)) as client:
        assert client.ehlo("mta.example.test")[0] == 250          # LHLO, for smtplib.LMTP
        big = MESSAGE + (b"x" * 60 + b"\r\n") * 70
        rcpt, data = send(client, "sender@remote.test",
                          ["alice@example.test", "nobody@example.test", "bob@example.test", "demo+tag@example.test"], big)
        assert [r[0] for r in rcpt] == [250, 550, 250, 250]
        assert rcpt[1][1].startswith(b"5.1.1")
        assert [r[0] for r in data] == [250, 552, 250]
        assert data[1][1].startswith(b"5.2.2")
    assert len(folder_files(tmp_path, "Lmtp")) == 1
    assert folder_files(tmp_path, "INBOX", "bob") == []
    [f] = folder_files(tmp_path, "INBOX", "demo")
    assert f.read_bytes().startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: demo+tag@example.test\r\n")


def test_lmtp_over_tcp_pipelined_and_lhlo_required(tmp_path, lmtp_daemon):
    _sock, port, _d = lmtp_daemon
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(b"MAIL FROM:<a@remote.test>\r\n")
        assert f.readline().startswith(b"503 5.5.1")
        s.sendall(b"LHLO client.test\r\n")
        caps = []
        while True:
            line = f.readline()
            caps.append(line[4:].strip().upper())
            if line[3:4] == b" ":
                break
        assert {b"PIPELINING", b"ENHANCEDSTATUSCODES", b"8BITMIME", b"SMTPUTF8", b"CHUNKING"} <= set(caps)
        # Everything pipelined in one write.
        s.sendall(b"MAIL FROM:<>\r\nRCPT TO:<alice@example.test>\r\nRCPT TO:<demo@example.test>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(4)] == [b"250", b"250", b"250", b"354"]
        s.sendall(MESSAGE + b".\r\nQUIT\r\n")
        assert [f.readline()[:9] for _ in range(3)] == [b"250 2.0.0", b"250 2.0.0", b"221 2.0.0"]
    [f1] = folder_files(tmp_path, "INBOX", "alice")
    assert f1.read_bytes().startswith(b"Return-Path: <>\r\n")
    assert len(folder_files(tmp_path, "INBOX", "demo")) == 1


def test_lmtp_refused_message_gets_one_reply_per_recipient(tmp_path, lmtp_daemon):
    sock, _port, _d = lmtp_daemon
    with smtplib.LMTP(str(sock)) as client:
        client.ehlo("mta.example.test")
        too_long_line = MESSAGE + b"x" * 2000 + b"\r\n"
        _rcpt, data = send(client, "sender@remote.test", ["alice@example.test", "demo@example.test"], too_long_line)
        assert [r[0] for r in data] == [500, 500]
        assert client.noop()[0] == 250
    assert folder_files(tmp_path, "INBOX", "alice") == []


def test_lmtp_bdat_and_bare_lf_refused(tmp_path, lmtp_daemon):
    _sock, port, _d = lmtp_daemon
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO client.test\r\n")
        while f.readline()[3:4] != b" ":
            pass
        s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\n")
        assert [f.readline()[:3] for _ in range(2)] == [b"250", b"250"]
        s.sendall(b"BDAT %d LAST\r\n" % len(MESSAGE) + MESSAGE)
        assert f.readline().startswith(b"250 2.0.0")
        s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        assert [f.readline()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        s.sendall(b"Subject: x\r\n\r\nbare\nline\r\n.\r\n")
        reply = f.readline()
        assert reply[:1] in (b"5", b"4") or reply == b""
    assert len(folder_files(tmp_path, "INBOX", "alice")) == 1


def test_core_refusal_after_data_is_one_reply_per_recipient():
    """RFC 2033 4.2 in the shared core (no sockets): a message refused as a whole still
    gets one reply per accepted recipient."""
    from common.smtp.server import MailFrom, RcptTo, ServerSettings, SmtpServerConn
    conn = SmtpServerConn(ServerSettings(hostname="mda.test", max_message_size=100), lmtp=True)
    conn.greet()
    events = conn.receive(b"LHLO mta.test\r\nMAIL FROM:<a@b.test>\r\n")
    assert isinstance(events[-1], MailFrom)
    conn.accept()
    for rcpt in (b"x@mda.test", b"y@mda.test"):
        [ev] = conn.receive(b"RCPT TO:<" + rcpt + b">\r\n")
        assert isinstance(ev, RcptTo)
        conn.accept()
    conn.receive(b"DATA\r\n" + b"Subject: big\r\n\r\n" + b"x" * 90 + b"\r\n" + b"y" * 90 + b"\r\n.\r\n")
    out = conn.data_to_send().split(b"\r\n")
    assert out[-3:] == [b"552 5.3.4 Message size exceeds fixed maximum message size"] * 2 + [b""]


def test_many_unknown_recipients_do_not_close_the_session(tmp_path, lmtp_daemon):
    sock, _port, _d = lmtp_daemon
    with smtplib.LMTP(str(sock)) as client:
        client.ehlo("mta.example.test")
        rcpts = [f"nobody{i}@example.test" for i in range(15)] + ["alice@example.test"]
        rcpt, data = send(client, "sender@remote.test", rcpts, MESSAGE)
        assert [r[0] for r in rcpt] == [550] * 15 + [250]
        assert [r[0] for r in data] == [250]
    assert len(folder_files(tmp_path)) == 1


def test_lmtp_8bitmime_smtputf8_and_a_utf8_address(tmp_path):
    """MAIL FROM with BODY=8BITMIME SMTPUTF8 and a UTF-8 recipient (RFC 6531) reach
    the user's maildir with the 8-bit body intact."""
    from tests.support.config import _hash
    sock = tmp_path / "run" / "lmtp.sock"
    etc = mda_config(tmp_path, lmtp_yaml(sock, free_port()))
    with open(etc / "users", "a") as f:
        f.write(f"jörg@example.test:{_hash('postroom')}::::{tmp_path / 'mail' / 'example.test' / 'joerg'}::\n")
    d = Daemon("mda.main", etc).start()
    try:
        wait_for(sock.exists, timeout=10, what="the LMTP socket")
        _send_utf8(tmp_path, sock)
    finally:
        assert d.stop() == 0


def _send_utf8(tmp_path, sock):
    body = ("From: Jörg <jörg@example.test>\r\nTo: jörg@example.test\r\nSubject: Grüße\r\n\r\n"
            "Schöne Grüße aus Köln.\r\n").encode("utf-8")
    with smtplib.LMTP(str(sock)) as client:
        client.ehlo("mta.example.test")
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        code, _ = client.mail("sender@remote.test", ["BODY=8BITMIME", "SMTPUTF8"])
        assert code == 250
        code, _ = client.rcpt("jörg@example.test")
        assert code == 250
        code, reply = client.data(body)
        assert code == 250, reply
    files = [p for sub in ("new", "cur") for p in (tmp_path / "mail" / "example.test" / "joerg" / "Maildir" / sub).iterdir()]
    [f] = files
    data = f.read_bytes()
    assert data.startswith("Return-Path: <sender@remote.test>\r\nDelivered-To: jörg@example.test\r\n".encode())
    assert data.endswith(body)


def test_lmtp_disk_full_is_452_431(tmp_path):
    from tests.mda.mda_support import small_maildir_disk
    with small_maildir_disk(tmp_path) as (_mount, core_extra):
        sock = tmp_path / "run" / "lmtp.sock"
        etc = mda_config(tmp_path, lmtp_yaml(sock, free_port()), core_extra=core_extra)
        d = Daemon("mda.main", etc).start()
        try:
            wait_for(sock.exists, timeout=10, what="the LMTP socket")
            with smtplib.LMTP(str(sock)) as client:
                client.ehlo("mta.example.test")
                _rcpt, data = send(client, "sender@remote.test", ["alice@example.test", "bob@example.test"],
                                   MESSAGE + (b"x" * 998 + b"\r\n") * 200)
                assert [(r[0], r[1][:5]) for r in data] == [(452, b"4.3.1")] * 2
                # A small message still fits: the session goes on.
                _rcpt, data = send(client, "sender@remote.test", ["alice@example.test"], MESSAGE)
                assert data[0][0] == 250
        finally:
            assert d.stop() == 0
