"""common.fshelper -- a child process that makes an event loop's blocking filesystem
calls: syncfs(2) when asked, and unlink(2) of files already taken out of their folders.

Why a process and not a thread: every os call releases Python's interpreter lock, and
while another thread of the process is runnable, getting it back costs the event loop a
futex round trip. With a syncfs thread and an unlink thread beside it, postroom-imapd's
reactor thread spent about a tenth more CPU per command than with none (every stat,
open and rename of a command paid it), and a thread doing a lock cycle of create and
unlink next to one busy thread measured 124 us of CPU where alone it took 14. A child
process shares no lock: the event loop only writes a request to a pipe and reads the
answer when the reactor says it is there.

The protocol, on the child's stdin and stdout, is records ending in NUL (a path holds
no NUL):

    b"S" + path   syncfs the filesystem holding path (a directory); answered, in the
                  order asked, by b"0" or the errno in decimal
    b"U" + path   unlink path; not answered (a file already gone was swept by someone
                  else)

The child reads what is there, makes the syncfs calls first (a session waits for their
answers), answers, then unlinks. It ends at end of input, after finishing what it read:
its parent closing the pipe or dying ends it.

The child is `common.fschild` (no Twisted in it: it starts in about 70 ms); this
module is the parent side, `FsHelper`.
"""

from __future__ import annotations

import errno
import os
import sys
from collections import deque

from twisted.internet.defer import Deferred
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger

from .fschild import MAX_RECORD

log = Logger()


class _Child(ProcessProtocol):
    def __init__(self, owner: FsHelper):
        self.owner = owner
        self.buf = b""

    def outReceived(self, data: bytes) -> None:
        self.buf += data
        *answers, self.buf = self.buf.split(b"\0")
        for answer in answers:
            self.owner._answered(self, answer)
        if len(self.buf) > MAX_RECORD:
            self.transport.signalProcess("KILL")

    def processEnded(self, reason) -> None:
        self.owner._ended(self)


class FsHelper:
    """The parent side: `syncfs(path)` returns a Deferred that fires once a syncfs of
    path's filesystem, asked after the call, has returned (errback with its OSError);
    `unlink(path)` hands the removal of a file over. The child is started at the first
    request and again after it ended; requests in flight when it ends fail with EIO
    (files not yet unlinked stay where they are, for the owner's sweep)."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.child: _Child | None = None
        self.transport = None
        self.waiting: deque[Deferred] = deque()
        self.started = 0  # children started (for tests)

    def syncfs(self, path: str | os.PathLike) -> Deferred:
        d = Deferred()
        try:
            self._send(b"S" + os.fsencode(path))
        except OSError as e:
            d.errback(e)
            return d
        self.waiting.append(d)
        return d

    def unlink(self, path: str | os.PathLike) -> None:
        try:
            self._send(b"U" + os.fsencode(path))
        except OSError:
            pass  # stays in tmp/ for the sweep

    def close(self) -> None:
        """End the child once it has done what it was asked (its input is closed)."""
        if self.transport is not None:
            self.transport.closeStdin()

    def _send(self, record: bytes) -> None:
        if b"\0" in record or len(record) > MAX_RECORD:
            raise OSError(errno.EINVAL, "unusable path for the filesystem helper")
        if self.child is None:
            self._start()
        self.transport.write(record + b"\0")

    def _start(self) -> None:
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        child = _Child(self)
        try:
            self.transport = self.reactor.spawnProcess(
                child, sys.executable, [sys.executable, "-m", "common.fschild"], env=env,
                childFDs={0: "w", 1: "r", 2: 2})
        except Exception as e:  # any failure to start is an I/O error to the caller
            raise OSError(errno.EIO, f"cannot start the filesystem helper: {e}") from e
        self.child = child
        self.started += 1
        log.debug("filesystem helper {pid} started", pid=self.transport.pid)

    def _answered(self, child: _Child, answer: bytes) -> None:
        if child is not self.child or not self.waiting:
            return
        d = self.waiting.popleft()
        if answer == b"0":
            d.callback(None)
        else:
            code = int(answer) if answer.isdigit() else errno.EIO
            d.errback(OSError(code, os.strerror(code)))

    def _ended(self, child: _Child) -> None:
        if child is not self.child:
            return
        self.child = self.transport = None
        waiting, self.waiting = self.waiting, deque()
        if waiting:
            log.warn("filesystem helper ended with {n} syncfs calls unanswered", n=len(waiting))
        for d in waiting:
            d.errback(OSError(errno.EIO, "the filesystem helper ended"))
