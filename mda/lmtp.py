"""mda.lmtp -- the LMTP server (RFC 2033): thin Twisted glue around the shared SMTP
core (`common.smtp.server.SmtpServerConn` in LMTP mode) and mda.delivery.

LHLO, PIPELINING, ENHANCEDSTATUSCODES, 8BITMIME, SMTPUTF8, CHUNKING and SIZE come
from the core. RCPT is answered at once from the user database (550 5.1.1 for an
unknown user); after DATA (or the last BDAT) every accepted recipient is delivered
in a worker thread and gets its own reply, in RCPT order: 250 once the message is
fsync'd in the maildir, or the delivery's error (552 5.2.2 over quota, 550 5.7.1 a
Sieve reject, 452 4.3.1 disk full, 451 4.3.0 anything unexpected).

Works as Postfix's `virtual_transport = lmtp:unix:/run/postroom/lmtp.sock`.

SECURITY: LMTP has no authentication: listen on a unix socket (mode 660, group of
the MTA) or loopback only. Every limit is the core's (line lengths, message size,
recipients, errors); idle sessions are closed after lmtp_timeout; no reply echoes
client input; a failure in delivery never reaches the client beyond its public text.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure

from common import tls as tlsmod
from common.errors import MailError, unexpected
from common.log import get_logger
from common.runner import peer_ip
from common.smtp import replies as R
from common.smtp.replies import Reply, from_error
from common.smtp.server import Close, Message, RcptTo, ServerSettings, SmtpServerConn, StartTLS

from .delivery import Deliverer, DeliveryRequest
from .groupsync import GroupSync

log = get_logger("mda.lmtp")

MAX_BACKLOG = 256 * 1024


class LmtpFactory(Factory):
    def __init__(self, cfg, deliverer: Deliverer, reactor, server_tls=None, name: str = "lmtp", listener=None):
        self.cfg = cfg
        self.deliverer = deliverer
        self.reactor = reactor
        self.server_tls = server_tls
        self.name = name
        self.starttls = listener is not None and listener.tls == "starttls"
        mda = cfg.daemon
        self.settings = ServerSettings(
            hostname=cfg.core.hostname, max_message_size=int(mda.max_message_size),
            max_recipients=mda.lmtp_max_recipients, starttls=self.starttls and server_tls is not None,
            require_helo=True,
            # The client is our own MTA: unknown recipients in a large batch are not an attack.
            max_errors=2 * mda.lmtp_max_recipients + 10)
        self.timeout = float(mda.lmtp_timeout)
        reactor.suggestThreadPoolSize(max(10, mda.consumer.workers * 2))

    def buildProtocol(self, addr):
        p = LmtpSession(self)
        p.factory = self
        return p


class LmtpSession(Protocol):
    """One LMTP connection."""

    def __init__(self, factory: LmtpFactory):
        self.f = factory
        self.conn: SmtpServerConn | None = None
        self.paused = False
        self.closing_when_idle = False
        self._timer = None
        self.log = log

    def connectionMade(self):
        self.log = log.bind(session=f"{self.f.name}:{peer_ip(self.transport)}")
        self.conn = SmtpServerConn(self.f.settings, lmtp=True)
        self.conn.greet()
        self._flush()
        self._arm_timer()

    def connectionLost(self, reason=None):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def graceful_shutdown(self):
        self.closing_when_idle = True
        self._close_if_idle()

    def _close_if_idle(self):
        c = self.conn
        if c is not None and not c.closed and c.waiting is None and not c.in_transaction and not c.receiving_data:
            self._process(c.close(R.SHUTTING_DOWN))

    def _arm_timer(self):
        if self._timer is not None and self._timer.active():
            self._timer.reset(self.f.timeout)
        else:
            self._timer = self.f.reactor.callLater(self.f.timeout, self._timed_out)

    def _timed_out(self):
        c = self.conn
        if c is None or c.closed:
            return
        if c.waiting is not None:   # a delivery in progress is not idleness
            self._arm_timer()
            return
        self.log.info("timeout")
        self._process(c.close(R.TIMEOUT))

    def dataReceived(self, data: bytes):
        c = self.conn
        if c is None:
            return
        self._arm_timer()
        try:
            events = c.receive(data)
        except Exception:
            self.log.failure("LMTP core failed")
            events = c.close(R.LOCAL_ERROR)
        self._process(events)
        if c.waiting is not None and c.backlog > MAX_BACKLOG and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _process(self, events: list) -> None:
        c = self.conn
        i = 0
        while i < len(events):
            ev = events[i]
            i += 1
            if isinstance(ev, RcptTo):
                events.extend(self._rcpt(ev))
            elif isinstance(ev, Message):
                self._flush()
                d = self._deliver_all(ev)
                d.addBoth(self._delivered, ev)
                return
            elif ev.needs_answer:
                events.extend(c.accept())   # MAIL FROM (and VRFY when enabled)
            elif isinstance(ev, StartTLS):
                self._flush()
                tlsmod.start_tls(self.transport, self.f.server_tls, c, self.log)
                c.tls_started()
            elif isinstance(ev, Close):
                self._flush()
                self.transport.loseConnection()
                return
        self._flush()
        if self.closing_when_idle:
            self._close_if_idle()

    def _rcpt(self, ev: RcptTo) -> list:
        try:
            rec, detail = self.f.deliverer.resolve(ev.recipient)
        except MailError as e:
            self.log.info("to=<{rcpt}> refused: {code} {enhanced}", rcpt=ev.recipient, code=e.code, enhanced=e.enhanced)
            return self.conn.reject(from_error(e))
        except Exception as e:  # noqa: BLE001 - a broken user database is a temporary failure
            self.log.failure("user lookup failed")
            return self.conn.reject(from_error(unexpected(e)))
        return self.conn.accept(info=(rec.name, detail))

    def _deliver_all(self, ev: Message) -> defer.Deferred:
        deliverer = self.f.deliverer

        def deliver_one(rcpt) -> Reply:
            user, detail = rcpt.info
            # The message is made durable by a syncfs shared with the other sessions.
            req = DeliveryRequest(message=ev.data, sender=ev.sender, recipient=rcpt.address, user=user, detail=detail,
                                  group=GroupSync(shared=deliverer.shared_sync))
            try:
                report = deliverer.deliver(req)
            except MailError as e:
                self.log.info("to=<{rcpt}> {code} {enhanced} {detail}", rcpt=rcpt.address, code=e.code,
                              enhanced=e.enhanced, detail=e.detail)
                return from_error(e)
            except Exception as e:  # noqa: BLE001 - any unexpected error is a temporary failure
                self.log.failure("to=<{rcpt}> delivery failed", rcpt=rcpt.address)
                return from_error(unexpected(e))
            where = ",".join(report.mailboxes) or ("redirected" if report.redirects else "discarded")
            self.log.info("to=<{rcpt}> delivered: {where}", rcpt=rcpt.address, where=where)
            return Reply(250, "2.0.0", "Delivered")

        return deferToThread(lambda: [deliver_one(r) for r in ev.recipients])

    def _delivered(self, result, ev: Message):
        c = self.conn
        if c is None or c.closed or c.waiting is not ev:
            return None
        if isinstance(result, Failure):
            self.log.failure("delivery failed", result)
            result = [from_error(unexpected(result.value))] * len(ev.recipients)
        events = c.answer_each(result)
        if self.paused and c.backlog <= MAX_BACKLOG:
            self.paused = False
            self.transport.resumeProducing()
        self._process(events)
        return None

    def _flush(self):
        c = self.conn
        if c is not None:
            out = c.data_to_send()
            if out:
                self.transport.write(out)
