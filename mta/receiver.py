"""mta.receiver -- from a received message to a durable spool file (group commit).

`SpoolWriter.store(envelope, chunks)` queues the message; whenever fewer than
`threads` batches are being written, everything queued goes to a worker thread as
one batch. The thread writes each spool file (temp file in tmp/, rename into
incoming/), then waits for a sync that started after its renames
(`DirectoryCommit`): on Linux one syncfs(2) of the spool's filesystem, which makes
the files and their directory entries durable in one call (a file fsync each and a
directory fsync cost a context switch and a device flush each: 13 context switches
per message in a receiving process against 7); elsewhere each file is fsync'd
before its rename and the sync is a directory fsync of incoming/. One sync covers
every file renamed before it began, so concurrent batches share it. Under load a
batch holds every message that arrived while the others were being written, so a
message costs a fraction of a hand-off to a thread and back (each hand-off is a
lock handshake with the reactor, which was most of the CPU the receiving side
spent per message beyond the protocol). Nothing is acknowledged before both the
file and the directory entry are on disk.

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
from common.fsutil import HAVE_SYNCFS, is_no_space, syncfs
from common.log import get_logger
from common.spool import Envelope, Spool

log = get_logger("postroom.mta.receiver")

NO_SPACE = TemporaryError(452, "4.3.1", "Insufficient system storage")

#: Seconds the latest batch must have been writing before another starts beside it.
STAGGER = 0.002


class DirectoryCommit:
    """Group commit of one directory's fsync among worker threads (leader/follower).

    (The sync is the caller's: a directory fsync, or a syncfs(2) that covers the
    files too.) A thread that renamed a file into the directory calls
    wait_durable(). If no fsync of the directory is running it runs one itself (the leader), covering
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
    """Durable spool writes: batches handed to a few threads, a shared directory
    fsync (group commit)."""

    def __init__(self, spool: Spool, reactor, threads: int = 4, queue: str = "incoming",
                 on_commit: Callable[[int], None] | None = None):
        self.spool = spool
        self.reactor = reactor
        self.queue = queue
        self.on_commit = on_commit
        self.threads = threads
        self.pool = ThreadPool(minthreads=min(4, threads), maxthreads=threads, name="spool")
        self.commit = DirectoryCommit(self._sync_directory)
        self._dir_fd: int | None = None
        self._pending: list[tuple[Envelope, Sequence[bytes], defer.Deferred]] = []
        self._running = 0
        self._last_hand_over = 0.0
        self._recheck = None
        self._started = False
        self.committed = 0

    def start(self) -> None:
        if not self._started:
            self.pool.start()
            self._started = True

    def stop(self) -> None:
        if self._recheck is not None and self._recheck.active():
            self._recheck.cancel()
        self._recheck = None
        if self._started:
            self._started = False
            self.pool.stop()
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None

    def _sync_directory(self) -> None:
        """fsync the queue directory through a descriptor kept open (no open/close each time);
        with syncfs(2), sync the spool's filesystem: the batch's files and their entries."""
        if HAVE_SYNCFS:
            syncfs(self.spool.root)
            return
        if self._dir_fd is None:
            self._dir_fd = os.open(self.spool.dir(self.queue), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        os.fsync(self._dir_fd)

    def store(self, envelope: Envelope, chunks: Sequence[bytes]) -> defer.Deferred:
        """Write envelope + message durably into the queue. Fires with the queue ID
        once file and directory are fsync'd; errbacks with a MailError."""
        self.start()
        envelope.size = sum(len(c) for c in chunks)
        d = defer.Deferred()
        self._pending.append((envelope, chunks, d))
        self._maybe_hand_over()
        return d

    def _maybe_hand_over(self) -> None:
        """Start a batch now if no batch is being written; if some are, start another
        beside them only once the latest has taken longer than STAGGER (the disk is
        slow: parallel fsyncs pay), and look again then. On a fast disk one batch at
        a time takes everything, and a message costs the least CPU."""
        if not self._pending or self._running >= self.threads:
            return
        waited = self.reactor.seconds() - self._last_hand_over
        if self._running == 0 or waited >= STAGGER:
            self._hand_over()
        elif self._recheck is None:
            self._recheck = self.reactor.callLater(STAGGER - waited, self._recheck_fired)

    def _recheck_fired(self) -> None:
        self._recheck = None
        self._maybe_hand_over()

    def _hand_over(self) -> None:
        """Give everything waiting to one thread: one hand-off, and one answer back,
        per batch instead of per message (each costs the reactor a lock handshake)."""
        batch, self._pending = self._pending, []
        self._running += 1
        self._last_hand_over = self.reactor.seconds()
        d = deferToThreadPool(self.reactor, self.pool, self._write_batch, [(e, c) for e, c, _ in batch])
        d.addBoth(self._batch_done, batch)

    def _write_batch(self, jobs) -> list:
        """In a worker thread: write and rename each file (fsync'd first where there is
        no syncfs), then wait for a sync that covers the renames. One outcome per job:
        None or the exception."""
        written = self.spool.write_many(jobs, self.queue, sync=not HAVE_SYNCFS)
        paths = [p for p in written if not isinstance(p, Exception)]
        outcomes: list = [p if isinstance(p, Exception) else None for p in written]
        if paths:
            try:
                self.commit.wait_durable()
            except Exception as e:
                # The clients will hear a temporary failure: take the files back so
                # their retries do not become second copies.
                for path in paths:
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                outcomes = [o if o is not None else e for o in outcomes]
        return outcomes

    def _batch_done(self, outcomes, batch) -> None:
        self._running -= 1
        self._maybe_hand_over()
        if isinstance(outcomes, Failure):  # the thread itself failed: every job fails
            outcomes = [outcomes.value] * len(batch)
        stored = 0
        for (envelope, _chunks, d), outcome in zip(batch, outcomes):
            if outcome is None:
                stored += 1
                self.committed += 1
                d.callback(envelope.queue_id)
            else:
                try:
                    self._failed(outcome)
                except MailError as error:
                    d.errback(error)
        if stored and self.on_commit is not None:
            # Not now: a call made here (even callLater(0)) runs before this reactor
            # turn writes the replies to the sockets, so the queue manager's scan and
            # file reads would sit in every client's latency. callFromThread queues it
            # behind the next poll, which sends the replies first.
            self.reactor.callFromThread(self._notify_commit, stored)

    def _notify_commit(self, count: int) -> None:
        try:
            self.on_commit(count)
        except Exception:
            log.failure("on_commit failed")

    def _failed(self, exc: BaseException):
        if is_no_space(exc):
            log.error("spool write failed, disk full: {error}", error=str(exc))
            raise NO_SPACE
        if isinstance(exc, MailError):
            raise exc
        log.failure("spool write failed", Failure(exc))
        raise unexpected(exc)
