"""imapd.durable -- syncfs(2) off the event loop, one call for many sessions.

APPEND and COPY write their files and dovecot-uidlist records without waiting for
the disk; their OK must wait until a syncfs(2) of the mailbox's filesystem that
started after those writes has returned (common.storage.mailbox.save_messages).
A syncfs blocks for a disk flush (a journal commit), so it runs in a thread of its
own (not the reactor's pool, where password checks could hold it up), and the
sessions that wrote while one was running share the next one (group commit): the
event loop goes on answering other sessions, and a busy server makes one call per
flush, not one per message.

SECURITY: the paths are mailbox folders the storage layer validated; an error of
the call fails every command that relied on it (their writes may not be on disk).
"""

from __future__ import annotations

import os
import threading

from twisted.internet.defer import Deferred

from common.fsutil import syncfs


class GroupSyncfs:
    """`sync(path)` returns a Deferred that fires once a syncfs of path's filesystem,
    started after the call, has returned (errback with its OSError otherwise).

    The calls run in one thread of this object's own, woken by a condition variable
    and answering through reactor.callFromThread: Twisted's general thread pool
    cost about 90 us of CPU per round trip, more than the syncfs itself."""

    def __init__(self, reactor):
        self.reactor = reactor
        self.waiting: list[tuple[str, Deferred]] = []
        self.running = False
        self.calls = 0  # syncfs calls made (for tests and benchmarks)
        self._cond = threading.Condition()
        self._job: tuple[list[str], list[tuple[str, Deferred]]] | None = None
        self._thread: threading.Thread | None = None

    def sync(self, path: str) -> Deferred:
        d = Deferred()
        self.waiting.append((path, d))
        if not self.running:
            self._start()
        return d

    def _start(self) -> None:
        batch, self.waiting = self.waiting, []
        self.running = True
        by_device: dict[int, str] = {}
        for path, _d in batch:
            try:
                by_device.setdefault(os.stat(path).st_dev, path)
            except OSError:
                by_device.setdefault(-len(by_device) - 1, path)  # let syncfs report it
        self.calls += len(by_device)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="postroom-syncfs", daemon=True)
            self._thread.start()
        with self._cond:
            self._job = (list(by_device.values()), batch)
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._job is None:
                    self._cond.wait()
                paths, batch = self._job
                self._job = None
            error = None
            try:
                for path in paths:
                    syncfs(path)
            except OSError as e:
                error = e
            self.reactor.callFromThread(self._done, batch, error)

    def _done(self, batch, error: OSError | None) -> None:
        self.running = False
        if self.waiting:
            self._start()  # writes made during that call need one that starts now
        for _path, d in batch:
            if error is not None:
                d.errback(error)
            else:
                d.callback(None)
