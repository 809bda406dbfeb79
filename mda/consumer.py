"""mda.consumer -- the spool consumer: deliver the queue manager's hand-offs.

The queue manager writes request files into mda/, each holding the hand-offs of the
messages it loaded together (`common.spool.Handoff`: which local recipients of which
spool file; the file is named by the first). A worker takes a batch of request
files and:

1. decides every listed recipient's delivery (`Deliverer.prepare`: the plan an
   earlier attempt recorded, else Sieve's, recorded in the journal) and makes the
   new plans durable together;
2. carries the plans out (`Deliverer.commit`) and makes every maildir write of the
   batch durable together;
3. answers each request in mda-done/<its name>, with one `HandoffResult` per
   recipient of each hand-off in it, durably;
4. only then removes the request files, and forgets the plans of recipients
   answered for good (delivered or bounced).

Each step's writes are made durable together (mda.groupsync: one syncfs(2) per
filesystem on Linux) before the next step starts.

A crash at any point loses nothing: the request stays until its answer is durable.
No attempt delivers a second copy: the plan is keyed by the spool file's queue ID
and the recipient's index, not by the hand-off (the queue manager makes a new one
per attempt), and every attempt looks for it first (see mda.delivery). An answer
already in mda-done/ means only the removal was missed.

With consumer.processes above one, that many consumer processes share mda/, each
taking the request files of its share (`partition_of`). A request holds several
messages, so a later attempt for one of them may reach another process than the
first: for a recipient with an earlier answer, memory lacking its plan, the
journal's folder is read again (mda.journal).

Hand-offs are picked up at once through inotify (Linux), and by a scan every
scan_interval everywhere, whether or not the folder changed (the only way on
FreeBSD, and how a batch that failed, say for a full disk, is tried again while
nothing else happens).

POSTROOM_TEST_CRASH_AT (test only, never set in production; see mda.crashpoints)
names points where the process kills itself with SIGKILL: start, after_plans,
inside_write, between_folders, after_deliver, after_maildrop, before_results,
after_results, after_remove.

SECURITY: hand-offs and spool files are written by the MTA's user and trusted as
far as their format goes; a hand-off that does not parse is moved to corrupt/.
Messages are untrusted and only passed to mda.delivery.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from common.errors import MailError
from common.fsutil import fsync_dir
from common.log import get_logger
from common.spool import (BOUNCED, DEFERRED, DELIVERED, CorruptSpoolFile, Handoff, HandoffResult, Spool, parse,
                          read_handoff_answers, read_handoff_request, watch_queues, write_handoff_answers)

from .crashpoints import crash_point
from .delivery import Deliverer, DeliveryRequest, Prepared
from .groupsync import GroupSync
from .journal import key_of

log = get_logger("mda.consumer")

#: hand-offs one worker delivers before answering them together (one group commit per step;
#: 64 measured steadier and faster than 16: 1,618 against 1,418 msg/s, medians of 3)
BATCH = 64
#: seconds a scan waits after the first new hand-off, for the rest of a burst
SETTLE = 0.01
#: seconds between two prunings of the delivery journal (besides the one at start)
PRUNE_INTERVAL = 86400.0


def partition_of(handoff_id: str, processes: int) -> int:
    """Which of several consumer processes takes a request file: by the queue ID of its
    first hand-off (named <queue ID>.<attempt>), so a request retried after a crash
    goes to the same process."""
    return zlib.crc32(handoff_id.split(".", 1)[0].encode()) % processes


class HandoffProcessor:
    """Delivers batches of hand-offs; safe to call from several threads."""

    def __init__(self, spool: Spool, deliverer: Deliverer, detail_folders: bool, forget=None):
        self.spool = spool
        self.deliverer = deliverer
        self.detail_folders = detail_folders
        # per-message paths as strings (pathlib's joins cost more than the calls)
        self.mda_dir = str(spool.dir("mda"))
        self.done_dir = str(spool.dir("mda-done"))
        #: called with the keys whose plans are no longer needed (default: at once)
        self.forget = forget or self.forget_plans

    def forget_plans(self, keys: list[str]) -> None:
        self.deliverer.journal.forget(keys)

    def process(self, handoff_id: str) -> list[HandoffResult] | None:
        """Deliver, answer, remove one hand-off. Returns the results (None if there was
        nothing to do)."""
        return self.process_batch([handoff_id]).get(handoff_id)

    def process_batch(self, names: list[str]) -> dict[str, list[HandoffResult]]:
        """Deliver the hand-offs of several request files, then answer each hand-off
        (one group commit), then remove the requests (one more). Returns the results
        by hand-off ID."""
        requests: list[str] = []  # the request files read: removed once every hand-off in them is answered
        final: list[str] = []    # exactly-once keys answered for good: their plans go
        work: list[tuple[str, Handoff, list]] = []   # (hid, hand-off, slots)
        group = GroupSync(shared=self.deliverer.shared_sync)
        crash_point("start")
        for name in names:
            handoffs = self._read(name)
            if handoffs is None:
                continue
            requests.append(name)
            if os.path.exists(os.path.join(self.done_dir, name)):
                # answered before a crash; only the request's removal was missed
                final += self._answered_for_good(name, handoffs)
                continue
            work.append((name, handoffs, [self.prepare_all(handoff, group) for handoff in handoffs]))
        self.deliverer.record_plans(group)
        group.flush()            # every new plan is durable before the first write
        crash_point("after_plans")
        answers: dict[str, list[HandoffResult]] = {}
        by_request: list[tuple[str, list[str]]] = []
        for name, handoffs, slots_of in work:
            for handoff, slots in zip(handoffs, slots_of):
                answers[handoff.handoff_id] = results = [self._commit(slot, group) for slot in slots]
                final += [slot[0].req.key for slot, result in zip(slots, results)
                          if isinstance(slot[0], Prepared) and result.state != DEFERRED]
            by_request.append((name, [h.handoff_id for h in handoffs]))
        group.flush()            # every delivery of the batch is on disk before any answer
        crash_point("before_results")
        if by_request:
            for name, hids in by_request:   # one answer file per request
                group.add_file(write_handoff_answers(self.spool, name, {hid: answers[hid] for hid in hids},
                                                     sync_dir=False, sync_file=False))
            group.add_dir(self.spool.dir("tmp"))
            group.flush()
        crash_point("after_results")
        removed = False
        for name in requests:
            try:
                os.unlink(os.path.join(self.mda_dir, name))
                removed = True
            except FileNotFoundError:
                pass
        if removed:
            fsync_dir(self.mda_dir)
        crash_point("after_remove")
        # Answered for good and the request gone for good: the plans are not needed
        # again (one left by a crash just here is pruned by age).
        if final:
            self.forget(final)
        return answers

    def _answered_for_good(self, name: str, handoffs: list[Handoff]) -> list[str]:
        """The keys of an answered request's recipients that were delivered or bounced."""
        try:
            answers = read_handoff_answers(name, self.spool.path("mda-done", name))
        except (OSError, ValueError, TypeError, KeyError):
            return []
        return [key_of(h.queue_id, r.rcpt) for h in handoffs for r in answers.get(h.handoff_id, ())
                if r.state != DEFERRED]

    def _read(self, name: str) -> list[Handoff] | None:
        """The hand-offs of request file mda/<name> (None: gone, or moved to corrupt/)."""
        try:
            fd = os.open(os.path.join(self.mda_dir, name), os.O_RDONLY | os.O_CLOEXEC)
            try:
                data = os.read(fd, 1 << 20)
            finally:
                os.close(fd)
            handoffs = read_handoff_request(name, data)
            for handoff in handoffs:
                key_of(handoff.queue_id, 0)
            return handoffs
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            log.error("hand-off {hid} does not parse ({error}); moved to corrupt/", hid=name, error=str(e))
            self.spool.move(name, "mda", "corrupt")
            return None

    def prepare_all(self, handoff: Handoff, group: GroupSync) -> list:
        """Decide every listed recipient: a list of (Prepared or HandoffResult, index,
        address, log context), the new plans added to group."""
        try:
            sf = parse(Path(handoff.spool_path), keep_message=sys.maxsize)   # one read for both
            message = sf.read_message()
        except (CorruptSpoolFile, OSError) as e:
            log.error("hand-off {hid}: spool file unreadable: {error}", hid=handoff.handoff_id, error=str(e),
                      queue_id=handoff.queue_id)
            return [(HandoffResult(i, DEFERRED, "4.3.0", "spool file unreadable"), i, "", {})
                    for i in handoff.recipients]
        env = sf.envelope
        slots = []
        for index in handoff.recipients:
            if not isinstance(index, int) or not 0 <= index < len(env.recipients):
                log.error("hand-off {hid}: no recipient {index}", hid=handoff.handoff_id, index=index,
                          queue_id=env.queue_id, trace_id=env.trace_id)
                continue
            rcpt = env.recipients[index]
            req = DeliveryRequest(
                message=message, sender=env.sender, recipient=rcpt.address, user=rcpt.mailbox,
                detail=rcpt.folder, original_recipient=rcpt.original, key=key_of(handoff.queue_id, index),
                trace_id=env.trace_id, queue_id=env.queue_id, group=group, retry=rcpt.attempts > 0)
            ctx = req.log_context()
            try:
                slots.append((self.deliverer.prepare(req), index, rcpt.address, ctx))
            except Exception as e:  # noqa: BLE001 - reported as the recipient's result
                slots.append((self._failed(e, index, rcpt.address, ctx), index, rcpt.address, ctx))
        return slots

    def _commit(self, slot, group: GroupSync) -> HandoffResult:
        prepared, index, address, ctx = slot
        if isinstance(prepared, HandoffResult):
            return prepared
        try:
            report = self.deliverer.commit(prepared)
        except Exception as e:  # noqa: BLE001 - reported as the recipient's result
            return self._failed(e, index, address, ctx)
        finally:
            crash_point("after_deliver")
        where = ",".join(report.mailboxes) or ("redirected" if report.redirects else "discarded")
        log.info("to=<{rcpt}> delivered: {where}", rcpt=address, where=where, **ctx)
        return HandoffResult(index, DELIVERED, "2.0.0", f"delivered to {where}"[:200])

    @staticmethod
    def _failed(e: Exception, index: int, address: str, ctx: dict) -> HandoffResult:
        if isinstance(e, MailError):
            state = DEFERRED if e.temporary else BOUNCED
            log.info("to=<{rcpt}> {state}: {code} {enhanced} {detail}", rcpt=address, state=state,
                     code=e.code, enhanced=e.enhanced, detail=e.detail, **ctx)
            return HandoffResult(index, state, e.enhanced, e.public)
        # Any unexpected error is a temporary failure (called in the except block).
        log.failure("to=<{rcpt}> deferred: unexpected error", rcpt=address, **ctx)
        return HandoffResult(index, DEFERRED, "4.3.0", f"temporary local problem ({type(e).__name__})")


class SpoolConsumer(Service):
    """Watches mda/ and feeds hand-offs to a pool of worker threads."""

    name = "mda-consumer"

    def __init__(self, spool: Spool, deliverer: Deliverer, cfg, reactor, use_inotify: bool = True,
                 partition: tuple[int, int] = (0, 1)):
        self.spool = spool
        self.partition = partition
        self.cfg = cfg
        self.reactor = reactor
        # Plans are removed by the reactor's thread pool, off the deliveries' path
        # (an unlink waits for the filesystem's journal like an fsync does).
        self.processor = HandoffProcessor(
            spool, deliverer, cfg.detail_folders,
            forget=lambda keys: reactor.callFromThread(reactor.callInThread, self.processor.forget_plans, keys))
        self.workers = cfg.consumer.workers
        self.interval = float(cfg.consumer.scan_interval)
        self.use_inotify = use_inotify
        self.pool = ThreadPool(minthreads=self.workers, maxthreads=self.workers, name="mda-delivery")
        self.in_flight: set[str] = set()
        self.resting: dict[str, float] = {}     # hand-offs that failed: not before this time
        self.watcher = None
        self.settling = None
        self.loop: LoopingCall | None = None
        self.prune_loop: LoopingCall | None = None

    def startService(self) -> None:
        super().startService()
        self.spool.dir("mda").mkdir(parents=True, exist_ok=True)
        self.spool.dir("mda-done").mkdir(parents=True, exist_ok=True)
        self._prune()
        self.pool.start()
        # inotify for prompt pickup of new hand-offs (not of removals: those of every
        # process woke every process and cost a scan each); the loop below scans every
        # interval whatever changed, so failed batches are tried again.
        if self.use_inotify:
            try:
                self.watcher = watch_queues(self.spool, ["mda"], self.reactor, self._changed)
            except OSError as e:
                log.info("no inotify ({error}); scanning every {interval}s", error=str(e), interval=self.interval)
        self.loop = LoopingCall(self.scan)
        self.loop.clock = self.reactor
        self.loop.start(self.interval, now=True)
        self.prune_loop = LoopingCall(self.reactor.callInThread, self._prune)
        self.prune_loop.clock = self.reactor
        self.prune_loop.start(PRUNE_INTERVAL, now=False)

    def _prune(self) -> None:
        """Drop plans left behind (messages the queue gave up while deferred)."""
        try:
            removed = self.processor.deliverer.journal.prune()
        except OSError as e:
            log.warn("cannot prune the delivery journal: {error}", error=str(e))
            return
        if removed:
            log.info("delivery journal: {count} old plan files pruned", count=removed)

    def stopService(self):
        super().stopService()
        for loop in (self.loop, self.prune_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self.watcher is not None:
            self.watcher.stop()
            self.watcher = None
        if self.settling is not None and self.settling.active():
            self.settling.cancel()
        self.pool.stop()   # waits for the hand-offs in flight

    def _changed(self, _queue: str) -> None:
        """New hand-offs: scan once the burst settled (SETTLE), so that a batch takes
        every hand-off the queue manager wrote together."""
        if self.settling is None or not self.settling.active():
            self.settling = self.reactor.callLater(SETTLE, self.scan)

    def scan(self) -> None:
        if not self.running:
            return
        limit = self.workers * BATCH * 2
        if len(self.in_flight) >= limit:
            return   # inotify reports our own removals too: no listing while full
        batch: list[str] = []
        now = self.reactor.seconds()
        share, processes = self.partition
        for hid in self.spool.list("mda"):
            if len(self.in_flight) + len(batch) >= limit:
                break
            if hid in self.in_flight:
                continue
            if processes > 1 and partition_of(hid, processes) != share:
                continue
            if hid in self.resting:
                if self.resting[hid] > now:
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
        d = deferToThreadPool(self.reactor, self.pool, self.processor.process_batch, batch)
        d.addErrback(self._failed, batch)
        d.addBoth(self._done, batch)

    def _failed(self, failure, batch: list[str]) -> None:
        # The requests stay in mda/; the periodic scan tries them again (not a change
        # in mda/, which may never come). Part of them may have been delivered: the
        # journal keeps the next attempt from making second copies.
        until = self.reactor.seconds() + self.interval / 2
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
