"""mda.consumer -- the spool consumer: deliver the queue manager's hand-offs.

The queue manager writes mda/<handoff_id> (a `common.spool.Handoff`: which local
recipients of which spool file). For each one the consumer:

1. delivers every listed recipient with `mda.delivery` (in a thread pool, so the
   fsync waits of several hand-offs overlap); a worker delivers a batch of
   hand-offs, then fsyncs each maildir folder they wrote once;
2. writes mda-done/<handoff_id> with one `HandoffResult` per recipient, durably;
3. only then removes mda/<handoff_id>.

A crash at any point loses nothing: the request stays until its answer is durable.
A retry after a crash does not deliver a second copy: each file gets the
deterministic base name <handoff_id>.<recipient index>, and for hand-offs found at
start (the only ones an earlier run can have touched) each folder is checked for
it first; redirects and vacation replies leave markers (see mda.delivery). An
answer already in mda-done/ means only the removal was missed.

Hand-offs are picked up at once through inotify (Linux), and by a periodic scan
everywhere (the only way on FreeBSD, and a safety net).

POSTROOM_TEST_CRASH_AT (test only, never set in production): a comma-separated
list of points (start, after_deliver, before_results, after_results, after_remove)
where the process kills itself with SIGKILL, so tests can check the rules above.

SECURITY: hand-offs and spool files are written by the MTA's user and trusted as
far as their format goes; a hand-off that does not parse is moved to corrupt/.
Messages are untrusted and only passed to mda.delivery.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from common.errors import MailError
from common.fsutil import fsync_dir
from common.log import get_logger
from common.spool import (BOUNCED, DEFERRED, DELIVERED, CorruptSpoolFile, Handoff, HandoffResult, Spool, parse,
                          write_handoff_results)

from .delivery import Deliverer, DeliveryRequest

log = get_logger("mda.consumer")

#: hand-offs one worker delivers before answering them with one directory fsync
BATCH = 16
#: seconds before a batch that failed (disk full for the answers...) is tried again
RETRY_DELAY = 10.0

CRASH_POINTS = frozenset(os.environ.get("POSTROOM_TEST_CRASH_AT", "").replace(" ", "").split(",")) - {""}


def crash_point(name: str) -> None:
    """Test only: die here, as a power cut would, when POSTROOM_TEST_CRASH_AT names it."""
    if name in CRASH_POINTS:
        os.kill(os.getpid(), signal.SIGKILL)


class HandoffProcessor:
    """Delivers one hand-off at a time; safe to call from several threads."""

    def __init__(self, spool: Spool, deliverer: Deliverer, detail_folders: bool):
        self.spool = spool
        self.deliverer = deliverer
        self.detail_folders = detail_folders

    def process(self, handoff_id: str, retry: bool) -> list[HandoffResult] | None:
        """Deliver, answer, remove one hand-off. Returns the results (None if there was
        nothing to do)."""
        return self.process_batch([handoff_id], {handoff_id} if retry else set()).get(handoff_id)

    def process_batch(self, handoff_ids: list[str], retry: set[str]) -> dict[str, list[HandoffResult]]:
        """Deliver several hand-offs, then answer them all with one directory fsync
        (group commit), then remove them all with one more."""
        answers: dict[str, list[HandoffResult]] = {}
        finished: list[str] = []
        folders: set = set()   # maildir folders written, fsync'd once each below
        crash_point("start")
        for hid in handoff_ids:
            if self.spool.path("mda-done", hid).exists():
                finished.append(hid)   # answered before a crash; only the removal was missed
                continue
            handoff = self._read(hid)
            if handoff is None:
                continue
            answers[hid] = self.deliver_all(handoff, hid in retry, folders)
        for folder in folders:
            fsync_dir(folder)   # every delivery of the batch is on disk before any answer
        crash_point("before_results")
        if answers:
            for hid, results in answers.items():
                write_handoff_results(self.spool, hid, results, sync_dir=False)
            fsync_dir(self.spool.dir("mda-done"))
            fsync_dir(self.spool.dir("tmp"))
        crash_point("after_results")
        removed = False
        for hid in [*answers, *finished]:
            try:
                os.unlink(self.spool.path("mda", hid))
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(self.spool.dir("mda"))
        crash_point("after_remove")
        return answers

    def _read(self, handoff_id: str) -> Handoff | None:
        try:
            handoff = Handoff.from_json(self.spool.path("mda", handoff_id).read_bytes())
            if handoff.handoff_id != handoff_id or not isinstance(handoff.recipients, list):
                raise ValueError("hand-off id mismatch")
            return handoff
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            log.error("hand-off {hid} does not parse ({error}); moved to corrupt/", hid=handoff_id, error=str(e))
            self.spool.move(handoff_id, "mda", "corrupt")
            return None

    def deliver_all(self, handoff: Handoff, retry: bool, folders: set | None = None) -> list[HandoffResult]:
        """Deliver every listed recipient. With folders (a set) the maildir folders
        written are added there, not fsync'd: the caller fsyncs them before answering."""
        try:
            sf = parse(Path(handoff.spool_path))
            message = sf.read_message()
        except (CorruptSpoolFile, OSError) as e:
            log.error("hand-off {hid}: spool file unreadable: {error}", hid=handoff.handoff_id, error=str(e),
                      queue_id=handoff.queue_id)
            return [HandoffResult(i, DEFERRED, "4.3.0", "spool file unreadable") for i in handoff.recipients]
        env = sf.envelope
        results = []
        for index in handoff.recipients:
            if not isinstance(index, int) or not 0 <= index < len(env.recipients):
                log.error("hand-off {hid}: no recipient {index}", hid=handoff.handoff_id, index=index)
                continue
            rcpt = env.recipients[index]
            req = DeliveryRequest(
                message=message, sender=env.sender, recipient=rcpt.address, user=rcpt.mailbox,
                detail=rcpt.folder, original_recipient=rcpt.original, unique=f"{handoff.handoff_id}.{index}", retry=retry, trace_id=env.trace_id,
                sync_dirs=folders)
            try:
                report = self.deliverer.deliver(req)
            except MailError as e:
                state = DEFERRED if e.temporary else BOUNCED
                log.info("to=<{rcpt}> {state}: {code} {enhanced} {detail}", rcpt=rcpt.address, state=state,
                         code=e.code, enhanced=e.enhanced, detail=e.detail, queue_id=env.queue_id)
                results.append(HandoffResult(index, state, e.enhanced, e.public))
            except Exception as e:  # noqa: BLE001 - any unexpected error is a temporary failure
                log.failure("to=<{rcpt}> deferred: unexpected error", rcpt=rcpt.address, queue_id=env.queue_id)
                results.append(HandoffResult(index, DEFERRED, "4.3.0", f"temporary local problem ({type(e).__name__})"))
            else:
                where = ",".join(report.mailboxes) or ("redirected" if report.redirects else "discarded")
                log.info("to=<{rcpt}> delivered: {where}", rcpt=rcpt.address, where=where, queue_id=env.queue_id)
                results.append(HandoffResult(index, DELIVERED, "2.0.0", f"delivered to {where}"[:200]))
            crash_point("after_deliver")
        return results


class SpoolConsumer(Service):
    """Watches mda/ and feeds hand-offs to a pool of worker threads."""

    name = "mda-consumer"

    def __init__(self, spool: Spool, deliverer: Deliverer, cfg, reactor):
        self.spool = spool
        self.cfg = cfg
        self.reactor = reactor
        self.processor = HandoffProcessor(spool, deliverer, cfg.detail_folders)
        self.workers = cfg.consumer.workers
        self.pool = ThreadPool(minthreads=self.workers, maxthreads=self.workers, name="mda-delivery")
        self.in_flight: set[str] = set()
        self.may_be_partly_done: set[str] = set()
        self.resting: dict[str, float] = {}     # hand-offs that failed: not before this time
        self.watcher = None

    def startService(self) -> None:
        super().startService()
        self.spool.dir("mda").mkdir(parents=True, exist_ok=True)
        self.spool.dir("mda-done").mkdir(parents=True, exist_ok=True)
        # Anything here now may have been half done by an earlier run.
        self.may_be_partly_done = set(self.spool.list("mda"))
        self.pool.start()
        from common.storage.watch import Watcher
        self.watcher = Watcher([self.spool.dir("mda")], self.scan, self.reactor,
                               interval=float(self.cfg.consumer.scan_interval), settle=0.01)
        self.watcher.start()
        self.reactor.callLater(0, self.scan)

    def stopService(self):
        super().stopService()
        if self.watcher is not None:
            self.watcher.stop()
        self.pool.stop()   # waits for the hand-offs in flight

    def scan(self) -> None:
        if not self.running:
            return
        limit = self.workers * BATCH * 2
        batch: list[str] = []
        for hid in self.spool.list("mda"):
            if len(self.in_flight) + len(batch) >= limit:
                break
            if hid in self.in_flight:
                continue
            if hid in self.resting:
                if self.resting[hid] > self.reactor.seconds():
                    continue
                del self.resting[hid]
            batch.append(hid)
            if len(batch) >= BATCH:
                self._submit(batch)
                batch = []
        if batch:
            self._submit(batch)

    def _submit(self, batch: list[str]) -> None:
        self.in_flight.update(batch)
        retry = {h for h in batch if h in self.may_be_partly_done}
        d = deferToThreadPool(self.reactor, self.pool, self.processor.process_batch, batch, retry)
        d.addCallbacks(self._succeeded, self._failed, callbackArgs=(batch,), errbackArgs=(batch,))
        d.addBoth(self._done, batch)

    def _succeeded(self, _answers, batch: list[str]) -> None:
        self.may_be_partly_done.difference_update(batch)

    def _failed(self, failure, batch: list[str]) -> None:
        # The requests stay in mda/ and are tried again at the next scan; part of them
        # may have been delivered, so the next attempt looks for copies first.
        self.may_be_partly_done.update(batch)
        until = self.reactor.seconds() + RETRY_DELAY
        self.resting.update((h, until) for h in batch)
        log.failure("hand-offs {hids} not finished; will retry", failure, hids=" ".join(batch[:5]))

    def _done(self, _result, batch: list[str]) -> None:
        before = len(self.in_flight)
        self.in_flight.difference_update(batch)
        # Refill when falling below half of the limit (a scan lists mda/; doing it
        # after every batch cost more CPU than the deliveries with a long queue).
        # New hand-offs are noticed by the watcher in any case.
        if self.running and len(self.in_flight) < self.workers * BATCH <= before:
            self.scan()
