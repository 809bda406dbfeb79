"""common.workers -- several processes of one daemon sharing its listening sockets.

The first process binds every listener as usual (while privileged), then starts N
copies of itself that inherit the listening sockets (their descriptors named in an
environment variable) and adopt them with `reactor.adoptStreamPort`. The kernel
hands each new connection to whichever process accepts it first, so every core
serves sessions. The first process then only supervises: it accepts nothing, starts
again a worker that died (at most once a second), passes SIGHUP on, and on SIGTERM
gives every worker SIGTERM and the configured grace. Workers die with their parent
(PR_SET_PDEATHSIG on Linux) and drop privileges through the same runner.

Processes share nothing in memory: what one changes reaches the others through the
files (a mailbox's maildir and index, the spool), which they watch.

SECURITY: workers are the same program with the same configuration; nothing but
socket descriptors (and what the caller adds) crosses the process boundary.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IStreamServerEndpoint
from zope.interface import implementer

from .log import get_logger

log = get_logger("postroom.workers")

#: connections one process accepts per wakeup on a shared listening socket
ACCEPTS_PER_WAKEUP = 1


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
            accept_few(port)
            return port
        return defer.execute(adopt)


def accept_few(port) -> None:
    """Twisted's Port accepts up to 100 waiting connections per wakeup (and raises its
    limit when it takes them all). On a socket several processes share, that lets the
    first process to wake take a whole burst onto one core. Resetting the limit before
    each read spreads a burst over the processes."""
    read = port.doRead

    def do_read():
        port.numberAccepts = ACCEPTS_PER_WAKEUP
        return read()

    port.doRead = do_read


def inherited_listeners(env_name: str) -> list[tuple[str, int]] | None:
    """In a worker: [(listener name, fd)] from the environment (removed from it);
    None in the first process."""
    spec = os.environ.pop(env_name, None)
    if spec is None:
        return None
    out = []
    for item in spec.split(","):
        name, _, fd = item.partition("=")
        out.append((name, int(fd)))
    return out


def worker_count(configured: int) -> int:
    """0 means one per CPU."""
    return configured if configured > 0 else (os.cpu_count() or 1)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class WorkerPool(Service):
    """Starts, watches and stops the worker processes of `module` (run with
    `python -m module --config DIR`)."""

    name = "workers"

    def __init__(self, cfg, listener_services, count: int, reactor, *, module: str, env_name: str,
                 prefix: str, what: str = "worker process",
                 extra: Callable[[int], tuple[dict[str, str], tuple[int, ...]]] | None = None,
                 on_exit: Callable[[int], None] | None = None):
        self.cfg = cfg
        self.listener_services = listener_services
        self.count = count
        self.reactor = reactor
        self.module = module
        self.env_name = env_name
        self.prefix = prefix  # listener service names are prefix + listener name
        self.what = what
        self.extra = extra      # per worker index: (environment, descriptors) to pass on
        self.on_exit = on_exit  # a worker of that index died
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
            self.fds[svc.name.removeprefix(self.prefix)] = port.fileno()
            self.ports.append(port)
        self.procs = [self._spawn(i) for i in range(self.count)]
        # This process keeps the sockets open (for restarts) but accepts nothing.
        for port in self.ports:
            port.stopReading()

    def _spawn(self, index: int) -> subprocess.Popen:
        env = dict(os.environ)
        if self.fds:
            env[self.env_name] = ",".join(f"{name}={fd}" for name, fd in self.fds.items())
        fds = tuple(self.fds.values())
        if self.extra is not None:
            more_env, more_fds = self.extra(index)
            env.update(more_env)
            fds += more_fds
        self._last_spawn = time.monotonic()
        proc = subprocess.Popen([sys.executable, "-m", self.module, "--config", str(self.cfg.dir)],
                                pass_fds=fds, env=env,
                                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
        log.info("{what} {pid} started", what=self.what, pid=proc.pid)
        return proc

    def startService(self):
        super().startService()
        self._watch = task.LoopingCall(self._check)
        self._watch.clock = self.reactor
        self._watch.start(1.0, now=False)

    def _check(self):
        for i, proc in enumerate(self.procs):
            if proc is not None and proc.poll() is not None:
                log.warn("{what} {pid} exited with {code}", what=self.what, pid=proc.pid, code=proc.returncode)
                if self.on_exit is not None:
                    self.on_exit(i)
                if time.monotonic() - self._last_spawn >= 1.0:
                    try:
                        self.procs[i] = self._spawn(i)
                    except OSError as e:
                        log.error("cannot restart a {what}: {error}", what=self.what, error=e)
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
