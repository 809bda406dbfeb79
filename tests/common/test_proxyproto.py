"""common.proxyproto: the header parser with bytes, and the wrapping factory over real sockets."""

from __future__ import annotations

import socket
import ssl
import struct
import time
from pathlib import Path

from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import PrivateCertificate
from twisted.trial import unittest

from common.proxyproto import V2_SIGNATURE, ProxyHeader, ProxyHeaderError, ProxyProtocolFactory, parse_header


def v2(command: int, family: int, body: bytes, length: int | None = None) -> bytes:
    return V2_SIGNATURE + struct.pack("!BBH", 0x20 | command, family, len(body) if length is None else length) + body


def v2_tcp4(src="203.0.113.7", dst="192.0.2.1", sport=40000, dport=25) -> bytes:
    return v2(1, 0x11, socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport))


def v2_tcp6(src="2001:db8::7", dst="2001:db8::1", sport=40000, dport=25) -> bytes:
    body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst) + struct.pack("!HH", sport, dport)
    return v2(1, 0x21, body + b"\x04\x00\x01x")  # plus a TLV, which is skipped


class ParseHeaderTests(unittest.SynchronousTestCase):
    def test_v1_tcp4_and_tcp6(self):
        h = parse_header(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nEHLO")
        self.assertEqual(h, ProxyHeader(1, 43, ("203.0.113.7", 40000), ("192.0.2.1", 25)))
        h = parse_header(b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n")
        self.assertEqual((h.source, h.destination), (("2001:db8::7", 1), ("2001:db8::1", 65535)))

    def test_v1_unknown_keeps_the_peer(self):
        self.assertEqual(parse_header(b"PROXY UNKNOWN\r\n"), ProxyHeader(1, 15))
        self.assertEqual(parse_header(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").source, None)

    def test_v2_families(self):
        h = parse_header(v2_tcp4() + b"rest")
        self.assertEqual((h.version, h.length, h.source), (2, 28, ("203.0.113.7", 40000)))
        h = parse_header(v2_tcp6())
        self.assertEqual((h.source, h.destination), (("2001:db8::7", 40000), ("2001:db8::1", 25)))
        self.assertEqual(parse_header(v2(0, 0x00, b"")), ProxyHeader(2, 16))  # LOCAL
        self.assertEqual(parse_header(v2(0, 0x11, b"x" * 12)).source, None)  # LOCAL ignores addresses

    def test_incomplete_headers_ask_for_more(self):
        whole = b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n"
        for cut in range(len(whole)):
            self.assertIsNone(parse_header(whole[:cut]))
        whole = v2_tcp6()
        for cut in range(len(whole)):
            self.assertIsNone(parse_header(whole[:cut]))

    def test_malformed_headers_are_refused(self):
        bad = [
            b"EHLO example.test\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\n",
            b"PROXY TCP4  203.0.113.7 192.0.2.1 40000 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40000\r\n",
            b"PROXY TCP4 2001:db8::1 192.0.2.1 40000 25\r\n",
            b"PROXY TCP6 203.0.113.7 192.0.2.1 40000 25\r\n",
            b"PROXY TCP4 203.0.113.700 192.0.2.1 40000 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 040000 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 25\r\n",
            b"PROXY UDP4 203.0.113.7 192.0.2.1 1 25\r\n",
            b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25" + b" " * 70 + b"\r\n",
            b"PROXY " + b"A" * 200,
            v2(2, 0x11, b"x" * 12),                     # unknown command
            V2_SIGNATURE + b"\x11\x11\x00\x0c" + b"x" * 12,  # version 1 nibble
            v2(1, 0x12, b"x" * 12),                     # datagram
            v2(1, 0x11, b"x" * 11),                     # too short for IPv4
            v2(1, 0x21, b"x" * 12),                     # too short for IPv6
            v2(1, 0x41, b"x" * 12),                     # unknown family
            b"\r\n\r\n\x00\r\nQUIX\n",
        ]
        for data in bad:
            with self.assertRaises(ProxyHeaderError, msg=repr(data)):
                parse_header(data)


class Greeter(Protocol):
    """Speaks first (like SMTP): greets with the peer and local address, then echoes."""

    def connectionMade(self):
        peer, host = self.transport.getPeer(), self.transport.getHost()
        self.transport.write(f"220 hello {peer.host} {peer.port} {host.host} {host.port}\r\n".encode())

    def dataReceived(self, data):
        for line in data.split(b"\r\n"):
            if line == b"STARTTLS":
                self.transport.write(b"220 go ahead\r\n")
                self.transport.startTLS(self.factory.tls)
            elif line == b"WHO":
                peer = self.transport.getPeer()
                self.transport.write(f"250 {peer.host} {peer.port}\r\n".encode())
            elif line:
                self.transport.write(b"250 " + line + b"\r\n")


def read_line(sock, timeout=3.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            return data
        data += chunk
    return data


def closed_without_greeting(sock) -> bool:
    if sock is None:
        return True
    sock.settimeout(3)
    try:
        return sock.recv(100) == b""
    except ConnectionResetError:
        return True


class ProxyFactoryTests(unittest.TestCase):
    def listen(self, trusted=("127.0.0.1",), timeout=5.0, tls=None):
        inner = Factory.forProtocol(Greeter)
        inner.tls = tls
        port = reactor.listenTCP(0, ProxyProtocolFactory(inner, trusted, reactor, timeout), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return port.getHost().port

    def tls_options(self):
        from common.selfsigned import make_self_signed
        import shutil
        import tempfile
        d = Path(tempfile.mkdtemp(prefix="postroom-proxy-"))
        self.addCleanup(shutil.rmtree, d)
        make_self_signed(d / "c.pem", d / "k.pem", "mail.example.test")
        return PrivateCertificate.loadPEM((d / "c.pem").read_bytes() + (d / "k.pem").read_bytes()).options()

    def client(self, port, function):
        def run():
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            except ConnectionResetError:  # refused so fast that connect saw the reset
                return function(None)
            with sock:
                return function(sock)
        return threads.deferToThread(run)

    async def test_v1_from_trusted_peer_and_no_greeting_before_it(self):
        port = self.listen()

        def talk(sock):
            sock.settimeout(0.3)
            try:
                early = sock.recv(100)
            except socket.timeout:
                early = b""
            sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\nWHO\r\n")
            return early, read_line(sock), read_line(sock)

        early, greeting, who = await self.client(port, talk)
        self.assertEqual(early, b"")
        self.assertEqual(greeting, b"220 hello 203.0.113.7 40000 192.0.2.1 25\r\n")
        self.assertEqual(who, b"250 203.0.113.7 40000\r\n")

    async def test_v2_ipv4_and_ipv6_from_trusted_network(self):
        port = self.listen(trusted=("10.0.0.0/8", "127.0.0.0/8"))

        def talk(header):
            def run(sock):
                sock.sendall(header)
                return read_line(sock)
            return run

        self.assertEqual(await self.client(port, talk(v2_tcp4())), b"220 hello 203.0.113.7 40000 192.0.2.1 25\r\n")
        self.assertEqual(await self.client(port, talk(v2_tcp6())), b"220 hello 2001:db8::7 40000 2001:db8::1 25\r\n")

    async def test_local_command_keeps_the_real_peer(self):
        port = self.listen()

        def talk(sock):
            sock.sendall(v2(0, 0, b""))
            return read_line(sock), sock.getsockname()[1]

        greeting, client_port = await self.client(port, talk)
        self.assertTrue(greeting.startswith(f"220 hello 127.0.0.1 {client_port} ".encode()), greeting)

    async def test_header_split_across_packets_and_data_after_it(self):
        port = self.listen()

        def talk(sock):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            header = v2_tcp4()
            for i in range(len(header) - 1):
                sock.sendall(header[i:i + 1])
                time.sleep(0.005)
            sock.sendall(header[-1:] + b"NOOP\r\nWHO\r\n")
            return read_line(sock), read_line(sock), read_line(sock)

        greeting, noop, who = await self.client(port, talk)
        self.assertEqual(greeting, b"220 hello 203.0.113.7 40000 192.0.2.1 25\r\n")
        self.assertEqual(noop, b"250 NOOP\r\n")
        self.assertEqual(who, b"250 203.0.113.7 40000\r\n")

    async def test_untrusted_peer_is_disconnected(self):
        port = self.listen(trusted=("10.0.0.0/8", "::1"))

        def talk(sock):
            try:
                if sock is not None:
                    sock.sendall(b"PROXY TCP4 203.0.113.7 192.0.2.1 40000 25\r\n")
            except OSError:
                pass
            return closed_without_greeting(sock)

        self.assertTrue(await self.client(port, talk))

    async def test_malformed_header_is_disconnected(self):
        port = self.listen()
        for data in (b"EHLO example.test\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"PROXY " + b"9" * 120):
            def talk(sock, data=data):
                sock.sendall(data)
                return closed_without_greeting(sock)
            self.assertTrue(await self.client(port, talk), data)

    async def test_missing_header_times_out(self):
        port = self.listen(timeout=0.3)

        def talk(sock):
            started = time.monotonic()
            closed = closed_without_greeting(sock)
            return closed, time.monotonic() - started

        closed, waited = await self.client(port, talk)
        self.assertTrue(closed)
        self.assertLess(waited, 2.5)

    async def test_starttls_after_the_header_keeps_the_proxied_peer(self):
        port = self.listen(tls=self.tls_options())

        def talk(sock):
            sock.sendall(b"PROXY TCP6 2001:db8::7 2001:db8::1 40000 587\r\n")
            read_line(sock)
            sock.sendall(b"STARTTLS\r\n")
            assert read_line(sock) == b"220 go ahead\r\n"
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls = ctx.wrap_socket(sock, server_hostname="mail.example.test")
            tls.sendall(b"WHO\r\n")
            return read_line(tls)

        self.assertEqual(await self.client(port, talk), b"250 2001:db8::7 40000\r\n")

    async def test_implicit_tls_inside_the_proxy_header(self):
        from twisted.protocols.tls import TLSMemoryBIOFactory
        inner = Factory.forProtocol(Greeter)
        tls = TLSMemoryBIOFactory(self.tls_options(), False, inner)
        listening = reactor.listenTCP(0, ProxyProtocolFactory(tls, ("127.0.0.1",), reactor), interface="127.0.0.1")
        self.addCleanup(listening.stopListening)

        def talk(sock):
            sock.sendall(v2_tcp4(src="198.51.100.9", sport=1234, dport=465))
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            tls_sock = ctx.wrap_socket(sock, server_hostname="mail.example.test")
            return read_line(tls_sock)

        greeting = await self.client(listening.getHost().port, talk)
        self.assertEqual(greeting, b"220 hello 198.51.100.9 1234 192.0.2.1 465\r\n")


class ParseHeaderFuzzTests(unittest.SynchronousTestCase):
    def test_any_bytes_give_a_header_more_or_a_clean_refusal(self):
        from hypothesis import given, settings, strategies as st

        prefixes = st.sampled_from([b"", b"PROXY ", b"PROXY TCP4 ", V2_SIGNATURE, V2_SIGNATURE + b"\x21"])

        @settings(max_examples=400, deadline=None)
        @given(prefixes, st.binary(max_size=300))
        def check(prefix, tail):
            data = prefix + tail
            try:
                header = parse_header(data)
            except ProxyHeaderError:
                return
            if header is not None:
                self.assertLessEqual(header.length, len(data))
                self.assertLessEqual(header.length, 16 + 65535)
            else:
                self.assertLess(len(data), 16 + 65535)

        check()
