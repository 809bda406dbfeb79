"""mta.receiver -- from a received message to a durable spool file (group commit).

`SpoolWriter.store(envelope, chunks)` writes the spool file in a worker thread
(temp file in tmp/, fsync, rename into incoming/), then waits for a directory fsync
of incoming/ that started after its rename. One directory fsync covers every file
renamed before it began, so concurrent sessions share it: while one directory
fsync runs, the next batch gathers, and all of a batch's 250 replies go out
together when it is done. File fsyncs run concurrently in a small thread pool so
the filesystem's journal commits them together too. Nothing is acknowledged
before both the file and the directory entry are on disk.

Out of disk space (ENOSPC, EDQUOT) is 452 4.3.1 with nothing left behind (the
temporary file is removed); any other failure is 451 4.3.0.

SECURITY: spool files are created 0600 by common.spool; the envelope is JSON data.
"""

from __future__ import annotations

import os
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


class SpoolWriter:
    """Durable spool writes with a shared directory fsync (group commit)."""

    def __init__(self, spool: Spool, reactor, threads: int = 16, queue: str = "incoming",
                 on_commit: Callable[[int], None] | None = None):
        self.spool = spool
        self.reactor = reactor
        self.queue = queue
        self.on_commit = on_commit
        self.pool = ThreadPool(minthreads=min(4, threads), maxthreads=threads, name="spool")
        self._started = False
        self._gathering: list[tuple[defer.Deferred, str]] = []
        self._syncing = False
        self.batches = 0
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
        d = deferToThreadPool(self.reactor, self.pool, self.spool.write, envelope, chunks,
                              self.queue, False)
        d.addCallbacks(self._written, self._write_failed, callbackArgs=(envelope.queue_id,))
        return d

    def _write_failed(self, failure: Failure):
        exc = failure.value
        if is_no_space(exc):
            log.error("spool write failed, disk full: {error}", error=str(exc))
            raise NO_SPACE
        if isinstance(exc, MailError):
            return failure
        log.failure("spool write failed", failure)
        raise unexpected(exc)

    def _written(self, _path, queue_id: str) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self._gathering.append((d, queue_id))
        if not self._syncing:
            self._sync_batch()
        return d

    def _sync_batch(self) -> None:
        batch, self._gathering = self._gathering, []
        self._syncing = True
        dsync = deferToThreadPool(self.reactor, self.pool, self.spool.sync, self.queue)
        dsync.addBoth(self._synced, batch)

    def _synced(self, result, batch: list[tuple[defer.Deferred, str]]) -> None:
        self._syncing = False
        self.batches += 1
        if isinstance(result, Failure):
            log.failure("fsync of the spool directory failed", result)
            error = NO_SPACE if is_no_space(result.value) else unexpected(result.value)
            for d, queue_id in batch:
                # The reply is a temporary failure: take the file back so the
                # client's retry does not become a second copy.
                try:
                    os.unlink(self.spool.path(self.queue, queue_id))
                except OSError:
                    pass
                d.errback(error)
        else:
            self.committed += len(batch)
            for d, queue_id in batch:
                d.callback(queue_id)
            if self.on_commit is not None:
                try:
                    self.on_commit(len(batch))
                except Exception:
                    log.failure("on_commit failed")
        if self._gathering:
            self._sync_batch()
