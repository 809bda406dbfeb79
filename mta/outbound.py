"""mta.outbound -- deliver one transaction to one next hop over SMTP (Twisted glue).

`deliver(reactor, hosts, options, transaction, timeouts, ...)` tries the hosts in
order. For each: connect (bounded by the connect timeout), run the sans-IO client
core (`common.smtp.client.SmtpClientConn`) over the connection, arm the RFC 5321
timer the core names after every exchange, and start TLS when the core asks. A
connection failure or a session that failed before any recipient was answered
(4xx greeting, TLS not offered where required...) moves on to the next host.

The result is a `Delivery`: the core's `Finished` and the host that answered, or a
temporary failure for every recipient when no host could be used.

SECURITY: the peer is untrusted; the core bounds what it reads. TLS certificates
are checked only at the `verify` level (service-identity via common.tls), as in
Postfix; `may` encrypts without checking because the alternative is plain text.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from common.log import get_logger
from common.smtp.client import (ClientOptions, Finished, Reply, SmtpClientConn, StartTls, Transaction,
                                temp)

log = get_logger("mta.outbound")


@dataclass
class Delivery:
    finished: Finished
    host: str | None = None          # the name of the host that answered (Remote-MTA)
    address: str | None = None
    reached: bool = True             # False: no host could be used (connect, greeting, TLS)


class _ClientProtocol(Protocol):
    def __init__(self, conn: SmtpClientConn, timeouts, reactor, tls_creator):
        self.conn = conn
        self.timeouts = timeouts
        self.reactor = reactor
        self.tls_creator = tls_creator
        self.done: defer.Deferred = defer.Deferred()
        self.timer = None

    def connectionMade(self):
        self._arm()

    def _arm(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        if self.conn.finished is None:
            self.timer = self.reactor.callLater(self.conn.timeout(self.timeouts), self._timeout)

    def _timeout(self):
        self.timer = None
        self._handle(self.conn.timed_out())
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes):
        self._handle(self.conn.receive(data))

    def _handle(self, events):
        for ev in events:
            if isinstance(ev, StartTls):
                try:
                    self.transport.startTLS(self.tls_creator())
                except Exception as e:  # a bad CA file, a missing host name
                    self._handle(self.conn.connection_lost(f"cannot start TLS: {e}"))
                    self.transport.abortConnection()
                    return
                self.conn.start_tls_done()
        out = self.conn.take_output()
        if out:
            self.transport.write(out)
        if self.conn.finished is not None:
            if self.timer is not None and self.timer.active():
                self.timer.cancel()
            self.transport.loseConnection()
            if not self.done.called:
                self.done.callback(self.conn.finished)
        else:
            self._arm()

    def connectionLost(self, reason):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        why = "lost connection"
        if reason.check(error.ConnectionDone, error.ConnectionLost):
            why = "connection closed by the server"
        elif reason.value is not None:
            why = f"connection failed: {reason.getErrorMessage()[:200]}"
        self.conn.connection_lost(why)
        if not self.done.called:
            self.done.callback(self.conn.finished)


class _OneShot(Factory):
    noisy = False      # no "Starting factory" line per connection

    def __init__(self, proto):
        self.proto = proto

    def buildProtocol(self, addr):
        return self.proto


def _endpoint(reactor, address: str, port: int, timeout: float, bind: tuple[str | None, str | None]):
    if ":" in address:
        src = (bind[1], 0) if bind[1] else None
        return TCP6ClientEndpoint(reactor, address, port, timeout=timeout, bindAddress=src)
    src = (bind[0], 0) if bind[0] else None
    return TCP4ClientEndpoint(reactor, address, port, timeout=timeout, bindAddress=src)


@defer.inlineCallbacks
def deliver(reactor, hosts, options: ClientOptions, transaction: Transaction, timeouts,
            tls_creator_for=None, bind: tuple[str | None, str | None] = (None, None)):
    """Try each host in turn; Deferred[Delivery]. Never errbacks: any failure becomes a
    temporary reply for the recipients."""
    last: Reply | None = None
    last_host = None
    for host in hosts:
        conn = SmtpClientConn(replace(options), transaction)
        proto = _ClientProtocol(conn, timeouts, reactor,
                                lambda h=host: tls_creator_for(h.name) if tls_creator_for else None)
        try:
            yield _endpoint(reactor, host.address, host.port, timeouts.connect, bind).connect(_OneShot(proto))
        except Exception as e:
            last = temp(f"connect to {host.name}[{host.address}]:{host.port}: {_short(e)}", "4.4.1", "connect")
            last_host = host
            log.info("connect to {host}[{address}]:{port} failed: {why}", host=host.name,
                     address=host.address, port=host.port, why=_short(e))
            continue
        try:
            finished = yield proto.done
        except Exception as e:  # a bug in glue or core: never lose the recipients
            finished = conn.connection_lost(f"internal error: {e}")[0] if not conn.finished else conn.finished
        if finished.try_next_host:
            last = finished.session_reply
            last_host = host
            log.info("{host}[{address}] said {reply}; trying the next host", host=host.name,
                     address=host.address, reply=finished.session_reply.diagnostic())
            continue
        return Delivery(finished, host.name, host.address)
    if last is None:
        last = temp("no host to deliver to", "4.4.4", "connect")
    replies = [last] * len(transaction.recipients)
    return Delivery(Finished(replies, try_next_host=False, session_reply=last),
                    last_host.name if last_host else None, last_host.address if last_host else None,
                    reached=False)


def _short(e: Exception) -> str:
    text = getattr(e, "getErrorMessage", None)
    s = text() if text else str(e) or type(e).__name__
    return s.replace("\n", " ")[:200]
