"""common.storage.watch -- tell a session when its mailbox changed on disk.

inotify (twisted.internet.inotify) on Linux reports new, renamed and removed files in
new/ and cur/ at once; a periodic check of the directories' modification times runs
everywhere as the fallback (FreeBSD, or when inotify is unavailable or out of
watches). Bursts are coalesced: the callback runs once per `settle` seconds at most.
The callback takes no arguments; it should call Mailbox.sync().

SECURITY: trusts nothing in the events but the fact that something changed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

from twisted.internet.task import LoopingCall
from twisted.logger import Logger

log = Logger(namespace="storage.watch")


def _stamp(paths: list[Path]) -> tuple:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


class Watcher:
    def __init__(self, paths: Iterable[Path], callback: Callable[[], object], reactor, interval: float = 5.0,
                 settle: float = 0.02, use_inotify: bool = True):
        self.paths = [Path(p) for p in paths]
        self.callback = callback
        self.reactor = reactor
        self.interval = interval
        self.settle = settle
        self.use_inotify = use_inotify
        self._notifier = None
        self._loop: LoopingCall | None = None
        self._pending = None
        self._stamp: tuple = ()
        self.running = False

    def start(self) -> "Watcher":
        if self.running:
            return self
        self.running = True
        self._stamp = _stamp(self.paths)
        if self.use_inotify:
            self._start_inotify()
        self._loop = LoopingCall(self._poll)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=False)
        return self

    def _start_inotify(self) -> None:
        try:
            from twisted.internet import inotify
            from twisted.python import filepath
        except ImportError:
            return
        try:
            notifier = inotify.INotify(self.reactor)
            notifier.startReading()
            mask = (inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
                    | inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB)
            for p in self.paths:
                notifier.watch(filepath.FilePath(str(p)), mask=mask, callbacks=[self._event])
        except Exception as e:  # no inotify here, or out of watches: polling still runs
            log.info("inotify unavailable ({error}); polling only", error=str(e))
            try:
                notifier.loseConnection()
            except Exception:
                pass
            return
        self._notifier = notifier

    def _event(self, _watch, _path, _mask) -> None:
        self._schedule()

    def _poll(self) -> None:
        stamp = _stamp(self.paths)
        if stamp != self._stamp:
            self._stamp = stamp
            self._schedule()

    def _schedule(self) -> None:
        if self._pending is None and self.running:
            self._pending = self.reactor.callLater(self.settle, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self._stamp = _stamp(self.paths)
        try:
            self.callback()
        except Exception:
            log.failure("mailbox change callback failed")

    def stop(self) -> None:
        self.running = False
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        if self._notifier is not None:
            self._notifier.loseConnection()
            self._notifier = None
