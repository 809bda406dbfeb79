"""mta.receiver -- from a received message to a durable spool file (group commit).

`SpoolWriter.store(envelope, chunks)` writes the spool file in a worker thread
(temp file in tmp/, fsync, rename into incoming/), then, still in that thread,
waits for a directory fsync of incoming/ that started after its rename
(`DirectoryCommit`). One directory fsync covers every file renamed before it
began, so concurrent sessions share it: while one runs, the next batch gathers.
File fsyncs run concurrently in the thread pool so the filesystem's journal
commits them together too, and each message costs one hand-off to a thread. Nothing is acknowledged
before both the file and the directory entry are on disk.

Out of disk space (ENOSPC, EDQUOT) is 452 4.3.1 with nothing left behind (the
temporary file is removed); any other failure is 451 4.3.0.

SECURITY: spool files are created 0600 by common.spool; the envelope is JSON data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from twisted.internet import defer
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from common.errors import MailError, TemporaryError, unexpected
from common.fsutil import is_no_space
from common.log import get_logger
from common.spool import Envelope, Spool

log = get_logger("postroom.mta.receiver")

NO_SPACE = TemporaryError(452, "4.3.1", "Insufficient system storage")


class DirectoryCommit:
    """Group commit of one directory's fsync among worker threads (leader/follower).

    A thread that renamed a file into the directory calls wait_durable(). If no
    fsync of the directory is running it runs one itself (the leader), covering
    every rename announced before it started; otherwise it waits for the running
    one and, if that began before its own rename, for the next. A failed fsync
    fails its leader; the followers then try again themselves."""

    def __init__(self, sync: Callable[[], None]):
        self._sync = sync
        self._cond = threading.Condition()
        self._announced = 0   # renames announced so far
        self._durable = 0     # renames up to this number are on disk
        self._leading = False
        self.fsyncs = 0

    def wait_durable(self) -> None:
        with self._cond:
            self._announced += 1
            mine = self._announced
            while self._durable < mine:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                target = self._announced
                self._cond.release()
                try:
                    self._sync()
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
                # Only reached when the fsync succeeded.
                self.fsyncs += 1
                self._durable = max(self._durable, target)


class SpoolWriter:
    """Durable spool writes with a shared directory fsync (group commit)."""

    def __init__(self, spool: Spool, reactor, threads: int = 32, queue: str = "incoming",
                 on_commit: Callable[[int], None] | None = None):
        self.spool = spool
        self.reactor = reactor
        self.queue = queue
        self.on_commit = on_commit
        self.pool = ThreadPool(minthreads=min(4, threads), maxthreads=threads, name="spool")
        self.commit = DirectoryCommit(lambda: spool.sync(queue))
        self._started = False
        self.committed = 0

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        if self._started:
            self._started = False
            self.pool.stop()

    def store(self, envelope: Envelope, chunks: Sequence[bytes]) -> defer.Deferred:
        """Write envelope + message durably into the queue. Fires with the queue ID
        once file and directory are fsync'd; errbacks with a MailError."""
        self.start()
        envelope.size = sum(len(c) for c in chunks)
        d = deferToThreadPool(self.reactor, self.pool, self._write_durably, envelope, chunks)
        d.addCallbacks(self._stored, self._failed, callbackArgs=(envelope.queue_id,))
        return d

    def _write_durably(self, envelope: Envelope, chunks: Sequence[bytes]) -> None:
        """In a worker thread: write, fsync and rename the file, then wait for a
        directory fsync that covers the rename."""
        path = self.spool.write(envelope, chunks, self.queue, sync_dir=False)
        try:
            self.commit.wait_durable()
        except BaseException:
            # The client will hear a temporary failure: take the file back so its
            # retry does not become a second copy.
            try:
                os.unlink(path)
            except OSError:
                pass
            raise

    def _stored(self, _result, queue_id: str) -> str:
        self.committed += 1
        if self.on_commit is not None:
            # Not now: a call made here (even callLater(0)) runs before this reactor
            # turn writes the 250 to the socket, so the queue manager's scan and file
            # reads would sit in every client's latency. callFromThread queues it
            # behind the next poll, which sends the replies first.
            self.reactor.callFromThread(self._notify_commit)
        return queue_id

    def _notify_commit(self) -> None:
        try:
            self.on_commit(1)
        except Exception:
            log.failure("on_commit failed")

    def _failed(self, failure: Failure):
        exc = failure.value
        if is_no_space(exc):
            log.error("spool write failed, disk full: {error}", error=str(exc))
            raise NO_SPACE
        if isinstance(exc, MailError):
            return failure
        log.failure("spool write failed", failure)
        raise unexpected(exc)
