"""mda.groupsync -- make a batch of writes durable together (group commit).

The spool consumer writes many small files per batch (plans, maildir files) and may
tell nobody about any of them until all are on disk. `GroupSync` collects the files
and folders written without fsync and makes them durable in `flush()`:

- on Linux, one syncfs(2) per filesystem they are on: it writes back every dirty
  page and inode of that filesystem and commits its journal, so a batch of files
  and their directory entries costs one call (and one journal commit) instead of
  one fsync per file and folder; since Linux 5.8 it reports writeback errors;
- elsewhere (no syncfs), each file and folder is fsync'd once.

Threads that flush at the same time can share their syncfs calls through one
`SharedSyncfs` (the consumer's workers, the LMTP sessions): one call then makes
the writes of every thread that was waiting durable.

An error from either fails the flush: nothing of the batch may be acknowledged.

SECURITY: paths come from this daemon's own writes; nothing here is followed
through a symlink (files are opened with O_NOFOLLOW).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from common.fsutil import HAVE_SYNCFS, fsync_dir, syncfs


class SharedSyncfs:
    """syncfs(2) shared among threads (leader/follower group commit).

    A thread whose writes must become durable needs a syncfs of their filesystem
    that *starts* after them. If none is running it runs one itself; if one is
    running (it may have started before the writes) it waits for it to end, then
    for the next one, which it or another waiting thread starts. So while one
    syncfs runs, every thread that wrote meanwhile is made durable by the next
    single call. An error of a call goes to every thread that relied on it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._started: dict[int, int] = {}      # device -> generation of the last call started
        self._finished: dict[int, int] = {}     # device -> generation of the last call ended
        self._running: set[int] = set()
        self._errors: dict[tuple[int, int], OSError] = {}

    def sync(self, device: int, directory: str) -> None:
        with self._cond:
            need = self._started.get(device, 0) + 1
            while self._finished.get(device, 0) < need:
                if device in self._running:
                    self._cond.wait()
                    continue
                generation = self._started.get(device, 0) + 1
                self._started[device] = generation
                self._running.add(device)
                self._cond.release()
                error = None
                try:
                    syncfs(directory)
                except OSError as e:
                    error = e
                finally:
                    self._cond.acquire()
                    self._running.discard(device)
                    self._finished[device] = generation
                    if error is not None:
                        self._errors[(device, generation)] = error
                    self._cond.notify_all()
            error = self._errors.get((device, need))
            # keep the errors a waiting thread may still have to see
            for key in [k for k in self._errors if k[0] == device and k[1] < need - 64]:
                del self._errors[key]
        if error is not None:
            raise error


class GroupSync:
    def __init__(self, use_syncfs: bool = True, shared: SharedSyncfs | None = None) -> None:
        self.use_syncfs = use_syncfs and HAVE_SYNCFS
        self.shared = shared
        #: new exactly-once plans by key, for the caller to record (mda.journal) and
        #: make durable with the rest
        self.plans: dict = {}
        self.files: list[str] = []
        self.dirs: set[str] = set()

    def add_file(self, path: str | Path) -> None:
        """A file written (and renamed into place) without fsync."""
        path = os.fspath(path)
        self.files.append(path)
        self.dirs.add(os.path.dirname(path))

    def add_dir(self, path: str | Path) -> None:
        """A folder whose new entries are not yet durable."""
        self.dirs.add(os.fspath(path))

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs)

    def flush(self) -> None:
        """Every file and folder collected is durable on return."""
        if not self.dirs:
            return
        if self.use_syncfs:
            by_device: dict[int, str] = {}
            for d in self.dirs:
                by_device.setdefault(os.stat(d).st_dev, d)
            for device, d in by_device.items():
                if self.shared is not None:
                    self.shared.sync(device, d)
                else:
                    syncfs(d)
        else:
            for path in self.files:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            for d in self.dirs:
                fsync_dir(d)
        self.files.clear()
        self.dirs.clear()
