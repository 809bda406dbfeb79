"""common.runner -- the one way every postroom daemon starts, runs and stops.

    def build(cfg, parent, reactor):
        tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml"))
        for name, listener in cfg.daemon.listeners.items():
            listen(parent, listener, SmtpFactory(cfg, ...), tls, reactor)

    def main():
        run("mta", build, description="postroom SMTP server")

`run()` parses --config/--pidfile, loads the configuration (one line and exit 78 on
any mistake, never a traceback), sets up logging, calls `build()`, binds every
listener while still privileged, drops to `user`/`group`, writes the pid file,
starts the services and runs the reactor.

Signals:
  SIGTERM, SIGINT  stop accepting at once; connections in flight may finish for up
                   to `shutdown_grace` (each protocol with a `graceful_shutdown()`
                   method is asked to close when idle); then stop and exit 0.
  SIGHUP           reload every ServerTLS of the process and call `.reload()` on
                   every service in the tree that has one.

Connections accepted through `listen()` are counted in `sessions` automatically.
Other long work (an outbound delivery) may register with `sessions.add(obj)` /
`sessions.remove(obj)` so a SIGTERM waits for it too.

SECURITY: started as root only to bind ports below 1024 (or not at all under systemd
socket activation); drops to the configured user right after binding and checks it
cannot regain root. Running as root with no `user` configured is refused. Exit
codes follow sysexits.h: 78 configuration, 71 operating system (a port in use).
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, IServiceCollection, MultiService
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from . import tls as tlsmod
from .config import DAEMONS, ConfigError, config_dir, load
from .config.core import Listener, TlsFiles
from .errors import EX_CONFIG, EX_OSERR, EX_SOFTWARE
from .log import get_logger, setup_logging

log = get_logger("postroom.runner")


class SessionTracker:
    """What a graceful stop waits for: open connections and other work in flight."""

    def __init__(self) -> None:
        self._open: set[Any] = set()
        self._waiters: list[defer.Deferred] = []
        self.stopping = False

    def add(self, session: Any) -> None:
        self._open.add(session)

    def remove(self, session: Any) -> None:
        self._open.discard(session)
        if not self._open:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(True)

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self):
        return iter(list(self._open))

    def drain(self, reactor, timeout: float) -> defer.Deferred:
        """Ask every session that can to finish (graceful_shutdown()), and fire with
        True when none is left, or False after timeout seconds."""
        self.stopping = True
        for session in list(self._open):
            shutdown = getattr(session, "graceful_shutdown", None)
            if shutdown is not None:
                try:
                    shutdown()
                except Exception:
                    log.failure("graceful_shutdown failed")
        if not self._open:
            return defer.succeed(True)
        d: defer.Deferred = defer.Deferred()
        self._waiters.append(d)
        timer = reactor.callLater(timeout, lambda: d.called or d.callback(False))
        d.addBoth(lambda r: (timer.active() and timer.cancel(), r)[1])
        return d


#: The sessions of this process (one process is one daemon).
sessions = SessionTracker()


class _TrackedProtocol(ProtocolWrapper):
    """Registers the wrapped protocol in `sessions` for the connection's lifetime."""

    def makeConnection(self, transport):
        sessions.add(self.wrappedProtocol)
        super().makeConnection(transport)

    def connectionLost(self, reason):
        session = self.wrappedProtocol  # ProtocolWrapper forgets it in connectionLost
        try:
            super().connectionLost(reason)
        finally:
            sessions.remove(session)


class _TrackingFactory(WrappingFactory):
    protocol = _TrackedProtocol

    def logPrefix(self):  # keep the wrapped factory's name in Twisted's own log lines
        return self.wrappedFactory.logPrefix() if hasattr(self.wrappedFactory, "logPrefix") else "postroom"


class ListenerService(StreamServerEndpointService):
    """A listening endpoint built by `listen()`; a bind error raises at start."""

    def __init__(self, endpoint, factory, listener: Listener, name: str | None = None,
                 server_tls: "tlsmod.ServerTLS | None" = None):
        super().__init__(endpoint, factory)
        self.listener = listener
        # Held here: ServerTLS instances are reloaded on SIGHUP while alive, and a
        # listener's own one has no other owner.
        self.server_tls = server_tls
        self._raiseSynchronously = True
        if name:
            self.setName(name)


def listen(parent: MultiService, listener: Listener, factory: Factory,
           server_tls: "tlsmod.ServerTLS | None", reactor, name: str | None = None,
           endpoint=None) -> IService:
    """Add a service listening on listener.endpoint to parent and return it.

    Layers, outside in: PROXY header (proxy_protocol), TLS (tls: implicit, which an
    ssl: endpoint implies), session tracking, then factory. STARTTLS (tls: starttls)
    is the protocol's business; it needs server_tls too. An ssl: endpoint that names
    its own privateKey/certKey gets its own ServerTLS (reloaded on SIGHUP like every
    ServerTLS). Raises ConfigError for a TLS listener without TLS files, or unusable
    files of its own."""
    file, line, key = getattr(listener.endpoint, "origin", (None, None, None))
    own_files = tlsmod.listener_files(listener, server_tls.files if server_tls is not None else TlsFiles())
    if own_files is not None:
        server_tls = tlsmod.ServerTLS(own_files, where=(file, line, key))
    if listener.tls in ("implicit", "starttls") and server_tls is None:
        raise ConfigError(file, line, key or "tls", f"listener {listener.endpoint} uses TLS "
                          f"({listener.tls}) but no certificate is configured; set tls: none "
                          "or tls.certificate and tls.key in postroom.yaml")
    wrapped: Factory = _TrackingFactory(factory)
    factory.noisy = wrapped.noisy = False  # "Starting factory" lines say nothing useful
    if listener.tls == "implicit":
        from twisted.protocols.tls import TLSMemoryBIOFactory

        wrapped = TLSMemoryBIOFactory(server_tls.creator, False, wrapped)
        wrapped.noisy = False
    if listener.proxy_protocol:
        from .proxyproto import ProxyProtocolFactory  # only daemons that use it need it

        wrapped = ProxyProtocolFactory(wrapped, trusted=listener.proxy_from)
    try:
        # endpoint: an already-made one (a listening socket inherited from a parent
        # process) instead of listener.endpoint; the layers above stay the same.
        endpoint = endpoint or serverFromString(reactor, listener.endpoint.listening_string())
    except Exception as e:
        raise ConfigError(file, line, key or "endpoint",
                          f"bad endpoint string {str(listener.endpoint)!r}: {e}") from None
    service = ListenerService(endpoint, wrapped, listener, name, server_tls)
    service.setServiceParent(parent)
    return service


def secure_transport(transport) -> bool:
    """Whether the connection is encrypted (implicit TLS, or STARTTLS done)."""
    return tlsmod.tls_started(transport)


def peer_ip(transport) -> str:
    """The client's IP address: the PROXY-given one when there is one, else the
    socket's. An IPv4 client of a dual-stack IPv6 socket reads as its IPv4 address
    (::ffff:192.0.2.1 -> 192.0.2.1), so address rules and DNS checks see one form.
    A unix socket peer is local and reads as 127.0.0.1."""
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if not isinstance(host, str) or not host:
        return "127.0.0.1"
    if host.startswith("::ffff:") and "." in host:
        return host[len("::ffff:"):]
    return host


def _walk(service) -> list:
    out = [service]
    if IServiceCollection.providedBy(service):
        for child in service:
            out.extend(_walk(child))
    return out


def reload_all(parent) -> None:
    """SIGHUP: reload every ServerTLS, then every service with a reload() method."""
    log.info("SIGHUP: reloading")
    for server_tls in tlsmod.all_server_tls():
        server_tls.reload()
    for service in _walk(parent):
        reload = getattr(service, "reload", None)
        if callable(reload):
            try:
                reload()
            except Exception:
                log.failure("reload of {service} failed", service=getattr(service, "name", None) or service)


class _Stopper:
    """SIGTERM handling: stop listening, drain sessions, stop services, stop reactor."""

    def __init__(self, parent: MultiService, reactor, grace: float):
        self.parent = parent
        self.reactor = reactor
        self.grace = grace
        self.started = False

    @defer.inlineCallbacks
    def stop(self, signame: str = "SIGTERM"):
        if self.started:
            log.info("{signame} again: stopping now", signame=signame)
            self._abort_all()
            self.reactor.stop()
            return
        self.started = True
        listeners = [s for s in _walk(self.parent) if isinstance(s, ListenerService) and s.running]
        log.info("{signame}: no new connections; {n} in flight, waiting up to {grace}s",
                 signame=signame, n=len(sessions), grace=self.grace)
        try:
            yield defer.gatherResults([defer.maybeDeferred(s.stopService) for s in listeners],
                                      consumeErrors=True)
            drained = yield sessions.drain(self.reactor, self.grace)
            if not drained:
                log.warn("{n} sessions still open after {grace}s; closing them",
                         n=len(sessions), grace=self.grace)
                self._abort_all()
            if self.parent.running:
                yield defer.maybeDeferred(self.parent.stopService)
        except Exception:
            log.failure("error while stopping")
        log.info("stopped")
        if self.reactor.running:
            self.reactor.stop()

    def _abort_all(self):
        for session in sessions:
            transport = getattr(session, "transport", None)
            if transport is not None:
                abort = getattr(transport, "abortConnection", None) or transport.loseConnection
                abort()


def _fail(name: str, message: str, code: int) -> NoReturn:
    print(f"postroom-{name}: {message}", file=sys.stderr, flush=True)
    sys.exit(code)


def resolve_user(core, config_file: Path) -> tuple[int, int, str] | None:
    """(uid, gid, user name) from core.user/core.group, or None when no user is set."""
    if not core.user:
        if core.group:
            raise ConfigError(config_file, None, "group", "is set but user is not")
        return None
    try:
        pw = pwd.getpwnam(core.user)
    except KeyError:
        raise ConfigError(config_file, None, "user", f"no such user {core.user!r}") from None
    gid = pw.pw_gid
    if core.group:
        try:
            gid = grp.getgrnam(core.group).gr_gid
        except KeyError:
            raise ConfigError(config_file, None, "group", f"no such group {core.group!r}") from None
    return pw.pw_uid, gid, pw.pw_name


def drop_privileges(uid: int, gid: int, user: str) -> None:
    """Become uid/gid with user's supplementary groups; verify root cannot come back."""
    if os.geteuid() != 0:
        if os.geteuid() != uid:
            log.warn("not root: cannot switch to user {user}; staying uid {uid}",
                     user=user, uid=os.geteuid())
        return
    if uid == 0:
        log.warn("running as root: user is set to root in postroom.yaml")
        return
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(uid)
    try:
        os.setuid(0)
    except PermissionError:
        pass
    else:  # pragma: no cover - only on a broken system
        raise OSError("privilege drop failed: could regain root")
    if os.getuid() != uid or os.geteuid() != uid or os.getgid() != gid or os.getegid() != gid:
        raise OSError("privilege drop failed: ids did not change")


def _chown_unix_sockets(parent, uid: int, gid: int) -> None:
    """Unix sockets bound as root are handed to the daemon's user (their mode stays)."""
    for service in _walk(parent):
        if isinstance(service, ListenerService) and str(service.listener.endpoint).startswith("unix:"):
            port = getattr(service, "_waitingForPort", None)
            listening = port.result if port is not None and port.called else None
            path = getattr(listening.getHost(), "name", None) if listening is not None else None
            if isinstance(path, (str, bytes)):
                try:
                    os.chown(path, uid, gid)
                except OSError as e:
                    log.warn("cannot hand {path} to the daemon user: {error}", path=path, error=e)


def _write_pidfile(path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{os.getpid()}\n")
    os.replace(tmp, path)


def parse_args(name: str, argv: list[str] | None, description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=f"postroom-{name}", description=description or f"postroom {name} daemon",
        epilog="Signals: SIGTERM stops gracefully, SIGHUP reloads certificates and tables. "
               "Exit 78 on a configuration error.")
    parser.add_argument("--config", metavar="DIR",
                        help="configuration folder (default: $POSTROOM_CONFIG, else /etc/postroom)")
    parser.add_argument("--pidfile", metavar="PATH", help="write the process id here after start")
    parser.add_argument("--foreground", action="store_true",
                        help="accepted for compatibility: postroom daemons always run in the "
                             "foreground (the service manager supervises them)")
    return parser.parse_args(argv)


def run(name: str, build: Callable[[Any, MultiService, Any], None], argv: list[str] | None = None,
        description: str = "") -> NoReturn:
    """Run daemon `name` until SIGTERM; never returns."""
    args = parse_args(name, argv, description)
    directory = config_dir(args.config)
    try:
        cfg = load(directory, name if name in DAEMONS else None)
        who = resolve_user(cfg.core, directory / "postroom.yaml")
    except ConfigError as e:
        _fail(name, str(e), EX_CONFIG)
    if os.geteuid() == 0 and who is None:
        _fail(name, f"refusing to run as root: set 'user' (for example user: postroom) in "
                    f"{directory / 'postroom.yaml'}", EX_CONFIG)

    setup_logging(cfg.core.log, name)
    from twisted.internet import reactor

    parent = MultiService()
    try:
        build(cfg, parent, reactor)
        parent.privilegedStartService()
    except ConfigError as e:
        if e.file is None and name in DAEMONS:  # found while building: the daemon's file
            e.file = str(cfg.path(DAEMONS[name][0]))
        _fail(name, str(e), EX_CONFIG)
    except OSError as e:
        _fail(name, f"cannot start: {e}", EX_OSERR)
    except Exception as e:
        from twisted.internet.error import CannotListenError

        if isinstance(e, CannotListenError):
            _fail(name, f"cannot listen on {e.interface or '*'}:{e.port}: {e.socketError}", EX_OSERR)
        log.failure("build failed")
        _fail(name, f"internal error while starting: {type(e).__name__}: {e}", EX_SOFTWARE)

    try:
        if who is not None:
            _chown_unix_sockets(parent, who[0], who[1])
            drop_privileges(*who)
        if args.pidfile:
            _write_pidfile(Path(args.pidfile))
    except OSError as e:
        _fail(name, f"cannot start: {e}", EX_OSERR)

    stopper = _Stopper(parent, reactor, float(cfg.core.shutdown_grace))

    def install_signals():
        def on_signal(signum, _frame):
            if signum == signal.SIGHUP:
                reactor.callFromThread(reload_all, parent)
            else:
                reactor.callFromThread(stopper.stop, signal.Signals(signum).name)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, on_signal)

    def start():
        install_signals()
        try:
            parent.startService()
        except Exception:
            log.failure("start failed")
            reactor.stop()
            return
        log.info("postroom-{name} started (pid {pid}, uid {uid})", name=name, pid=os.getpid(),
                 uid=os.getuid())

    reactor.callWhenRunning(start)
    reactor.run()
    if args.pidfile:
        try:
            os.unlink(args.pidfile)
        except OSError:
            pass
    sys.exit(0)
