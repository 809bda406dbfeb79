"""imapd.server -- the Twisted glue around imapd.protocol for postroom-imapd.

One `ImapSession` per connection feeds bytes to the sans-IO `ImapConnection` and
carries out what it asks: write, start TLS (`common.tls.start_tls`), check a
password (`common.auth.Authenticator`, asynchronous; pipelined input waits in the
core), watch the selected mailbox during IDLE (`common.storage.watch.Watcher`,
inotify plus a periodic check, so a delivery by the MDA or an expunge by another
session shows within a second), make APPEND/COPY durable (`imapd.durable`: one
syncfs(2) in a thread for the sessions that wrote meanwhile), close. Timers: the login timeout before
authentication, the autologout after, and the IDLE keepalive.

Per process (`ImapContext`): the authenticator, TLS, the connection counts.

SECURITY: all input is from the network and goes to the core; any unexpected
error in the glue closes that one connection with BYE and is logged, never shown.
Passwords are handed to the authenticator and never logged.
"""

from __future__ import annotations

import itertools
import os
from collections import defaultdict

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from common import tls as tlsmod
from common.auth import LoginFailed
from common.log import get_logger
from common.netio import no_delay, socket_of, write_now
from common.runner import peer_ip, secure_transport
from common.fshelper import FsHelper
from common.fsutil import HAVE_SYNCFS
from common.storage import MailStore, StorageError, unlink_later_with
from common.storage.lock import link_holders
from common.storage.watch import Watcher

from .compress import CompressionError, DeflateStream, StartCompression
from .durable import GroupSyncfs
from .parser import Limits
from .protocol import CheckPassword, Close, ImapConnection, Settings, StartTLS, Sync, Unwatch, Watch

log = get_logger("postroom.imapd")

_session_ids = itertools.count(1)

#: Answers to pipelined commands are written together up to this much.
HOLD_BYTES = 64 * 1024


class MailboxWatches:
    """One storage Watcher (inotify plus a periodic check) per mailbox per process,
    however many sessions idle on it; a change wakes each of them."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.by_key: dict[tuple, tuple[Watcher, set]] = {}

    def add(self, paths, callback) -> tuple:
        key = tuple(str(p) for p in paths)
        got = self.by_key.get(key)
        if got is None:
            subscribers: set = set()

            def fire():
                for cb in list(subscribers):
                    cb()
            watcher = Watcher(paths, fire, self.reactor, interval=1.0)
            got = self.by_key[key] = (watcher, subscribers)
            watcher.start()
        got[1].add(callback)
        return key

    def remove(self, key: tuple, callback) -> None:
        got = self.by_key.get(key)
        if got is None:
            return
        got[1].discard(callback)
        if not got[1]:
            got[0].stop()
            del self.by_key[key]


class ImapContext:
    """What every session of this process shares."""

    def __init__(self, cfg, reactor, server_tls=None, authenticator=None):
        self.cfg = cfg
        self.core = cfg.core
        self.imapd = cfg.daemon
        self.limits = cfg.daemon.limits
        self.reactor = reactor
        self.server_tls = server_tls
        self.authenticator = authenticator
        self.connections = 0
        self.per_client: dict[str, int] = defaultdict(int)
        self.watches = MailboxWatches(reactor)
        # syncfs for APPEND/COPY and the unlinking of expunged files: in a child
        # process, off the event loop (common.fshelper)
        self.fs = FsHelper(reactor)
        self.syncer = GroupSyncfs(reactor, self.fs) if HAVE_SYNCFS else None
        unlink_later_with(self.fs.unlink)
        link_holders()  # dotlocks by link(2): this process locks the same folders all day
        lim = self.limits
        self.frame_limits = Limits(max_line=int(lim.max_line), max_literal=int(lim.max_message_size),
                                   max_command=int(lim.max_message_size) + int(lim.max_line) * 4,
                                   max_literals=lim.max_literals, literal_minus=lim.literal == "minus")

    def open_store(self, user) -> MailStore:
        return MailStore(user.maildir(self.core))

    def settings(self, listener, ip: str, secure: bool, session_id: str) -> Settings:
        auth = self.authenticator
        return Settings(
            hostname=self.core.hostname,
            limits=self.frame_limits,
            tls_available=listener.tls == "starttls" and self.server_tls is not None,
            secure=secure,
            plaintext_allowed=lambda s: auth.plaintext_allowed(s, ip),
            open_store=self.open_store,
            special_use_defaults=dict(self.imapd.special_use),
            max_buffered=int(self.limits.max_line) * 4 + 64 * 1024,
            auth_failures_before_disconnect=self.limits.auth_failures,
            commands_per_call=1,  # the session pumps, pausing while the client does not read
            session_id=session_id,
            defer_sync=self.syncer is not None,
        )


class ImapFactory(Factory):
    def __init__(self, ctx: ImapContext, name: str, listener):
        self.ctx = ctx
        self.name = name
        self.listener = listener

    def buildProtocol(self, addr):
        session = ImapSession(self.ctx, self.listener)
        session.factory = self
        return session


@implementer(IPushProducer)
class ImapSession(Protocol):
    """One IMAP connection. It is the producer of its own responses: when the client
    stops reading and the transport's buffer fills, commands are not answered (and
    input not read) until it drains, so output never piles up without bound."""

    def __init__(self, ctx: ImapContext, listener):
        self.ctx = ctx
        self.listener = listener
        self.conn: ImapConnection | None = None
        self.ip = "-"
        self.session_id = f"{os.getpid():x}.{next(_session_ids):x}"
        self._timer = None
        self._keepalive = None
        self._watch_key: tuple | None = None
        self._counted = False
        self._closing = False
        self._pending_login = None
        self._paused = False
        self._deflate: DeflateStream | None = None  # COMPRESS=DEFLATE is active
        self._direct = None  # the plain TCP connection answers go straight to (common.netio)
        self._held: list[bytes] = []  # answers to pipelined commands, written together
        self._held_size = 0

    # ------------------------------------------------------------ connection

    def connectionMade(self):
        ctx = self.ctx
        self.ip = peer_ip(self.transport)
        if ctx.connections >= ctx.limits.max_connections or \
                ctx.per_client[self.ip] >= ctx.limits.max_connections_per_client:
            log.warn("refusing connection from {ip}: too many connections", ip=self.ip)
            self.transport.write(b"* BYE Too many connections, try again later\r\n")
            self.transport.loseConnection()
            return
        ctx.connections += 1
        ctx.per_client[self.ip] += 1
        self._counted = True
        secure = self.listener.tls == "implicit" or secure_transport(self.transport)
        self._direct = socket_of(self.transport)
        no_delay(self.transport)
        self.conn = ImapConnection(ctx.settings(self.listener, self.ip, secure, self.session_id), self.ip)
        log.info("connect from {ip}", ip=self.ip, session=self.session_id)
        self.transport.registerProducer(self, True)
        self._apply(self.conn.greeting())
        self._arm_timer()

    def connectionLost(self, reason=None):
        self._stop_watch()
        for timer in (self._timer, self._keepalive):
            if timer is not None and timer.active():
                timer.cancel()
        self._timer = self._keepalive = None
        if self._pending_login is not None:
            self._pending_login.cancel()
        if self.conn is not None:
            self.conn.connection_lost()
            log.info("disconnect {ip} user={user}", ip=self.ip, user=self.conn.username or "-",
                     session=self.session_id)
        if self._counted:
            self._counted = False
            self.ctx.connections -= 1
            self.ctx.per_client[self.ip] -= 1
            if self.ctx.per_client[self.ip] <= 0:
                del self.ctx.per_client[self.ip]

    def graceful_shutdown(self):
        """SIGTERM: say BYE now unless a command is being answered."""
        busy = self._pending_login is not None or (self.conn is not None and self.conn.syncing)
        if self.conn is not None and not self._closing and not busy:
            self._apply(self.conn.shutting_down())

    def dataReceived(self, data: bytes):
        if self.conn is None or self._closing:
            return
        if self._deflate is None:
            self._received(data)
            return
        try:
            for chunk in self._deflate.inflate(data):
                if self._closing:
                    return
                self._received(chunk)
        except CompressionError as e:
            log.info("bad compressed input from {ip}: {error}", ip=self.ip, error=str(e), session=self.session_id)
            self._write(b"* BYE Bad compressed data\r\n")
            self._close()

    def _write(self, data: bytes) -> None:
        if self._deflate is not None:
            self.transport.write(self._deflate.deflate(data))
        else:
            write_now(self.transport, self._direct, data)

    def _received(self, data: bytes) -> None:
        self._arm_timer()
        if self._paused:
            self.conn.framer.append(data)
            if self.conn.framer.pending > self.conn.settings.max_buffered:
                self._apply(self.conn.overloaded())
            return
        self._pump(data)

    def _pump(self, data: bytes = b"") -> None:
        """Answer buffered commands one at a time until none is complete, one waits,
        or the transport asks us to pause."""
        try:
            out = self.conn.receive(data)
            while out and not self._closing:
                self._apply(out, hold=True)
                if self._paused or self._closing:
                    break
                out = self.conn.receive(b"")
            if not self.conn.syncing:
                self._flush()
        except Exception:  # noqa: BLE001 -- a bug closes one connection, never the daemon
            log.failure("session {session} failed", session=self.session_id)
            self._held.clear()
            self._write(b"* BYE Internal error\r\n")
            self._close()

    # ------------------------------------------------------------ IPushProducer

    # Reading goes on while paused (pausing the transport would also stall a TLS
    # handshake); input is only buffered then, and a client that keeps sending
    # without reading is cut off at max_buffered.

    def pauseProducing(self):
        self._paused = True

    def resumeProducing(self):
        if not self._paused:
            return
        self._paused = False
        if self.conn is not None and not self._closing:
            self._pump()

    def stopProducing(self):
        self._paused = True

    # ------------------------------------------------------------ actions from the core

    def _flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held.clear()
            self._held_size = 0
            self._write(data)

    def _apply(self, outputs, hold: bool = False) -> None:
        """Carry out what the core asked. Bytes are written at once unless `hold`
        (answers to pipelined commands then go out together) or a command waits for
        its syncfs (what came before goes out with its answer), up to HOLD_BYTES."""
        pending = self._held
        flush = self._flush
        for item in outputs:
            if isinstance(item, bytes):
                pending.append(item)
                self._held_size += len(item)
            elif isinstance(item, StartTLS):
                flush()
                self._direct = None  # from now on everything goes through TLS
                tlsmod.start_tls(self.transport, self.ctx.server_tls, self.conn, log, session=self.session_id)
                pending.extend(x for x in self.conn.tls_started() if isinstance(x, bytes))
            elif isinstance(item, CheckPassword):
                flush()
                self._check_password(item)
            elif isinstance(item, Sync):
                self._sync(item.path)  # what is held goes out with the answer after it
            elif isinstance(item, Watch):
                self._start_watch(item.paths)
            elif isinstance(item, Unwatch):
                self._stop_watch()
            elif isinstance(item, Close):
                flush()
                self._close()
            elif isinstance(item, StartCompression):
                flush()
                self._deflate = DeflateStream()
        if (not hold and not self.conn.syncing) or self._held_size >= HOLD_BYTES:
            flush()

    def _close(self):
        self._closing = True
        self._stop_watch()
        self.transport.loseConnection()

    def _check_password(self, req: CheckPassword) -> None:
        d = self.ctx.authenticator.login(req.username, req.password, self.ip, authzid=req.authzid)
        self._pending_login = d

        def ok(user):
            self._pending_login = None
            if not self._closing:
                self._apply(self.conn.password_checked(user))
                self._arm_timer()
                if not self._paused:
                    self._pump()

        def failed(failure):
            self._pending_login = None
            if self._closing or self.conn is None:
                return None
            from twisted.internet.defer import CancelledError
            if failure.check(CancelledError):
                return None
            temporary = not failure.check(LoginFailed)
            if temporary:
                log.warn("password check broke: {error}", error=str(failure.value), session=self.session_id)
            self._apply(self.conn.password_checked(None, temporary=temporary))
            if not self._paused and not self._closing:
                self._pump()
            return None

        d.addCallbacks(ok, failed)
        d.addErrback(lambda f: log.failure("login handling failed", f, session=self.session_id))

    def _sync(self, path: str) -> None:
        def done(result):
            if self._closing or self.conn is None:
                return None
            error = None
            if result is not None:
                error = StorageError(f"syncfs of {path}: {result.value}")
            self._apply(self.conn.synced(error))
            if not self._paused and not self._closing:
                self._pump()
            return None

        d = self.ctx.syncer.sync(path)
        d.addBoth(done)
        d.addErrback(lambda f: log.failure("sync handling failed", f, session=self.session_id))

    # ------------------------------------------------------------ IDLE watching

    def _start_watch(self, paths) -> None:
        self._stop_watch()
        self._watch_key = self.ctx.watches.add(paths, self._mailbox_changed)
        self._keepalive = self.ctx.reactor.callLater(float(self.ctx.limits.idle_keepalive), self._send_keepalive)

    def _stop_watch(self) -> None:
        if self._watch_key is not None:
            self.ctx.watches.remove(self._watch_key, self._mailbox_changed)
            self._watch_key = None
        if self._keepalive is not None and self._keepalive.active():
            self._keepalive.cancel()
        self._keepalive = None

    def _mailbox_changed(self) -> None:
        if self.conn is not None and not self._closing:
            try:
                self._apply(self.conn.mailbox_changed())
            except Exception:  # noqa: BLE001
                log.failure("IDLE update failed", session=self.session_id)

    def _send_keepalive(self) -> None:
        if self.conn is None or self._closing:
            return
        self._apply(self.conn.keepalive())
        self._keepalive = self.ctx.reactor.callLater(float(self.ctx.limits.idle_keepalive), self._send_keepalive)

    # ------------------------------------------------------------ timeouts

    def _arm_timer(self) -> None:
        if self.conn is None:
            return
        delay = float(self.ctx.limits.autologout if self.conn.authenticated else self.ctx.limits.login_timeout)
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = self.ctx.reactor.callLater(delay, self._timed_out)

    def _timed_out(self) -> None:
        if self.conn is None or self._closing:
            return
        log.info("autologout {ip}", ip=self.ip, session=self.session_id)
        self._apply(self.conn.timed_out())
