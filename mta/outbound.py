"""mta.outbound -- deliver one transaction to one next hop over SMTP (Twisted glue).

`deliver(reactor, hosts, options, transaction, timeouts, ...)` tries the hosts in
order. For each: connect (bounded by the connect timeout), run the sans-IO client
core (`common.smtp.client.SmtpClientConn`) over the connection, arm the RFC 5321
timer the core names after every exchange, and start TLS when the core asks. A
connection failure or a session that failed before any recipient was answered
(4xx greeting, TLS not offered where required...) moves on to the next host.

With a `ConnectionCache`, a session whose transaction ended normally is kept open
for `IDLE_SECONDS` and used for the next transaction to the same destination with
the same TLS level and credentials (as Postfix's connection cache does): no new
connection, greeting, TLS handshake or EHLO. At most `MAX_REUSE` transactions go
over one connection.

The result is a `Delivery`: the core's `Finished` and the host that answered, or a
temporary failure for every recipient when no host could be used.

SECURITY: the peer is untrusted; the core bounds what it reads. TLS certificates
are checked only at the `verify` level (service-identity via common.tls), as in
Postfix; `may` encrypts without checking because the alternative is plain text. A
cached session is only reused under the same TLS level and credentials it was
opened with.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace

from twisted.internet import defer, error
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.protocol import Factory, Protocol

from common.log import get_logger
from common.runner import sessions
from common.smtp.client import (ClientOptions, Finished, Reply, SmtpClientConn, StartTls, Transaction,
                                temp)

log = get_logger("mta.outbound")

IDLE_SECONDS = 2.0
MAX_REUSE = 100


@dataclass
class Delivery:
    finished: Finished
    host: str | None = None          # the name of the host that answered (Remote-MTA)
    address: str | None = None
    reached: bool = True             # False: no host could be used (connect, greeting, TLS)


class _ClientProtocol(Protocol):
    def __init__(self, conn: SmtpClientConn, timeouts, reactor, tls_creator, host):
        self.conn = conn
        self.timeouts = timeouts
        self.reactor = reactor
        self.tls_creator = tls_creator
        self.host = host
        self.done: defer.Deferred = defer.Deferred()
        self.timer = None
        self.on_idle = None          # the cache's hook, called when a transaction ended
        self.on_lost = None

    def connectionMade(self):
        sessions.add(self)      # a SIGTERM lets the transaction finish (graceful_shutdown)
        self._arm()

    def graceful_shutdown(self):
        """SIGTERM: an idle session says QUIT now; a busy one ends after its transaction."""
        if self.conn.idle:
            self.close()

    def _cancel_timer(self):
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _arm(self):
        self._cancel_timer()
        if self.conn.finished is None:
            self.timer = self.reactor.callLater(self.conn.timeout(self.timeouts), self._timeout)

    def _timeout(self):
        self.timer = None
        self._handle(self.conn.timed_out())
        if self.transport is not None:
            self.transport.abortConnection()

    def dataReceived(self, data: bytes):
        self._handle(self.conn.receive(data))

    def run(self, transaction: Transaction) -> defer.Deferred:
        """Another transaction on this idle session."""
        self._cancel_timer()
        self.done = defer.Deferred()
        self._handle(self.conn.new_transaction(transaction))
        return self.done

    def close(self):
        self._cancel_timer()
        self.conn.quit()
        self._write_output()
        if self.transport is not None:
            self.transport.loseConnection()

    def _write_output(self):
        out = self.conn.take_output()
        if out and self.transport is not None:
            self.transport.write(out)

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
        self._write_output()
        if self.conn.finished is not None:
            self._cancel_timer()
            if not (self.conn.idle and self.on_idle is not None and not sessions.stopping
                    and self.on_idle(self)):
                if self.conn.idle:
                    self.conn.quit()
                    self._write_output()
                self.transport.loseConnection()
            if not self.done.called:
                self.done.callback(self.conn.finished)
        else:
            self._arm()

    def connectionLost(self, reason):
        sessions.remove(self)
        self._cancel_timer()
        if self.on_lost is not None:
            self.on_lost(self)
        why = "lost connection"
        if reason.check(error.ConnectionDone, error.ConnectionLost):
            why = "connection closed by the server"
        elif reason.value is not None:
            why = f"connection failed: {reason.getErrorMessage()[:200]}"
        self.conn.connection_lost(why)
        if not self.done.called:
            self.done.callback(self.conn.finished)


class ConnectionCache:
    """Idle sessions by destination key; see the module docstring."""

    def __init__(self, reactor, max_per_key: int = 20):
        self.reactor = reactor
        self.max_per_key = max_per_key
        self.idle: dict[tuple, list[_ClientProtocol]] = defaultdict(list)
        self.timers: dict[int, object] = {}

    def take(self, key: tuple) -> _ClientProtocol | None:
        while self.idle.get(key):
            proto = self.idle[key].pop()
            timer = self.timers.pop(id(proto), None)
            if timer is not None and timer.active():
                timer.cancel()
            if proto.conn.idle and proto.transport is not None and proto.conn.transactions < MAX_REUSE:
                return proto
            proto.close()
        return None

    def offer(self, key: tuple, proto: _ClientProtocol) -> bool:
        """Keep proto for reuse; False when it should be closed instead."""
        if proto.conn.transactions >= MAX_REUSE or len(self.idle[key]) >= self.max_per_key:
            return False
        self.idle[key].append(proto)
        self.timers[id(proto)] = self.reactor.callLater(IDLE_SECONDS, self._expire, key, proto)
        proto.on_lost = lambda p, key=key: self._forget(key, p)
        return True

    def _expire(self, key, proto):
        self.timers.pop(id(proto), None)
        self._forget(key, proto)
        proto.close()

    def _forget(self, key, proto):
        if proto in self.idle.get(key, ()):
            self.idle[key].remove(proto)
        timer = self.timers.pop(id(proto), None)
        if timer is not None and timer.active():
            timer.cancel()

    def close_all(self):
        for key in list(self.idle):
            while self.idle[key]:
                proto = self.idle[key].pop()
                self._forget(key, proto)
                proto.close()


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
            tls_creator_for=None, bind: tuple[str | None, str | None] = (None, None),
            cache: ConnectionCache | None = None, cache_key: tuple | None = None, log_ids: dict | None = None):
    """Try each host in turn; Deferred[Delivery]. Never errbacks: any failure becomes a
    temporary reply for the recipients. log_ids (the message's queue_id and trace_id)
    go into every log line."""
    ids = log_ids or {}
    if cache is not None and cache_key is not None:
        key = (*cache_key, options.tls, options.username)
        proto = cache.take(key)
        if proto is not None:
            finished = yield proto.run(transaction)
            if not finished.try_next_host:
                return Delivery(finished, proto.host.name, proto.host.address)
            # The cached session had gone stale: fall through to a fresh connection.
        options = replace(options, reuse=True)
    last: Reply | None = None
    last_host = None
    attempts = [(host, options) for host in hosts]
    while attempts:
        host, options = attempts.pop(0)
        conn = SmtpClientConn(replace(options), transaction)
        proto = _ClientProtocol(conn, timeouts, reactor,
                                lambda h=host: tls_creator_for(h.name) if tls_creator_for else None, host)
        if cache is not None and cache_key is not None:
            proto.on_idle = lambda p, key=key: cache.offer(key, p)
        try:
            yield _endpoint(reactor, host.address, host.port, timeouts.connect, bind).connect(_OneShot(proto))
        except Exception as e:
            last = temp(f"connect to {host.name}[{host.address}]:{host.port}: {_short(e)}", "4.4.1", "connect")
            last_host = host
            log.info("connect to {host}[{address}]:{port} failed: {why}", **ids, host=host.name,
                     address=host.address, port=host.port, why=_short(e))
            continue
        try:
            finished = yield proto.done
        except Exception as e:  # a bug in glue or core: never lose the recipients
            finished = conn.finished or conn.connection_lost(f"internal error: {e}")[0]
        if finished.tls_failed and options.tls == "may":
            # Opportunistic TLS that fails is retried in plain text, as Postfix does:
            # the alternative to plain text here is no delivery at all.
            log.info("TLS with {host}[{address}] failed; trying again without TLS", **ids, host=host.name,
                     address=host.address)
            attempts.insert(0, (host, replace(options, tls="none")))
            continue
        if finished.try_next_host:
            last = finished.session_reply
            last_host = host
            log.info("{host}[{address}] said {reply}; trying the next host", **ids, host=host.name,
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
