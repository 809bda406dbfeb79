"""common.netio -- answers written at once, without Nagle's delay.

The daemons answer requests with small writes. Twisted's `transport.write()` only
buffers and asks the reactor to watch for writability, so each answer costs two
epoll_ctl calls and a reactor turn before its send(); and with Nagle's algorithm
on, an answer written while the previous one is unacknowledged waits for the
client's delayed ACK (40 ms on Linux) -- which a client that pipelines commands
and reads every answer before sending more hits on every batch.

`socket_of(transport)` finds the plain TCP connection under pass-through wrappers
(the runner's session tracking); `write_now()` sends on it at once when nothing
waits in Twisted's buffer and hands the rest to `transport.write()`, so the order
holds; `no_delay()` turns Nagle off. TLS connections always use write().

SECURITY: nothing here reads or interprets data; errors of send() are left for
Twisted to find and report through write().
"""

from __future__ import annotations

from twisted.internet import tcp
from twisted.internet.interfaces import ISSLTransport
from twisted.protocols.policies import ProtocolWrapper


def socket_of(transport) -> tcp.Connection | None:
    """The plain TCP connection under pass-through wrappers, or None when there is
    none or TLS is in the way."""
    while isinstance(transport, ProtocolWrapper) and not ISSLTransport.providedBy(transport):
        transport = transport.transport
    if isinstance(transport, tcp.Connection) and not transport.TLS:
        return transport
    return None


def write_now(transport, conn: tcp.Connection | None, data: bytes) -> None:
    """transport.write(data), but sent at once on conn (from socket_of) when nothing
    waits in Twisted's buffer; what is not sent at once (a full socket buffer, an
    error for Twisted to find) goes through write() after what was sent."""
    sent = 0
    if (conn is not None and conn.connected and not conn.disconnecting and not conn._writeDisconnected
            and not conn.dataBuffer and not conn._tempDataBuffer):
        try:
            sent = conn.socket.send(data)
        except OSError:
            sent = 0  # EAGAIN, or an error Twisted reports through write()
    if sent < len(data):
        transport.write(data[sent:] if sent else data)


def no_delay(transport) -> None:
    """TCP_NODELAY where the transport is TCP (answers are small and each answers a
    request: Nagle's algorithm only delays them)."""
    set_nodelay = getattr(transport, "setTcpNoDelay", None)
    if set_nodelay is not None:
        try:
            set_nodelay(True)
        except Exception:  # noqa: BLE001 -- a unix socket or a closed connection: nothing to do
            pass
