"""mta.workers -- several receiving processes sharing the listening sockets.

With `receive_processes: N` (N > 1) the first process binds every listener as
usual, then starts N copies of itself, while still privileged, that inherit the
listening sockets (their descriptors named in the environment variable
mta.main.WORKER_ENV) and adopt them with `reactor.adoptStreamPort`. The kernel
hands each new connection to whichever process accepts it first, so every core
takes SMTP sessions. The first process then stops accepting: it runs the queue
manager, whose synchronous work must not delay anyone's 250. Each worker drops privileges through the same runner, writes
the spool with its own group commit, and runs no queue manager (the queue
manager's periodic scan of incoming/ finds what workers spool). The workers also
inherit the table of per-client counts (mta.clientlimits), each with its own
column of connection counts, so the limits hold for all of them together.

The first process watches its workers: one that dies is started again (at most
once per second, after its column of connection counts is zeroed), and on SIGTERM every worker gets SIGTERM and the same grace.
Workers die with their parent (PR_SET_PDEATHSIG on Linux).

SECURITY: workers are the same program with the same configuration; nothing but
socket descriptors and the counts table's memfd crosses the process boundary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from common.log import get_logger
from common.runner import listen

log = get_logger("postroom.mta.workers")


@implementer(IStreamServerEndpoint)
class AdoptedEndpoint:
    """A listening socket inherited from the parent process, as an endpoint."""

    def __init__(self, reactor, fd: int):
        self.reactor = reactor
        self.fd = fd

    def listen(self, factory):
        def adopt():
            with socket.socket(fileno=os.dup(self.fd)) as probe:
                family = probe.family
            os.set_blocking(self.fd, False)  # shared by every process: never block in accept()
            port = self.reactor.adoptStreamPort(self.fd, family, factory)
            os.close(self.fd)  # adoptStreamPort keeps its own duplicate
            _accept_few(port)
            return port
        return defer.execute(adopt)


#: connections one process accepts per wakeup on a shared listening socket
ACCEPTS_PER_WAKEUP = 1


def _accept_few(port) -> None:
    """Twisted's Port accepts up to 100 waiting connections per wakeup (and raises its
    limit when it takes them all). On a socket the processes share, that lets the
    first process to wake take a whole burst (20 clients connecting at once all went
    to one process and one core). Resetting the limit before each read spreads a
    burst over the processes."""
    read = port.doRead

    def do_read():
        port.numberAccepts = ACCEPTS_PER_WAKEUP
        return read()

    port.doRead = do_read


def adopt_listeners(parent, cfg, ctx, spec: str, reactor) -> None:
    """In a worker: one listener service per inherited socket ("name=fd,...")."""
    from .smtpd import SmtpFactory

    for item in spec.split(","):
        name, _, fd = item.partition("=")
        listener = cfg.daemon.listeners[name]
        listen(parent, listener, SmtpFactory(ctx, name, listener), ctx.server_tls, reactor,
               name=f"smtp-{name}", endpoint=AdoptedEndpoint(reactor, int(fd)))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class WorkerPool(Service):
    """Starts, watches and stops the extra receiving processes."""

    name = "receive-workers"

    def __init__(self, cfg, listener_services, count: int, reactor, limits_table=None):
        self.cfg = cfg
        self.limits_table = limits_table
        self.listener_services = listener_services
        self.count = count
        self.reactor = reactor
        self.procs: list[subprocess.Popen | None] = []
        self.fds: dict[str, int] = {}
        self.ports: list = []
        self._watch = None
        self._last_spawn = 0.0

    def privilegedStartService(self):
        super().privilegedStartService()
        for svc in self.listener_services:
            waiting = getattr(svc, "_waitingForPort", None)
            port = waiting.result if waiting is not None and waiting.called else None
            if port is None or not hasattr(port, "fileno"):
                raise RuntimeError(f"listener {svc.name} is not bound; cannot share it")
            self.fds[svc.name.removeprefix("smtp-")] = port.fileno()
            self.ports.append(port)
        self.procs = [self._spawn(i) for i in range(self.count)]
        # This process keeps the sockets open (for restarts) but accepts nothing:
        # its reactor runs the queue manager, whose fsyncs must not stall sessions.
        for port in self.ports:
            port.stopReading()

    def _spawn(self, column: int) -> subprocess.Popen:
        from .main import LIMITS_ENV, WORKER_ENV

        env = dict(os.environ)
        env[WORKER_ENV] = ",".join(f"{name}={fd}" for name, fd in self.fds.items())
        fds = tuple(self.fds.values())
        table = self.limits_table
        if table is not None:
            env[LIMITS_ENV] = f"{table.fd}:{column}"
            fds += (table.fd,)
        self._last_spawn = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", "mta.main", "--config", str(self.cfg.dir)],
                                pass_fds=fds, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.info("receiving process {pid} started", pid=proc.pid)
        return proc

    def startService(self):
        super().startService()
        self._watch = task.LoopingCall(self._check)
        self._watch.clock = self.reactor
        self._watch.start(1.0, now=False)

    def _check(self):
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                log.warn("receiving process {pid} exited with {code}", pid=proc.pid, code=proc.returncode)
                if self.limits_table is not None:
                    self.limits_table.clear_column(i)  # the connections it held are gone
                if time.monotonic() - self._last_spawn >= 1.0:
                    try:
                        self.procs[i] = self._spawn(i)
                    except OSError as e:
                        log.error("cannot restart a receiving process: {error}", error=e)
                        self.procs[i] = None

    def reload(self):
        """SIGHUP reaches the parent (the runner calls this): pass it on."""
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGHUP)

    @defer.inlineCallbacks
    def stopService(self):
        super().stopService()
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        live = [p for p in self.procs if p is not None and p.poll() is None]
        for p in live:
            p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + float(self.cfg.core.shutdown_grace) + 5
        while any(p.poll() is None for p in live) and time.monotonic() < deadline:
            yield task.deferLater(self.reactor, 0.1, lambda: None)
        for p in live:
            if p.poll() is None:
                p.kill()
                p.wait(5)
