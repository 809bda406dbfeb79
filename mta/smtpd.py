"""mta.smtpd -- the Twisted glue around common.smtp.server for postroom-mta.

One `SmtpSession` per connection feeds bytes to the sans-IO core and answers its
events: MAIL and RCPT from mta.policy (and the checks of mta.checks on listeners
that run them), AUTH from common.auth, and a finished message by writing it to the
spool through mta.receiver (group commit) before the 250 with the queue ID.
Answers may be asynchronous; the core keeps replies in command order meanwhile and
reading pauses when too much pipelined input waits.

At connect the client's forward-confirmed reverse DNS name is looked up
(common.dns, cached; the greeting waits for it at most
`limits.reverse_dns_timeout`) for the Received header, the spool and the log.
Connections in total and per client address, and the per-address message rate,
are counted for all receiving processes together (mta.clientlimits); the command
and data timeouts of RFC 5321 4.5.3.2 are per session. Authentication-Results
fields claiming our authserv-id and our quarantine marker are removed from every
message received (by mta.checks where the checks run, here otherwise).

SECURITY: all input is from the network. Any unexpected error becomes 451 4.3.0
(or 421 and a close outside a command) and is logged; the client never sees a
traceback. Passwords and message bodies are never logged.
"""

from __future__ import annotations

from twisted.internet import defer, tcp
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from common import tls as tlsmod
from common.config.mta import SmtpListener
from common.errors import MailError, unexpected
from common.log import get_logger
from common.netio import no_delay, socket_of, write_now
from common.runner import peer_ip, secure_transport
from common.smtp import replies as R
from common.smtp.server import (
    Authenticate, Close, MailFrom, Message, RcptTo, Reply, ServerSettings, SmtpServerConn, StartTLS, Verify,
    valid_address,
)
from common.spool import Envelope, Recipient

from . import clientlimits
from .checks.authresults import remove_fields
from .policy import RecipientPolicy
from .received import (
    count_received, header_section, iana_cipher_name, protocol_name, received_header, submission_headers,
)

log = get_logger("postroom.mta.smtpd")

TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_FROM_YOU = Reply(421, "4.7.0", "Too many connections from your address, try again later")
RATE_LIMITED = Reply(450, "4.7.1", "Too many messages from your address, try again later")
NO_SUCH_USER = Reply(550, "5.1.1", "No such user here")
_ADMIT_REFUSALS = {
    clientlimits.TOO_MANY_CONNECTIONS: TOO_MANY_CONNECTIONS,
    clientlimits.TOO_MANY_FROM_CLIENT: TOO_MANY_FROM_YOU,
    clientlimits.TABLE_FULL: TOO_MANY_CONNECTIONS,
}
MAIL_LOOP = Reply(554, "5.4.6", "Too many Received headers: mail loop")
AUTH_TEMPORARY = Reply(454, "4.7.0", "Temporary authentication failure")

#: Pause reading when this much pipelined input waits behind an unanswered command.
MAX_BACKLOG = 256 * 1024


def _reply(err: MailError) -> Reply:
    return Reply(err.code, err.enhanced, err.public)


class ReceiverContext:
    """What every session of this process shares."""

    def __init__(self, cfg, reactor, writer, policy: RecipientPolicy, server_tls=None,
                 authenticator=None, checks=None, client_limits: clientlimits.ClientLimits | None = None,
                 resolver=None):
        self.cfg = cfg
        self.core = cfg.core
        self.mta = cfg.daemon
        self.limits = cfg.daemon.limits
        self.reactor = reactor
        self.writer = writer
        self.policy = policy
        self.server_tls = server_tls
        self.authenticator = authenticator
        self.checks = checks
        self.client_limits = client_limits or clientlimits.ClientLimits(
            self.limits, clientlimits.SharedTable.private())
        #: looks up client names at connect (None or a timeout of 0: no lookup)
        self.resolver = resolver
        self.name_timeout = float(self.limits.reverse_dns_timeout)
        checks_cfg = cfg.daemon.checks
        self.authserv_id = checks_cfg.authserv_id or self.core.hostname
        self.quarantine_header = checks_cfg.dmarc.quarantine_header
        self._ours = (b"authentication-results", self.quarantine_header.lower().encode("ascii", "replace"))
        self._settings: dict[str, ServerSettings] = {}

    def settings(self, name: str, listener: SmtpListener) -> ServerSettings:
        s = self._settings.get(name)
        if s is None:
            lim = self.limits
            s = ServerSettings(
                hostname=self.core.hostname,
                max_command_line=int(lim.max_command_line), max_text_line=int(lim.max_text_line),
                max_message_size=int(lim.max_message_size), max_recipients=lim.max_recipients,
                max_errors=lim.max_errors, max_commands_before_mail=lim.max_commands_before_mail,
                starttls=listener.tls == "starttls",
                auth_mechanisms=("PLAIN", "LOGIN") if listener.auth_on and self.authenticator else (),
                require_tls=listener.tls_required, require_auth=listener.auth_required,
                vrfy=self.mta.recipients.vrfy)
            self._settings[name] = s
        return s

    def admit(self, ip: str) -> Reply | None:
        """Count a new connection (all receiving processes together), or the refusal."""
        outcome = self.client_limits.admit(ip)
        if outcome is clientlimits.TABLE_FULL:
            log.warn("client limits table full: refusing {ip} for now", ip=ip)
        return _ADMIT_REFUSALS.get(outcome) if outcome is not None else None

    def release(self, ip: str) -> None:
        self.client_limits.release(ip)

    def rate_exceeded(self, ip: str) -> bool:
        """Count one message from ip; True if it is over the per-minute limit."""
        return not self.client_limits.message(ip)

    def strip_ours(self, message: bytes) -> tuple[bytes, int]:
        """message without Authentication-Results fields claiming our authserv-id and
        without our quarantine marker (they came from outside, so they are forged)."""
        head = header_section(message).lower()
        if not any(name in head for name in self._ours):
            return message, 0  # most mail: a search, no parsing
        return remove_fields(message, self.authserv_id, also=(self.quarantine_header,))


class SmtpFactory(Factory):
    def __init__(self, ctx: ReceiverContext, name: str, listener: SmtpListener):
        self.ctx = ctx
        self.name = name
        self.listener = listener

    def buildProtocol(self, addr):
        return SmtpSession(self.ctx, self.name, self.listener)


class SmtpSession(Protocol):
    """One SMTP connection."""

    def __init__(self, ctx: ReceiverContext, name: str, listener: SmtpListener):
        self.ctx = ctx
        self.listener_name = name
        self.listener = listener
        self.conn: SmtpServerConn | None = None
        self.ip = "unknown"
        self.client_name: str | None = None  # forward-confirmed reverse DNS
        self._direct: tcp.Connection | None = None
        self.admitted = False
        self.paused = False
        self.closing_when_idle = False
        self.check_info: dict | None = None
        self.greeted = True          # False while a connect-time check decides the greeting
        self.early: list[bytes] = []  # what the client sent before it
        self._timer = None
        self._last = 0.0

    # -- connection

    def connectionMade(self):
        t = self.transport
        self.ip = peer_ip(t)
        self.client_port = getattr(t.getPeer(), "port", None)
        self.log = log.bind(session=f"{self.listener_name}:{self.ip}:{self.client_port}")
        refusal = self.ctx.admit(self.ip)
        if refusal is not None:
            t.write(refusal.encode())
            t.loseConnection()
            return
        self.admitted = True
        self.trusted = self.ctx.policy.trusted_client(self.ip)
        self._direct = socket_of(t)  # replies go straight to this socket (write_now)
        no_delay(t)  # replies are small and answer a request: no Nagle delay
        secure = secure_transport(t)
        settings = self.ctx.settings(self.listener_name, self.listener)
        self.conn = SmtpServerConn(settings, tls=secure, auth_allowed=self._auth_allowed(secure))
        self._last = self.ctx.reactor.seconds()
        self._schedule(self.ctx.limits.command_timeout)
        waits = []
        if self.ctx.resolver is not None and self.ctx.name_timeout > 0:
            waits.append(self._look_up_name())
        if self._checks_active():
            waits.append(self.ctx.checks.connect(self.ip))
        waits = [d for d in waits if not (d.called and d.result is None)]  # a cached name: no wait
        if waits:
            self.greeted = False
            self._answer(defer.gatherResults(waits), self._greet_after_check)
        else:
            self.conn.greet()
            self._flush()

    def _look_up_name(self) -> defer.Deferred:
        """The client's verified name into self.client_name; fires with None when it is
        known or after limits.reverse_dns_timeout, whichever comes first."""
        done = defer.Deferred()
        timer = None

        def found(name):
            if isinstance(name, str):
                self.client_name = name  # a late answer still counts for what follows
            if timer is not None and timer.active():
                timer.cancel()
            if not done.called:
                done.callback(None)

        lookup = self.ctx.resolver.verified_name(self.ip)
        lookup.addCallbacks(found, lambda _failure: found(None))
        if not done.called:
            timer = self.ctx.reactor.callLater(self.ctx.name_timeout, found, None)
        return done

    def _greet_after_check(self, results):
        result = next((r for r in results if r is not None), None) if isinstance(results, list) else results
        error = result if isinstance(result, MailError) else None
        if isinstance(result, BaseException) and error is None:
            error = unexpected(result)
        self.conn.greet(_reply(error) if error is not None else None)
        self.greeted = True
        early, self.early = self.early, []
        # A client that talked before the greeting is answered after it, in order.
        return self.conn.receive(b"".join(early)) if early else []

    def connectionLost(self, reason=None):
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._release()
        if self.conn is not None and not self.conn.closed:
            self.conn.close()

    def _release(self):
        """Take this connection off the client limits (once)."""
        if self.admitted:
            self.admitted = False
            self.ctx.release(self.ip)

    def graceful_shutdown(self):
        """SIGTERM: close now if idle, else after the transaction in flight."""
        self.closing_when_idle = True
        self._close_if_idle()

    def _close_if_idle(self):
        c = self.conn
        if c is not None and not c.closed and c.waiting is None and not c.in_transaction and not c.receiving_data:
            self._process(c.close(R.SHUTTING_DOWN))

    # -- timeouts

    def _schedule(self, delay: float):
        self._timer = self.ctx.reactor.callLater(delay, self._tick)

    def _tick(self):
        c = self.conn
        if c is None or c.closed:
            return
        lim = self.ctx.limits
        limit = float(lim.data_timeout if c.receiving_data else lim.command_timeout)
        idle = self.ctx.reactor.seconds() - self._last
        if c.waiting is not None or idle < limit:
            self._schedule(max(1.0, limit - idle) if c.waiting is None else limit)
            return
        self.log.info("timeout after {idle:.0f}s", idle=idle)
        self._process(c.close(R.TIMEOUT))

    # -- input

    def dataReceived(self, data: bytes):
        c = self.conn
        if c is None:
            return
        self._last = self.ctx.reactor.seconds()
        if not self.greeted:
            self.early.append(data)
            if sum(map(len, self.early)) > MAX_BACKLOG:
                self.transport.loseConnection()
            return
        try:
            events = c.receive(data)
        except Exception:
            self.log.failure("SMTP core failed")
            events = c.close(R.LOCAL_ERROR)
        self._process(events)
        if c.waiting is not None and c.backlog > MAX_BACKLOG and not self.paused:
            self.paused = True
            self.transport.pauseProducing()

    def _process(self, events: list) -> None:
        """Act on events until one needs an asynchronous answer."""
        c = self.conn
        i = 0
        while i < len(events):
            ev = events[i]
            i += 1
            if ev.needs_answer:
                try:
                    result = self._dispatch(ev)
                except MailError as e:
                    result = e
                except Exception as e:
                    self.log.failure("answering {event} failed", event=type(ev).__name__)
                    result = unexpected(e)
                if isinstance(result, defer.Deferred):
                    self._flush()
                    result.addBoth(self._async_answer, ev)
                    return
                events.extend(self._apply(ev, result))
            elif isinstance(ev, StartTLS):
                self._flush()
                self._direct = None  # from now on everything goes through TLS
                tlsmod.start_tls(self.transport, self.ctx.server_tls, c, self.log)
                c.tls_started(auth_allowed=self._auth_allowed(True))
            elif isinstance(ev, Close):
                self._flush()
                self.transport.loseConnection()
                self._release()  # now, not when the socket is gone: the client may be back already
                return
        self._flush()
        if self.closing_when_idle:
            self._close_if_idle()

    def _async_answer(self, result, ev):
        if self.conn is None or self.conn.closed or self.conn.waiting is not ev:
            return None  # the connection went away meanwhile
        if isinstance(result, Failure):
            exc = result.value
            if isinstance(exc, MailError):
                result = exc
            else:
                self.log.failure("answering {event} failed", result, event=type(ev).__name__)
                result = unexpected(exc)
        try:
            events = self._apply(ev, result)
        except Exception as e:
            self.log.failure("applying an answer failed")
            events = self.conn.reject(_reply(unexpected(e))) if self.conn.waiting is ev else self.conn.close(R.LOCAL_ERROR)
        if self.paused and self.conn.backlog <= MAX_BACKLOG:
            self.paused = False
            self.transport.resumeProducing()
        self._process(events)
        return None

    def _answer(self, d, then):
        """Connect-time check: run then(result) when d fires, then flush."""
        def done(result):
            if isinstance(result, Failure):
                result = result.value
            if self.conn is not None and not self.conn.closed:
                self._process(then(result))
        d.addBoth(done)

    def _apply(self, ev, result) -> list:
        """Give the core the answer: a MailError rejects; anything else accepts."""
        c = self.conn
        if isinstance(result, MailError):
            if isinstance(ev, Authenticate) and not result.temporary:
                return c.reject(R.AUTH_FAILED)
            return c.reject(_reply(result))
        if isinstance(result, Reply):
            return c.reject(result)
        if isinstance(ev, RcptTo):
            return c.accept(info=result)
        if isinstance(ev, Message):
            return c.accept(f"OK queued as {result}")
        if isinstance(ev, Verify):
            return c.accept(result if isinstance(result, str) else None)
        if isinstance(ev, Authenticate):
            events = c.accept()
            c.auth_user = result.name
            self.log.info("authenticated as {user}", user=result.name)
            return events
        return c.accept()

    def _flush(self):
        c = self.conn
        if c is not None:
            out = c.data_to_send()
            if out:
                write_now(self.transport, self._direct, out)

    # -- policy

    def _auth_allowed(self, secure: bool) -> bool:
        a = self.ctx.authenticator
        return bool(a is not None and self.listener.auth_on and a.plaintext_allowed(secure, self.ip))

    def _checks_active(self) -> bool:
        """Checks run on listeners that have them, never for authenticated clients
        or trusted networks (their mail is ours, not the world's)."""
        return (self.ctx.checks is not None and self.listener.checks_on and not self.trusted
                and (self.conn is None or self.conn.auth_user is None))

    def _dispatch(self, ev):
        """The answer to ev: a value (accept), a MailError/Reply (reject), or a Deferred."""
        if isinstance(ev, RcptTo):
            return self._on_rcpt(ev)
        if isinstance(ev, MailFrom):
            return self._on_mail(ev)
        if isinstance(ev, Message):
            return self._on_message(ev)
        if isinstance(ev, Authenticate):
            d = self.ctx.authenticator.login(ev.username, ev.password, self.ip, authzid=ev.authzid)
            d.addErrback(self._login_failed)
            return d
        if isinstance(ev, Verify):
            return self._on_vrfy(ev.argument)
        return True

    def _on_vrfy(self, argument: str):
        """VRFY (when enabled): 250 naming the mailbox of one local user, 550 for an
        unknown local recipient, else 252: a remote address, a list, anything
        unparsable. The reply never repeats what the client wrote."""
        text = argument.strip()
        if text.endswith(">") and "<" in text:
            text = text[text.rindex("<") + 1:-1]
        policy = self.ctx.policy
        address = text if "@" in text else f"{text}@{policy.first_local}"
        if not valid_address(address):
            return True
        if address.rpartition("@")[2].lower().rstrip(".") not in policy.local_domains:
            return True
        targets = policy.resolve(address)
        if not targets:
            return NO_SUCH_USER
        if len(targets) == 1 and targets[0].mailbox:
            return f"<{targets[0].mailbox}>"
        return True

    def _login_failed(self, failure):
        exc = failure.value
        if isinstance(exc, MailError):
            return exc
        from common.auth import LoginFailed
        if isinstance(exc, LoginFailed):
            return R.AUTH_FAILED
        self.log.failure("login broke", failure)
        return AUTH_TEMPORARY

    def _on_mail(self, ev: MailFrom):
        if self.ctx.rate_exceeded(self.ip):
            return RATE_LIMITED
        self.ctx.policy.check_sender(ev.sender, self.conn.auth_user, self.listener.sender_must_be_own)
        if self._checks_active():
            # One dict per transaction: SPF's result travels in it to the DATA checks.
            self.check_info = {"client_ip": self.ip, "helo": self.conn.helo, "sender": ev.sender}
            d = self.ctx.checks.mail_from(self.ip, self.conn.helo, ev.sender, self.check_info)
            d.addCallback(lambda error: error if error is not None else True)
            return d
        return True

    def _on_rcpt(self, ev: RcptTo):
        targets = self.ctx.policy.check_recipient(ev.recipient, self.ip, self.conn.auth_user)
        if self._checks_active():
            d = self.ctx.checks.rcpt(self.ip, ev.recipient)
            d.addCallback(lambda error: error if error is not None else targets)
            return d
        return targets

    def _on_message(self, ev: Message):
        data = ev.data
        if count_received(data) > self.ctx.limits.max_received_headers:
            return MAIL_LOOP
        c = self.conn
        params = ev.mail_params
        tls = tlsmod.tls_info(self.transport) if c.tls_active else None
        if tls is not None:
            tls = (tls[0], iana_cipher_name(tls[1]))
        recipients = []
        seen = set()
        for r in ev.recipients:
            for t in r.info:
                if t in seen:
                    continue  # the same target reached twice (directly and by an alias)
                seen.add(t)
                recipients.append(Recipient(
                    address=t.address, orcpt=r.params.get("ORCPT"), notify=r.params.get("NOTIFY"),
                    original=r.address if t.address != r.address else None,
                    mailbox=t.mailbox, folder=t.folder))
        envelope = Envelope(
            sender=ev.sender, recipients=recipients,
            source="submission" if self.listener.is_submission else "smtp",
            client_address=self.ip, client_port=self.client_port, client_name=self.client_name, helo=c.helo,
            auth_user=c.auth_user, tls_version=tls[0] if tls else None, tls_cipher=tls[1] if tls else None,
            body=params.get("BODY", "7BIT"), smtputf8=bool(params.get("SMTPUTF8")),
            ret=params.get("RET"), envid=params.get("ENVID"))
        if self._checks_active():
            info = getattr(self, "check_info", None) or {"client_ip": self.ip, "helo": c.helo, "sender": ev.sender}
            self.check_info = None
            info.update(recipients=[r.address for r in ev.recipients], queue_id=envelope.queue_id,
                        trace_id=envelope.trace_id)
            d = self.ctx.checks.data(info, data)
            d.addCallback(self._after_checks, ev, envelope, tls)
            return d
        data, removed = self.ctx.strip_ours(data)
        if removed:
            self.log.info("removed {count} header fields claiming to be ours", count=removed,
                          queue_id=envelope.queue_id, trace_id=envelope.trace_id)
        return self._store(ev, envelope, data, tls)

    def _after_checks(self, verdict, ev, envelope, tls):
        if verdict.error is not None:
            return verdict.error
        envelope.extra.update(verdict.extra or {})
        return self._store(ev, envelope, verdict.message, tls)

    def _store(self, ev: Message, envelope: Envelope, data: bytes, tls) -> defer.Deferred:
        c = self.conn
        trace = received_header(
            self.ctx.core.hostname, envelope.queue_id,
            protocol_name(c.esmtp, tls is not None, c.auth_user is not None, envelope.smtputf8),
            c.helo, self.ip, self.client_name, ev.recipients[0].address if len(ev.recipients) == 1 else None, tls,
            envelope.arrival)
        if self.listener.is_submission:
            trace += submission_headers(data, self.ctx.core.hostname, envelope.queue_id, envelope.arrival)
        d = self.ctx.writer.store(envelope, [trace, data])
        d.addCallback(self._stored, envelope)
        return d

    def _stored(self, queue_id: str, envelope: Envelope):
        self.log.info("queued from <{sender}> for {count} recipients, {size} bytes, client {name}[{ip}]",
                      queue_id=queue_id, sender=envelope.sender, count=len(envelope.recipients),
                      size=envelope.size, trace_id=envelope.trace_id, name=self.client_name or "unknown",
                      ip=self.ip)
        return queue_id
