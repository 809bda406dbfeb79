"""imapd.durable -- syncfs(2) off the event loop, one call for many sessions.

APPEND and COPY write their files and dovecot-uidlist records without waiting for
the disk; their OK must wait until a syncfs(2) of the mailbox's filesystem that
started after those writes has returned (common.storage.mailbox.save_messages).
A syncfs blocks for a disk flush (a journal commit), so the process's filesystem
helper (common.fshelper, a child process: no thread shares the event loop's
interpreter lock) makes it, and the sessions that wrote while one was running share
the next one (group commit): the event loop goes on answering other sessions, and a
busy server makes one call per flush, not one per message.

SECURITY: the paths are mailbox folders the storage layer validated; an error of
the call fails every command that relied on it (their writes may not be on disk).
"""

from __future__ import annotations

import os

from twisted.internet.defer import Deferred, gatherResults

from common.fshelper import FsHelper


class GroupSyncfs:
    """`sync(path)` returns a Deferred that fires once a syncfs of path's filesystem,
    started after the call, has returned (errback with its OSError otherwise).

    One round of calls (one per filesystem) is in flight at a time; what is asked
    meanwhile waits for the next round, which starts when that one has answered."""

    def __init__(self, reactor, helper: FsHelper | None = None):
        self.reactor = reactor
        self.helper = helper if helper is not None else FsHelper(reactor)
        self.waiting: list[tuple[str, Deferred]] = []
        self.running = False
        self.calls = 0  # syncfs calls made (for tests and benchmarks)

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
        calls = [self.helper.syncfs(path) for path in by_device.values()]
        done = gatherResults(calls, consumeErrors=True)
        done.addCallbacks(lambda _: self._done(batch, None),
                          lambda f: self._done(batch, f.value.subFailure.value))

    def _done(self, batch, error: OSError | None) -> None:
        self.running = False
        if self.waiting:
            self._start()  # writes made during that call need one that starts now
        for _path, d in batch:
            if error is not None:
                d.errback(error)
            else:
                d.callback(None)
