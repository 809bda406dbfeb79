"""The outbound client's extensions over real sockets, with the queue manager as a
process: 8BITMIME missing bounces with 5.6.3, HELO when EHLO is refused, AUTH
LOGIN toward a relay that offers only LOGIN, and BDAT (CHUNKING) toward a postroom
MTA, seen on the wire by a recording TCP relay between the two."""

from __future__ import annotations

import socket
import threading

from common.spool import Recipient
from tests.support import free_port, wait_for

from .queue_sink import (PostroomMta, Sink, mta_config, receiving_mta_yaml, sink_config, spool_files,
                         spool_message, start_queue, tls_sink)
from .test_queue_lifecycle import _local_dsns, _status_part

EIGHT_BIT = "From: <alice@example.test>\r\nSubject: caf\u00e9\r\n\r\nd\u00e9j\u00e0 vu\r\n".encode()


def test_8bitmime_needed_but_not_offered_bounces_with_5_6_3(tmp_path):
    with Sink("127.0.0.3", extensions=("PIPELINING", "SIZE 10485760", "DSN")) as sink:
        etc = sink_config(tmp_path, sink.port)
        spool = tmp_path / "spool"
        q = start_queue(etc)
        try:
            spool_message(spool, "alice@example.test", ["bob@remote.test"], message=EIGHT_BIT, body="8BITMIME")
            plain = spool_message(spool, "alice@example.test", ["carol@remote.test"])
            (got,) = sink.wait_for(1)
            assert got.recipients == ["carol@remote.test"]         # 7-bit mail still goes
            (sf, dsn), = wait_for(lambda: _local_dsns(spool), 15, what="the bounce")
            status = _status_part(dsn)
            assert "Final-Recipient: rfc822; bob@remote.test" in status and "Status: 5.6.3" in status
            assert "8BITMIME" in status
            assert len(sink.messages) == 1 and sink.connections >= 1
            assert plain not in spool_files(spool, "deferred")
        finally:
            q.stop()


def test_helo_when_ehlo_is_refused(tmp_path):
    with Sink("127.0.0.3", ehlo_refused=True) as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: may
        """)
        spool = tmp_path / "spool"
        qid = spool_message(spool, "alice@example.test", [Recipient("bob@remote.test", notify=("FAILURE",))])
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.hello_verb == "HELO" and got.helo == "mail.example.test"
            assert got.mail_params == "" and got.rcpt_params == [""]     # no ESMTP parameters after HELO
            assert not got.tls and b"Hello." in got.data
            wait_for(lambda: qid not in spool_files(spool, "active"), 10, what="done")
        finally:
            q.stop()


def test_auth_login_toward_a_relay_that_offers_only_login(tmp_path):
    with tls_sink(tmp_path, auth={"relayuser": "s3cret with spaces"}, auth_mechanisms=("LOGIN",)) as sink:
        etc = sink_config(tmp_path, sink.port, """
            relay_credentials: relay-passwords
        """)
        creds = etc / "relay-passwords"
        creds.write_text(f"[127.0.0.3]:{sink.port} relayuser s3cret with spaces\n")
        creds.chmod(0o600)
        spool_message(tmp_path / "spool", "alice@example.test", ["far@away.test"])
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.tls and got.auth == "relayuser" and got.auth_mechanism == "LOGIN"
            assert "s3cret" not in q.output()
        finally:
            q.stop()


class RecordingRelay:
    """A TCP relay on loopback that passes bytes both ways and keeps what the client sent."""

    def __init__(self, host: str, target: tuple[str, int]):
        self.sock = socket.socket()
        self.sock.bind((host, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.target = target
        self.sent = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target, timeout=30)
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src, dst, record):
        try:
            while data := src.recv(65536):
                if record:
                    with self.lock:
                        self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


def test_bdat_is_used_toward_a_postroom_mta_that_offers_chunking(tmp_path):
    port = free_port("127.0.0.3")
    b = PostroomMta(tmp_path / "b", "127.0.0.3", ["dest.test"], {"bob@dest.test": "pw"},
                    receiving_mta_yaml("127.0.0.3", port)).start(port)
    relay = RecordingRelay("127.0.0.4", ("127.0.0.3", port))
    try:
        etc = mta_config(tmp_path / "a", f"""
            transports:
              dest.test: "smtp:[127.0.0.4]:{relay.port}"
            tls: none
        """)
        spool = tmp_path / "a" / "spool"
        body = b"Subject: chunked\r\n\r\n" + b".dot line\r\n" + b"x" * 70 + b"\r\n"
        spool_message(spool, "alice@example.test", ["bob@dest.test"], message=body)
        q = start_queue(etc)
        try:
            got = wait_for(lambda: next((f for f in b.files() if f.envelope.sender == "alice@example.test"), None),
                           20, what="the message at the postroom MTA")
            assert got.read_message().endswith(b".dot line\r\n" + b"x" * 70 + b"\r\n")   # not dot-stuffed in BDAT
            with relay.lock:
                wire = bytes(relay.sent)
            assert f"BDAT {len(body)} LAST\r\n".encode() in wire, wire[:500]
            assert b"\r\nDATA\r\n" not in wire and b"..dot line" not in wire
        finally:
            q.stop()
    finally:
        relay.close()
        b.stop()
