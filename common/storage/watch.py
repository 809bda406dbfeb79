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
        self._hub: _InotifyHub | None = None
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
        hub = _InotifyHub.get(self.reactor)
        if hub is None:
            return
        try:
            for p in self.paths:
                hub.add(p, self)
        except Exception as e:  # out of watches, or the folder vanished: polling still runs
            log.info("inotify watch failed ({error}); polling only", error=str(e))
            for p in self.paths:
                hub.remove(p, self)
            return
        self._hub = hub

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
        if self._hub is not None:
            for p in self.paths:
                self._hub.remove(p, self)
            self._hub = None


class _InotifyHub:
    """One inotify instance per reactor, shared by every Watcher in the process, with
    one kernel watch per directory however many sessions watch it (the kernel allows
    only 128 inotify instances per user by default)."""

    _by_reactor: dict[int, "_InotifyHub | None"] = {}

    @classmethod
    def get(cls, reactor) -> "_InotifyHub | None":
        key = id(reactor)
        if key not in cls._by_reactor:
            try:
                cls._by_reactor[key] = cls(reactor)
            except Exception as e:  # not Linux, or no inotify instance left
                log.info("inotify unavailable ({error}); polling only", error=str(e))
                cls._by_reactor[key] = None
        return cls._by_reactor[key]

    def __init__(self, reactor):
        from twisted.internet import inotify
        self.inotify = inotify
        self.notifier = inotify.INotify(reactor)
        self.notifier.startReading()
        self.mask = (inotify.IN_CREATE | inotify.IN_MOVED_TO | inotify.IN_MOVED_FROM | inotify.IN_DELETE
                     | inotify.IN_CLOSE_WRITE | inotify.IN_ATTRIB)
        self.subscribers: dict[str, set[Watcher]] = {}

    def add(self, path: Path, watcher: Watcher) -> None:
        from twisted.python.filepath import FilePath
        key = str(path)
        fp = FilePath(key)
        # The kernel drops a watch when its directory is removed: watch again then.
        if key not in self.subscribers or self.notifier._isWatched(fp) is None:
            self.notifier.watch(fp, mask=self.mask, callbacks=[lambda _w, _p, _m, key=key: self._dispatch(key)])
            self.subscribers.setdefault(key, set())
        self.subscribers[key].add(watcher)

    def remove(self, path: Path, watcher: Watcher) -> None:
        from twisted.python.filepath import FilePath
        key = str(path)
        watchers = self.subscribers.get(key)
        if watchers is None:
            return
        watchers.discard(watcher)
        if not watchers:
            del self.subscribers[key]
            try:
                self.notifier.ignore(FilePath(key))
            except KeyError:
                pass

    def _dispatch(self, key: str) -> None:
        for watcher in list(self.subscribers.get(key, ())):
            watcher._schedule()
