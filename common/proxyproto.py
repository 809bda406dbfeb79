"""common.proxyproto -- HAProxy's PROXY protocol, versions 1 and 2, for any listener.

A load balancer in front of a daemon opens the connection and first sends one header
naming the real client; only then does the client's own conversation begin.
`ProxyProtocolFactory` wraps a daemon's factory: its protocol reads that header, and
only then builds the daemon's protocol, whose ``transport.getPeer()`` returns the
real client address (and ``getHost()`` the address the client connected to on the
proxy; a LOCAL or UNKNOWN header leaves both as they are). The transport itself
answers so, which keeps it true after STARTTLS. Nothing is sent to the peer before the header has arrived, so
server-speaks-first protocols (SMTP, IMAP, POP3) do not greet the proxy too early
(Twisted's own haproxy endpoint does exactly that). Bytes after the header are
passed on unchanged; implicit TLS, if any, is wrapped inside (the header comes
before the TLS handshake).

`parse_header(buffer)` is the sans-IO part: bytes in, `ProxyHeader` (or None when it
needs more) out.

SECURITY: the header is accepted only from peers in `trusted` (addresses or CIDR
networks); anyone else is disconnected at once and logged, since believing their
header would let them choose the address that policy, logs and Received headers
see. Parsing is strict: version 1 is one line of at most 107 bytes with single
spaces, valid addresses and ports; version 2 has a fixed signature, a known
command and family, and a length that fits the addresses. A peer that sends no
complete header within `timeout` seconds is disconnected. A LOCAL command (v2) or
UNKNOWN (v1) keeps the real peer address (health checks).
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.protocol import Factory, Protocol

from common.dns import plain_ip
from common.log import get_logger

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest version 1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}  # INET, INET6, UNIX

log = get_logger("proxyproto")


class ProxyHeaderError(Exception):
    """A malformed PROXY header: the connection is closed."""


@dataclass(frozen=True)
class ProxyHeader:
    """A complete header. `source`/`destination` are None for LOCAL, UNKNOWN or UNIX."""

    version: int
    length: int  # bytes the header took; what follows belongs to the wrapped protocol
    source: tuple[str, int] | None = None
    destination: tuple[str, int] | None = None


def parse_header(buffer: bytes) -> ProxyHeader | None:
    """Parse a PROXY v1 or v2 header at the start of buffer.

    Returns None while more bytes are needed; raises ProxyHeaderError as soon as the
    bytes cannot become a valid header."""
    if buffer[:1] == b"P" or not buffer:
        if not V1_PREFIX.startswith(buffer[:len(V1_PREFIX)]):
            raise ProxyHeaderError("neither a PROXY v1 nor a v2 header")
        return _parse_v1(buffer)
    if not V2_SIGNATURE.startswith(buffer[:len(V2_SIGNATURE)]):
        raise ProxyHeaderError("neither a PROXY v1 nor a v2 header")
    return _parse_v2(buffer)


def _parse_v1(buffer: bytes) -> ProxyHeader | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX or b"\n" in buffer[:V1_MAX]:
            raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
        return None
    line = buffer[:end]
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not ASCII") from None
    parts = text.split(" ")
    if len(parts) >= 2 and parts[1] == "UNKNOWN":
        return ProxyHeader(1, end + 2)
    if len(parts) != 6 or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError("PROXY v1 line malformed")
    _, family, src, dst, sport, dport = parts
    version_wanted = 4 if family == "TCP4" else 6
    source = (_v1_address(src, version_wanted), _v1_port(sport))
    destination = (_v1_address(dst, version_wanted), _v1_port(dport))
    return ProxyHeader(1, end + 2, source, destination)


def _v1_address(text: str, version: int) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ProxyHeaderError("PROXY v1 address invalid") from None
    if address.version != version or "%" in text:
        raise ProxyHeaderError("PROXY v1 address does not match its family")
    return str(address)


def _v1_port(text: str) -> int:
    if not text.isdigit() or not text.isascii() or (len(text) > 1 and text[0] == "0") or int(text) > 65535:
        raise ProxyHeaderError("PROXY v1 port invalid")
    return int(text)


def _parse_v2(buffer: bytes) -> ProxyHeader | None:
    if len(buffer) < V2_FIXED:
        return None
    version_command, family_transport, length = struct.unpack("!BBH", buffer[12:16])
    if version_command >> 4 != 2:
        raise ProxyHeaderError("PROXY v2 version nibble is not 2")
    command = version_command & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError("PROXY v2 command unknown")
    total = V2_FIXED + length
    family, transport = family_transport >> 4, family_transport & 0x0F
    if command == 1:
        if family not in (0, 1, 2, 3) or transport not in (0, 1, 2):
            raise ProxyHeaderError("PROXY v2 address family or transport unknown")
        if family and transport != 1:
            raise ProxyHeaderError("PROXY v2 header for a non-stream connection")
        if family and length < V2_ADDRESS_SIZES[family]:
            raise ProxyHeaderError("PROXY v2 length too short for its addresses")
    if len(buffer) < total:
        return None
    if command == 0 or family in (0, 3):  # LOCAL, UNSPEC or UNIX: keep the real peer
        return ProxyHeader(2, total)
    body = buffer[V2_FIXED:total]
    if family == 1:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        source = (str(ipaddress.IPv4Address(src)), sport)
        destination = (str(ipaddress.IPv4Address(dst)), dport)
    else:
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        source = (str(ipaddress.IPv6Address(src)), sport)
        destination = (str(ipaddress.IPv6Address(dst)), dport)
    return ProxyHeader(2, total, source, destination)


def _networks(trusted: tuple[str, ...]):
    return tuple(ipaddress.ip_network(t, strict=False) for t in trusted)


def _is_trusted(host: str, networks) -> bool:
    address = plain_ip(host)
    if address is None:
        return False
    return any(address in net for net in networks if net.version == address.version)


def _address(host: str, port: int):
    return (IPv6Address if ":" in host else IPv4Address)("TCP", host, port)


class ProxyProtocol(Protocol):
    """Reads the PROXY header, then hands the connection to the wrapped protocol."""

    def __init__(self, factory: "ProxyProtocolFactory"):
        self.factory = factory
        self.buffer = b""
        self.wrapped: Protocol | None = None
        self._timer = None
        self._closed = False

    def connectionMade(self) -> None:
        peer = self.transport.getPeer()
        host = getattr(peer, "host", None)
        if host is None or not _is_trusted(host, self.factory.networks):
            log.warn("PROXY header refused from untrusted peer {peer}; closing", peer=str(host or peer))
            self._close()
            return
        self._timer = self.factory.reactor.callLater(self.factory.timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        log.warn("no PROXY header from {peer} within {timeout}s; closing",
                 peer=self.transport.getPeer().host, timeout=self.factory.timeout)
        self._close()

    def dataReceived(self, data: bytes) -> None:
        if self.wrapped is not None:
            self.wrapped.dataReceived(data)
            return
        if self._closed:
            return
        self.buffer += data
        try:
            header = parse_header(self.buffer)
        except ProxyHeaderError as e:
            log.warn("bad PROXY header from {peer}: {error}; closing", peer=self.transport.getPeer().host, error=str(e))
            self._close()
            return
        if header is None:
            return
        self._cancel_timer()
        rest, self.buffer = self.buffer[header.length:], b""
        self._hand_over(header, rest)

    def _hand_over(self, header: ProxyHeader, rest: bytes) -> None:
        transport = self.transport
        if header.source is not None:
            # The wrapped protocol, and any TLS layer started later on this transport,
            # ask the transport itself: make it answer with the proxied addresses.
            peer = _address(*header.source)
            host = _address(*header.destination)
            transport.getPeer = lambda: peer
            transport.getHost = lambda: host
            transport.proxied = True
        wrapped = self.factory.wrapped_factory.buildProtocol(transport.getPeer())
        if wrapped is None:
            transport.loseConnection()
            return
        self.wrapped = wrapped
        wrapped.makeConnection(transport)
        if rest:
            wrapped.dataReceived(rest)

    def _close(self) -> None:
        self._closed = True
        self.buffer = b""
        self._cancel_timer()
        self.transport.abortConnection()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def connectionLost(self, reason) -> None:
        self._cancel_timer()
        if self.wrapped is not None:
            self.wrapped.connectionLost(reason)
            self.wrapped = None


class ProxyProtocolFactory(Factory):
    """Wrap wrapped_factory so that each connection starts with a PROXY header from a
    peer in trusted (addresses or CIDR networks)."""

    protocol = ProxyProtocol

    def __init__(self, wrapped_factory: Factory, trusted: tuple[str, ...], reactor=None, timeout: float = 10):
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.wrapped_factory = wrapped_factory
        self.networks = _networks(tuple(trusted))
        self.reactor = reactor
        self.timeout = timeout

    def doStart(self) -> None:
        self.wrapped_factory.doStart()
        super().doStart()

    def doStop(self) -> None:
        self.wrapped_factory.doStop()
        super().doStop()

    def buildProtocol(self, addr) -> ProxyProtocol:
        proto = self.protocol(self)
        return proto
