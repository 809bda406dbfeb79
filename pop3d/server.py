"""pop3d.server -- Twisted glue around pop3d.protocol: sockets, TLS, logins, the maildrop.

Each connection gets a Pop3Conn. The glue turns its events into actions: writes,
STLS, a login through common.auth (then the POP3 lock and the snapshot of INBOX),
message reads, and at QUIT the UPDATE step (\\Seen for retrieved messages, then the
deleted ones flagged and expunged, which IMAP sessions see as ordinary expunges).

The maildrop lock is `MailStore.pop3_lock()` (an flock held for the session): a
second POP3 login gets [IN-USE], while IMAP and delivery go on. The listing is a
snapshot taken at login; mail that arrives later waits for the next session.

SECURITY: runs as the unprivileged mail user after the runner drops root. Reaches a
maildir only through common.storage and only after a successful login. Errors are
logged with details; the client gets a generic text and a response code. Passwords
and message bodies are never logged. Output is flow-controlled: while the client
is not reading, no further message is read from disk.
"""

from __future__ import annotations

import secrets
from collections import OrderedDict, deque

from twisted.internet import interfaces
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from common import tls as tlsmod
from common.auth import Authenticator, LoginFailed
from common.log import get_logger
from common.runner import peer_ip, secure_transport
from common.storage import INBOX, MailboxInUse, MailStore, MessageExpunged, StorageError

from .protocol import (UPDATE, Authenticate, Close, Commit, Fetch, Limits, Listing, Pop3Conn, Send, StartTLS,
                       format_uidl)

log = get_logger("pop3d")

#: Seconds a closing connection may take to flush its output and finish TLS (a peer
#: that never answers close_notify) before it is cut.
CLOSE_WAIT = 10.0
#: Users whose last login time is remembered for LOGIN-DELAY.
MAX_LOGIN_TIMES = 100000


def snapshot(box, uidl_format: str, limit: int) -> list[Listing]:
    """The listing served for a session: the oldest `limit` messages of the mailbox."""
    out = []
    for msg in box.messages[:limit]:
        uidl = msg.pop3_uidl or format_uidl(uidl_format, msg.uid, box.uidvalidity, msg.basename)
        out.append(Listing(msg.uid, msg.vsize, uidl))
    return out


@implementer(interfaces.IPushProducer)
class Pop3Session(Protocol, TimeoutMixin):
    def __init__(self, factory: "Pop3Factory", starttls: bool):
        self.factory = factory
        self.starttls = starttls
        self.sid = secrets.token_hex(4)
        self.log = log.bind(session=self.sid)
        self.conn: Pop3Conn | None = None
        self.pending: deque = deque()
        self.paused = False
        self.lost = False
        self.store: MailStore | None = None
        self.box = None
        self.lock = None
        self.user: str | None = None
        self.login_attempt = None
        self.retrieved = 0
        self._abort_call = None

    # --- connection -------------------------------------------------------------------

    def connectionMade(self) -> None:
        cfg = self.factory.cfg
        self.ip = peer_ip(self.transport)
        secure = secure_transport(self.transport)
        self.conn = Pop3Conn(
            hostname=cfg.core.hostname, stls_available=self.starttls, secure=secure,
            plaintext_allowed_in_clear=self.factory.auth.plaintext_allowed(False, self.ip),
            login_delay=int(cfg.daemon.login_delay), limits=self.factory.limits)
        self.transport.registerProducer(self, True)
        self.setTimeout(float(cfg.daemon.idle_timeout))
        self.log.info("connection from {ip}{tls}", ip=self.ip, tls=" (TLS)" if secure else "")
        self.handle(self.conn.greeting())

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if self.conn is not None:
            self.guarded(lambda: self.handle(self.conn.receive(data)))

    def guarded(self, step) -> None:
        """Run step; any unexpected error is logged and ends the session with a
        temporary error (never a traceback to the client, never a deletion)."""
        try:
            step()
        except Exception:
            self.log.failure("session failed")
            if not self.lost:
                self.transport.write(b"-ERR [SYS/TEMP] Internal error, try again later.\r\n")
                self.pending.clear()
                self.close()

    def timeoutConnection(self) -> None:
        self.log.info("idle timeout")
        self.transport.write(b"-ERR Autologout; idle for too long.\r\n")
        self.close()

    def graceful_shutdown(self) -> None:
        """SIGTERM: say goodbye now; nothing the client marked is deleted (RFC 1939)."""
        if not self.lost and self.conn is not None and self.conn.state != UPDATE:
            self.transport.write(b"-ERR [SYS/TEMP] Server shutting down, try again later.\r\n")
            self.close()

    def close(self) -> None:
        """Close after the pending output; a TLS peer that never answers our
        close_notify is cut off after CLOSE_WAIT seconds."""
        self.transport.loseConnection()
        if self._abort_call is None:
            self._abort_call = self.factory.reactor.callLater(CLOSE_WAIT, self.transport.abortConnection)

    def connectionLost(self, reason=None) -> None:
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        self.lost = True
        self.setTimeout(None)
        if self.login_attempt is not None and not self.login_attempt.called:
            self.login_attempt.cancel()
        self.release()
        self.log.info("disconnected{user}", user=f" ({self.user}, {self.retrieved} retrieved)" if self.user else "")

    def release(self) -> None:
        if self.box is not None:
            self.box.close()
            self.box = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # --- flow control: stop reading messages while the client is not reading ----------

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self.guarded(lambda: self.handle([]))

    def stopProducing(self) -> None:
        self.paused = True

    # --- events -----------------------------------------------------------------------

    def handle(self, events) -> None:
        self.pending.extend(events)
        while self.pending and not self.lost:
            event = self.pending[0]
            if isinstance(event, Fetch) and self.paused:
                return
            self.pending.popleft()
            if isinstance(event, Send):
                self.transport.write(event.data)
            elif isinstance(event, Fetch):
                self.pending.extend(self.fetch(event))
            elif isinstance(event, Authenticate):
                self.authenticate(event)
            elif isinstance(event, Commit):
                self.pending.extend(self.commit(event))
            elif isinstance(event, StartTLS):
                tlsmod.start_tls(self.transport, self.factory.server_tls, self.conn, self.log)
                self.conn.tls_started()
            elif isinstance(event, Close):
                self.close()
                self.pending.clear()

    def authenticate(self, event: Authenticate) -> None:
        d = self.factory.auth.login(event.username, event.password, self.ip, authzid=event.authzid)
        self.login_attempt = d
        d.addCallbacks(lambda record: self.guarded(lambda: self.logged_in(record)),
                       lambda failure: self.guarded(lambda: self.login_failed(failure)))
        d.addErrback(self.login_broke)

    def login_failed(self, failure) -> None:
        if self.lost:
            return
        if failure.check(LoginFailed):
            self.handle(self.conn.login_failed("AUTH", "Authentication failed."))
        else:
            self.log.error("login check failed: {error}", error=str(failure.value))
            self.handle(self.conn.login_failed("SYS/TEMP", "Temporary authentication failure, try again later."))

    def login_broke(self, failure) -> None:
        self.log.failure("login handling broke", failure)
        if not self.lost:
            self.transport.write(b"-ERR [SYS/TEMP] Internal error, try again later.\r\n")
            self.close()

    def logged_in(self, record) -> None:
        if self.lost:
            return
        cfg = self.factory.cfg
        delay = float(cfg.daemon.login_delay)
        now = self.factory.reactor.seconds()
        if delay:
            last = self.factory.last_login.get(record.name)
            if last is not None and now - last < delay:
                self.log.info("login of {user} refused: LOGIN-DELAY", user=record.name)
                self.handle(self.conn.login_failed("LOGIN-DELAY", f"Wait {int(delay)} seconds between logins."))
                return
        try:
            self.store = MailStore(record.maildir(cfg.core))
            self.lock = self.store.pop3_lock()
            self.box = self.store.open_mailbox(INBOX, claim_recent=False)  # \\Recent stays for IMAP
            listing = snapshot(self.box, cfg.daemon.uidl_format, cfg.daemon.max_messages)
        except MailboxInUse:
            self.release()
            self.log.info("login of {user}: mailbox in use", user=record.name)
            self.handle(self.conn.login_failed("IN-USE", "Mailbox is locked by another POP3 session."))
            return
        except (StorageError, OSError) as e:
            self.release()
            temporary = getattr(e, "temporary", True)
            self.log.error("opening the maildrop of {user} failed: {error}", user=record.name, error=str(e))
            self.handle(self.conn.login_failed("SYS/TEMP" if temporary else "SYS/PERM",
                                               "Cannot open the mailbox now."))
            return
        self.user = record.name
        if delay:
            self.factory.remember_login(record.name, now)
        self.log.info("{user} logged in, {count} messages", user=record.name, count=len(listing))
        self.handle(self.conn.login_succeeded(listing))

    def fetch(self, event: Fetch) -> list:
        try:
            data = self.box.read(event.uid)
        except MessageExpunged:
            return self.conn.fetch_failed(None, "Message was removed by another session.")
        except (StorageError, OSError) as e:
            self.log.error("reading UID {uid} failed: {error}", uid=event.uid, error=str(e))
            return self.conn.fetch_failed("SYS/TEMP", "Cannot read the message now.")
        if event.top is None:
            self.retrieved += 1
        return self.conn.message(data)

    def commit(self, event: Commit) -> list:
        """The UPDATE state: \\Seen on what was retrieved, remove what was deleted."""
        error = None
        try:
            if event.seen and self.factory.cfg.daemon.mark_seen:
                self.box.store(event.seen, ["\\Seen"], "add")
            if event.deleted:
                self.box.store(event.deleted, ["\\Deleted"], "add")
                removed = self.box.expunge(event.deleted)
                if len(removed) != len(event.deleted):
                    self.log.warn("{n} deleted messages were not removed (changed by another session)",
                                  n=len(event.deleted) - len(removed))
        except (StorageError, OSError) as e:
            self.log.error("UPDATE failed: {error}", error=str(e))
            error = "SYS/TEMP" if getattr(e, "temporary", True) else "SYS/PERM"
        self.log.info("{user} quit: {retrieved} retrieved, {deleted} deleted", user=self.user,
                      retrieved=self.retrieved, deleted=len(event.deleted))
        self.release()
        return self.conn.commit_done(error)


class Pop3Factory(Factory):
    """One per listener; last_login (for LOGIN-DELAY) is shared by all of them."""

    def __init__(self, cfg, auth: Authenticator, server_tls, reactor, starttls: bool,
                 last_login: OrderedDict[str, float] | None = None):
        self.cfg = cfg
        self.auth = auth
        self.server_tls = server_tls
        self.reactor = reactor
        self.starttls = starttls and server_tls is not None
        d = cfg.daemon
        self.limits = Limits(d.max_line_length, d.max_commands, d.max_bad_commands, d.max_auth_failures)
        self.last_login = last_login if last_login is not None else OrderedDict()

    def remember_login(self, user: str, when: float) -> None:
        self.last_login[user] = when
        self.last_login.move_to_end(user)
        while len(self.last_login) > MAX_LOGIN_TIMES:
            self.last_login.popitem(last=False)

    def buildProtocol(self, addr) -> Pop3Session:
        session = Pop3Session(self, self.starttls)
        session.factory = self
        return session
