"""TLS through the runner's fixture daemon, over real sockets with the ssl module's
clients: only TLS 1.2 and 1.3, STARTTLS drops pipelined input (CVE-2011-0411),
SIGHUP brings a new certificate to new connections, a failed reload keeps the old
one; outbound client creators verify (or not) with a real Twisted client."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import textwrap

import pytest
from cryptography import x509

from common.selfsigned import make_self_signed
from tests.common.runner_fixture import MODULE, fixture_config
from tests.support import ROOT, Daemon, free_port, wait_for


def listeners(plain: int, implicit: int) -> str:
    return (f"listeners:\n"
            f"  plain:\n    endpoint: tcp:{plain}:interface=127.0.0.1\n    tls: starttls\n"
            f"  implicit:\n    endpoint: tcp:{implicit}:interface=127.0.0.1\n    tls: implicit\n")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tls")
    plain, implicit = free_port(), free_port()
    etc = fixture_config(tmp, listeners(plain, implicit))
    d = Daemon(MODULE, etc).start(wait_ports=(plain, implicit))
    d.plain, d.implicit, d.etc = plain, implicit, etc
    yield d
    assert d.stop() == 0
    d.kill()


def client_context(version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if version is not None:
        # Let the client offer old versions, so that a refusal is the server's doing.
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


def implicit(port: int, version: ssl.TLSVersion | None = None) -> tuple[ssl.SSLSocket, object]:
    sock = client_context(version).wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10))
    f = sock.makefile("rb")
    assert f.readline() == b"220 fixture ready\r\n"
    return sock, f


def ask(sock, f, line: bytes) -> bytes:
    sock.sendall(line + b"\r\n")
    return f.readline().rstrip(b"\r\n")


def close(sock, f) -> None:
    """Close for real: a socket stays open while its makefile() object is."""
    f.close()
    sock.close()


def serial_of(sock: ssl.SSLSocket) -> int:
    return x509.load_der_x509_certificate(sock.getpeercert(binary_form=True)).serial_number


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1])
def test_tls_10_and_11_are_refused(daemon, version):
    with pytest.warns(DeprecationWarning), pytest.raises(ssl.SSLError):  # the client's old versions
        implicit(daemon.implicit, version)


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_12_and_13_are_accepted(daemon, version, name):
    sock, f = implicit(daemon.implicit, version)
    assert sock.version() == name
    cipher = sock.cipher()[0]
    assert ask(sock, f, b"TLS") == f"250 {name} {cipher}".encode()  # tls_info() agrees
    assert ask(sock, f, b"SECURE") == b"250 yes"
    if name == "TLSv1.2":
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    close(sock, f)


def test_tls12_cipher_outside_the_list_is_refused(daemon):
    ctx = client_context(ssl.TLSVersion.TLSv1_2)
    ctx.set_ciphers("AES128-SHA:@SECLEVEL=0")  # RSA key exchange, CBC: not in the list
    with pytest.raises(ssl.SSLError):
        ctx.wrap_socket(socket.create_connection(("127.0.0.1", daemon.implicit), timeout=10))


def test_starttls_discards_what_was_pipelined_behind_it(daemon):
    sock = socket.create_connection(("127.0.0.1", daemon.plain), timeout=10)
    f = sock.makefile("rb")
    assert f.readline() == b"220 fixture ready\r\n"
    assert ask(sock, f, b"SECURE") == b"250 no"
    sock.sendall(b"STARTTLS\r\nNOOP\r\n")  # one packet: the NOOP must never run
    assert f.readline() == b"220 go ahead\r\n"
    tls = client_context().wrap_socket(sock)  # a plaintext NOOP reply would break this handshake
    tf = tls.makefile("rb")
    assert ask(tls, tf, b"NOOPS") == b"250 noops=0"
    assert ask(tls, tf, b"SECURE") == b"250 yes"
    assert ask(tls, tf, b"NOOP") == b"250 noop"
    assert ask(tls, tf, b"NOOPS") == b"250 noops=1"
    close(tls, tf)
    f.close()


def test_sighup_reloads_the_certificate_for_new_connections(tmp_path):
    port = free_port()
    etc = fixture_config(tmp_path, f"listeners:\n  s:\n    endpoint: tcp:{port}:interface=127.0.0.1\n    tls: implicit\n")
    cert, key = etc / "cert.pem", etc / "key.pem"
    d = Daemon(MODULE, etc).start(wait_ports=(port,))
    try:
        old_sock, old_f = implicit(port)
        old_serial = serial_of(old_sock)

        make_self_signed(cert, key, "mail.example.test")
        new_serial = x509.load_pem_x509_certificate(cert.read_bytes()).serial_number
        assert new_serial != old_serial
        d.signal(signal.SIGHUP)
        wait_for(lambda: "TLS certificate reloaded" in d.output(), timeout=5, what="the reload")
        sock, f = implicit(port)
        assert serial_of(sock) == new_serial
        close(sock, f)
        assert ask(old_sock, old_f, b"NOOP") == b"250 noop"  # open connections carry on

        cert.write_text("broken\n")  # a failed reload keeps the certificate in use
        d.signal(signal.SIGHUP)
        wait_for(lambda: "TLS reload failed, keeping the old certificate" in d.output(), timeout=5,
                 what="the failed reload")
        sock, f = implicit(port)
        assert serial_of(sock) == new_serial
        close(sock, f)
        close(old_sock, old_f)
        assert d.stop() == 0
    finally:
        d.kill()


def test_min_version_13_refuses_12(tmp_path):
    port = free_port()
    etc = fixture_config(tmp_path, f"listeners:\n  s:\n    endpoint: tcp:{port}:interface=127.0.0.1\n    tls: implicit\n")
    text = (etc / "postroom.yaml").read_text().replace("tls:\n", "tls:\n  min_version: '1.3'\n")
    (etc / "postroom.yaml").write_text(text)
    d = Daemon(MODULE, etc).start(wait_ports=(port,))
    try:
        with pytest.raises(ssl.SSLError):
            implicit(port, ssl.TLSVersion.TLSv1_2)
        close(*implicit(port, ssl.TLSVersion.TLSv1_3))
        assert d.stop() == 0
    finally:
        d.kill()


CLIENT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from twisted.internet import reactor, defer
    from twisted.internet.endpoints import TCP4ClientEndpoint, wrapClientTLS
    from twisted.internet.protocol import Protocol, Factory
    from common.tls import client_creator

    host, verify, ca, port = sys.argv[1], sys.argv[2] == "1", sys.argv[3], int(sys.argv[4])

    class Ask(Protocol):
        def connectionMade(self):
            self.got = b""
            self.transport.write(b"TLS\\r\\n")
        def dataReceived(self, data):
            self.got += data
            if self.got.count(b"\\r\\n") >= 2:
                print(self.got.split(b"\\r\\n")[1].decode())
                self.transport.loseConnection()
        def connectionLost(self, reason):
            if not self.got.count(b"\\r\\n") >= 2:
                print("FAILED", reason.getErrorMessage())
            reactor.stop()

    creator = client_creator(host, verify, Path(ca) if ca else None)
    endpoint = wrapClientTLS(creator, TCP4ClientEndpoint(reactor, "127.0.0.1", port, timeout=5))
    def failed(f):
        print("FAILED", f.getErrorMessage()); reactor.stop()
    endpoint.connect(Factory.forProtocol(Ask)).addErrback(failed)
    reactor.callLater(10, reactor.stop)
    reactor.run()
""")


def outbound(port: int, host: str, verify: bool, ca: str = "") -> str:
    result = subprocess.run([sys.executable, "-c", CLIENT, host, "1" if verify else "0", ca, str(port)],
                            capture_output=True, text=True, cwd=str(ROOT), timeout=30)
    return result.stdout.strip()


def test_client_creator_verifies_the_peer(daemon):
    ca = str(daemon.etc / "cert.pem")  # self-signed for mail.example.test, localhost, 127.0.0.1
    assert outbound(daemon.implicit, "mail.example.test", True, ca).startswith("250 TLSv1.3 ")
    assert outbound(daemon.implicit, "other.example.test", True, ca).startswith("FAILED")
    assert outbound(daemon.implicit, "mail.example.test", True).startswith("FAILED")  # not in system roots
    # Opportunistic (may): encrypts without checking.
    assert outbound(daemon.implicit, "other.example.test", False).startswith("250 TLSv1.3 ")
