"""mta.queue.manager -- the scheduler: takes spooled messages to their destinations.

Every fact lives in the spool (common/spool.py); memory only holds what is in
flight, so a restart at any moment loses nothing and repeats nothing the spool
records as done:

- incoming/ -> active/: a message the scheduler works on. Its pending recipients
  are routed (routing.py); remote ones are grouped per next hop into deliveries
  (outbound.py), local ones go to the MDA as one `Handoff` in mda/ (the hand-offs
  of the messages loaded together in one request file: common.spool.write_handoffs).
- Each delivery's per-recipient outcome is appended as a status record and
  fsync'd the moment the server's reply arrives: delivered, deferred (reason and
  next attempt) or bounced. A permanent failure is first written as a notice into
  incoming/ (durably), then recorded as bounced, so a crash can repeat a notice but
  never lose one.
- When nothing is in flight for a message: no recipient left -> the file is
  removed; otherwise it moves to deferred/ with its mtime set to the next attempt
  (as Postfix does), so a scan of deferred/ needs only stat().

Retries back off exponentially per recipient (retry_first doubling to retry_max);
after max_lifetime the remaining recipients bounce; after delay_warning a delay
notice is sent once (NOTIFY=DELAY, or no NOTIFY). Connections are limited in total
and per destination; a destination where no host could be reached is backed off
as a whole (its other deliveries are deferred without connecting).

Fresh mail is attempted at once: `nudge()` (called by the SMTP side after it
committed a message), inotify on incoming/, maildrop/ and mda-done/ where the
platform has it, and a scan every second in any case (deferred/ every
`scan_interval`). A scan lists only the folders that changed. Files and jobs go to
the I/O pool in batches (BATCH messages per job): the messages loaded by one
scan, the messages finished in one reactor turn. `postroom-queue flush` (and `postroom-sendmail -q`) create
maildrop/.flush; the manager then retries every deferred message and forgets
destination back-offs.

SECURITY: the spool is written only by this MTA's user (maildrop/ excepted, which
pickup.py validates); a file that does not parse goes to corrupt/ with a log line
and the rest of the queue keeps moving. Message bodies never reach the log.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from common.config import ConfigError
from common.errors import MailError
from common.fsutil import fsync_dir, write_file_synced
from common.log import get_logger
from common.smtp.client import ClientOptions, Rcpt, Reply, Transaction
from common.spool import (BOUNCED, DEFERRED, DELIVERED, PENDING, CorruptSpoolFile, Handoff, Spool,
                          SpoolFile, encode, parse, read_handoff_answers, read_handoff_request,
                          status_record, watch_queues, write_handoffs)

from ..bounce import RecipientReport, build_dsn, dsn_envelope
from ..outbound import ConnectionCache, deliver
from . import lock
from .routing import Credentials, NextHop, Router, domain_of, mta_uid, resolve_hosts

log = get_logger("mta.queue")

MAX_RCPTS_PER_TRANSACTION = 100
#: threads of the I/O pool: its jobs are batches now (loads, hand-offs, finishings), and
#: 8 threads spent twice the context switches of 2 (8-10 against 5-6 per message, e2e)
#: taking the GIL from each other and the reactor
IO_THREADS = 2
IO_DRAIN = 10.0                  # seconds a stop waits for spool writes in flight
CACHE_LIMIT = 64 * 1024          # messages up to this size are kept in memory while active
FLUSH_FLAG = ".flush"           # in maildrop/, so that any local user can ask (sendmail -q)
WATCHED = ("incoming", "maildrop", "mda-done")
BATCH = 32                       # messages per I/O job when loading or finishing many
LOCK_WAIT = 5.0                  # seconds a start waits for the spool lock (a postroom-queue run)


@dataclass
class Job:
    """One delivery: some recipients of one message through one next hop."""

    msg: "ActiveMessage"
    hop: NextHop
    indices: list[int]
    sender: str                 # the envelope sender on the wire (SRS-rewritten when forwarded)


@dataclass
class ActiveMessage:
    qid: str
    sf: SpoolFile
    outstanding: int = 0                        # jobs and hand-offs in flight
    failed: list[RecipientReport] = field(default_factory=list)
    delayed: list[RecipientReport] = field(default_factory=list)
    succeeded: list[RecipientReport] = field(default_factory=list)
    failed_indices: list[tuple[int, dict]] = field(default_factory=list)
    unsynced: list[bytes] = field(default_factory=list)   # status records not yet written
    io: int = 0                                 # spool writes in flight for it
    finishing: bool = False
    data: bytes | None = None                   # the message, kept when small
    #: MDA answers applied to it, (answer file, hand-off): durable once it is finished
    answers: list[tuple[str, str]] = field(default_factory=list)

    @property
    def env(self):
        return self.sf.envelope

    @property
    def ids(self) -> dict:
        """The fields every log line about this message carries (as Postfix logs the
        queue ID): its queue ID and the trace ID that follows it through every daemon."""
        return {"queue_id": self.qid, "trace_id": self.sf.envelope.trace_id}


@dataclass
class Destination:
    active: int = 0
    waiting: deque = field(default_factory=deque)
    down_until: float = 0.0
    failures: int = 0
    reason: Reply | None = None


class QueueManager(Service):
    name = "queue"

    def __init__(self, cfg, reactor, resolver=None):
        self.cfg = cfg
        self.qcfg = cfg.daemon.queue
        self.core = cfg.core
        self.reactor = reactor
        self.spool = Spool(cfg.core.paths.spool)
        self.router = Router(self.qcfg, cfg.core.local_domains)
        self.credentials = Credentials(self.qcfg.relay_credentials, mta_uid(cfg.core))
        if self.credentials.error is not None:
            raise ConfigError(None, None, "queue.relay_credentials", self.credentials.error)
        from ..srs import Srs

        self.srs = Srs.from_config(self.qcfg.srs, mta_uid(cfg.core))
        self._resolver = resolver
        self.helo = self.qcfg.helo_name or cfg.core.hostname
        self.active: dict[str, ActiveMessage] = {}
        self.handoffs: dict[str, str] = {}          # handoff_id -> queue id
        self.handoffs_of: dict[str, set[str]] = {}  # queue id -> its handoff ids
        self.in_mda: dict[str, set[int]] = {}       # queue id -> recipients at the MDA
        self.dests: dict[str, Destination] = {}
        self.connections = 0
        self._scan_pending = False
        self._loop: task.LoopingCall | None = None
        self._notifier = None
        self._last_deferred_scan = 0.0
        self.pickup = None
        self.signer = None
        # Spool writes that fsync run here, so the reactor never waits for the disk.
        self._pool = ThreadPool(minthreads=0, maxthreads=IO_THREADS, name="postroom-queue-io")
        self._answers: dict[str, AnswerFile] = {}     # answer files in mda-done/ being applied
        self.loading: set[str] = set()              # queue ids being read in the I/O pool
        self._io_pending = 0
        self.cache = ConnectionCache(reactor, self.qcfg.max_per_destination)
        self._lock: int | None = None
        self._finishing: list[ActiveMessage] = []    # finished in this reactor turn
        self._handing_off: list[tuple[ActiveMessage, Handoff]] = []   # hand-offs made in this reactor turn
        self._dirty: set[str] = set()               # folders to look at in the next scan
        self._backlog = False                       # incoming/ holds more than max_active allowed

    # --- service ----------------------------------------------------------

    @property
    def resolver(self):
        if self._resolver is None:
            from common.dns import Resolver

            dns_cfg = getattr(self.cfg.daemon, "dns", None)
            self._resolver = (Resolver.from_config(dns_cfg, self.reactor) if dns_cfg is not None
                              else Resolver(reactor=self.reactor))
        return self._resolver

    def startService(self):
        self.spool.create()
        # One queue manager per spool; postroom-queue acts on active/ only without one.
        self._lock = lock.acquire(self.spool.root, wait=LOCK_WAIT)
        super().startService()
        self._pool.start()
        self._maildrop_permissions()
        self.spool.clean_tmp(older_than=0)
        from ..dkimsign import Signer
        from .pickup import Pickup

        self.signer = Signer.from_config(self.qcfg, self.core)
        self.pickup = Pickup(self.spool, self.cfg, self.srs)
        self._recover_handoffs()
        # Messages left in active/ by a crash are ours again: load them first.
        for qid in self.spool.list("active"):
            self._load(qid, "active")
        self._watch()
        self._loop = task.LoopingCall(self._periodic)
        self._loop.clock = self.reactor
        self._loop.start(1.0, now=False)
        for q in WATCHED:
            self.nudge(q)

    @defer.inlineCallbacks
    def stopService(self):
        """Stop scanning; let spool writes in flight (and what they lead to: a
        message's final records, its removal) finish, for at most IO_DRAIN seconds."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.cache.close_all()
        deadline = time.monotonic() + IO_DRAIN
        while self._io_pending and time.monotonic() < deadline:
            yield task.deferLater(self.reactor, 0.02, lambda: None)
        if self._pool.started:
            self._pool.stop()
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        yield super().stopService()
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def _maildrop_permissions(self) -> None:
        """maildrop/ like /tmp without listing: anyone (or maildrop_group) may drop a
        file, nobody but the MTA can see or remove others' files. The spool root
        must be traversable for that; every other queue stays 0700."""
        try:
            os.chmod(self.spool.root, 0o711)
            md = self.spool.dir("maildrop")
            if self.qcfg.maildrop_group:
                import grp

                os.chown(md, -1, grp.getgrnam(self.qcfg.maildrop_group).gr_gid)
                os.chmod(md, 0o1730)
            else:
                os.chmod(md, 0o1733)
        except (OSError, KeyError) as e:
            log.warn("cannot set the permissions of maildrop/: {why}", why=str(e))

    def reload(self):
        """SIGHUP: re-read the relay credentials and the DKIM keys."""
        from ..dkimsign import Signer

        self.credentials.load()
        self.signer = Signer.from_config(self.qcfg, self.core)
        if self.pickup is not None:
            self.pickup.reload()

    def nudge(self, queue: str = "incoming") -> None:
        """Look at queue (incoming/, maildrop/ or mda-done/) now. The receiving side
        calls this after it committed a message to incoming/, inotify for the folder
        that changed; calls in one reactor turn are merged into one scan."""
        self._dirty.add(queue)
        if not self._scan_pending and self.running:
            self._scan_pending = True
            self.reactor.callLater(0, self._scan_fresh)

    def _watch(self):
        try:
            # Files renamed or linked into a watched queue (the receiving side links
            # complete files into incoming/ where renameat2 is missing).
            self._notifier = watch_queues(self.spool, WATCHED, self.reactor, self.nudge)
        except OSError as e:  # inotify limits: the 1 s scan does it
            log.info("no inotify ({why}); scanning every second", why=str(e))
            return
        if self._notifier is None:
            log.info("no inotify; scanning every second")

    def _periodic(self):
        from common.runner import sessions

        if sessions.stopping:
            return
        try:
            self._dirty.update(WATCHED)
            self._scan_fresh()
            now = time.time()
            if now - self._last_deferred_scan >= self.qcfg.scan_interval:
                self._last_deferred_scan = now
                self._scan_deferred(False)
        except Exception as e:
            log.failure("queue scan failed: {why}", why=str(e))

    # --- scanning ----------------------------------------------------------

    def _check_flush(self) -> None:
        flag = self.spool.dir("maildrop") / FLUSH_FLAG
        if not flag.exists():
            return
        flag.unlink(missing_ok=True)
        for d in self.dests.values():
            d.down_until = 0.0
            d.failures = 0
        log.info("flush requested: retrying every deferred message")
        self._last_deferred_scan = time.time()
        self._scan_deferred(True)

    def _scan_fresh(self):
        from common.runner import sessions

        self._scan_pending = False
        if not self.running or sessions.stopping:
            return
        dirty, self._dirty = self._dirty, set()
        try:
            if "maildrop" in dirty:
                self._check_flush()
                if self.pickup is not None:
                    self.pickup.run()
            if "mda-done" in dirty:
                self._apply_mda_results()
            if "incoming" in dirty and not self._full():
                todo = []
                self._backlog = False
                for qid in self.spool.list("incoming"):
                    if len(self.active) + len(self.loading) + len(todo) >= self.qcfg.max_active:
                        self._backlog = True
                        break
                    if qid not in self.active and qid not in self.loading:
                        todo.append(qid)
                self._load_many(todo, "incoming")
            elif "incoming" in dirty:
                self._backlog = True
        except Exception as e:
            log.failure("scanning incoming failed: {why}", why=str(e))

    def _scan_deferred(self, force: bool):
        now = time.time()
        todo = []
        for qid in self.spool.list("deferred"):
            if len(self.active) + len(self.loading) + len(todo) >= self.qcfg.max_active:
                break
            if qid in self.active or qid in self.loading:
                continue
            try:
                due = force or self.spool.path("deferred", qid).stat().st_mtime <= now
            except FileNotFoundError:
                continue
            if due:
                todo.append(qid)
        self._load_many(todo, "deferred")

    def _full(self) -> bool:
        return len(self.active) + len(self.loading) >= self.qcfg.max_active

    # --- one message -------------------------------------------------------

    def _load(self, qid: str, queue: str) -> None:
        self._load_many([qid], queue)

    def _load_many(self, qids: list[str], queue: str) -> None:
        """Take each of qids from queue into active/ and schedule its recipients. The
        file work (rename, parse, DKIM signing, reading a small message) runs in the
        I/O pool, BATCH messages per job."""
        self.loading.update(qids)
        for o in range(0, len(qids), BATCH):
            chunk = qids[o:o + BATCH]
            d = self._thread(self._each, lambda qid: self._read(qid, queue), chunk)
            d.addCallback(self._loaded_many)
            d.addErrback(self._load_failed, chunk)

    def _loaded_many(self, outcomes) -> None:
        for qid, result in outcomes:
            if isinstance(result, Exception):
                self._load_failed(result, [qid])
            else:
                self._loaded(result, qid)
        if any(qid in self.handoffs_of for qid, _ in outcomes):
            self.nudge("mda-done")      # loaded after a restart: apply the MDA's answers now

    def _read(self, qid: str, queue: str):
        """In the I/O pool: (SpoolFile, message bytes or None, a note for the log or None),
        or None when the file is gone or was moved to corrupt/."""
        if queue != "active":
            try:
                self.spool.move(qid, queue, "active", sync=False)
            except FileNotFoundError:
                return None   # taken by postroom-queue (hold, delete) meanwhile
        path = self.spool.path("active", qid)
        try:
            sf = parse(path, keep_message=CACHE_LIMIT)
            if sf.queue_id != qid:
                raise CorruptSpoolFile("queue id does not match the file name")
        except CorruptSpoolFile as e:
            return ("corrupt", str(e))
        except FileNotFoundError:
            return None
        note = None
        try:
            sf = self._maybe_sign(sf)
        except Exception as e:  # signing never stops delivery
            note = f"DKIM signing failed: {e}"
        data = sf.read_message() if sf.envelope.size <= CACHE_LIMIT else None
        return sf, data, note

    def _load_failed(self, why, qids: list[str]) -> None:
        for qid in qids:
            self.loading.discard(qid)
            log.error("cannot load the message: {why}", queue_id=qid,
                      why=why.getErrorMessage() if hasattr(why, "getErrorMessage") else str(why))

    def _loaded(self, result, qid: str) -> None:
        self.loading.discard(qid)
        if result is None:
            return
        if result[0] == "corrupt":
            self._corrupt(qid, "active", result[1])
            return
        sf, data, note = result
        if note:
            log.error("{note}", queue_id=qid, trace_id=sf.envelope.trace_id, note=note)
        msg = ActiveMessage(qid, sf, data=data)
        self.active[qid] = msg
        env = sf.envelope
        now = time.time()
        lifetime = self.qcfg.bounce_lifetime if env.sender == "" else self.qcfg.max_lifetime
        at_mda = self.in_mda.get(qid, set())
        msg.outstanding += len(self.handoffs_of.get(qid, ()))
        pending = [(i, r) for i, r in sf.pending() if i not in at_mda]
        if pending and now - env.arrival >= lifetime:
            for i, r in pending:
                reason = r.reason or "message expired before any delivery attempt"
                self._record(msg, i, BOUNCED, r.status if r.status and r.status[0] in "45" else "4.4.7",
                             f"message expired after {_human(now - env.arrival)} in the queue: {reason}",
                             r.remote_mta, smtp_reply=False, expired=True)
            pending = []
        local: list[int] = []
        remote: dict[tuple[NextHop, str], list[int]] = {}
        for i, r in pending:
            try:
                hop = self.router.route(r)
            except Exception as e:
                self._record(msg, i, DEFERRED, "4.3.0", f"routing failed: {e}", None)
                continue
            if hop.kind == "local":
                local.append(i)
            else:
                remote.setdefault((hop, self._sender_toward(env, r)), []).append(i)
        if local:
            self._handoff(msg, local)
        for (hop, sender), indices in remote.items():
            if sender != env.sender:
                log.info("sender rewritten to <{srs}> (SRS) toward {rcpts}", **msg.ids, srs=sender,
                         rcpts=", ".join(env.recipients[i].address for i in indices))
            for o in range(0, len(indices), MAX_RCPTS_PER_TRANSACTION):
                self._enqueue(Job(msg, hop, indices[o:o + MAX_RCPTS_PER_TRANSACTION], sender))
        self._flush(msg)
        self._maybe_finish(msg)
        self._pump()

    def _sender_toward(self, env, r) -> str:
        """The envelope sender toward remote recipient r: SRS-rewritten when an alias
        (or a catch-all, or an SRS bounce address) of ours forwards to r and the
        sender is not ours; otherwise as it is."""
        if self.srs is None or not env.sender or r.original is None:
            return env.sender
        if domain_of(env.sender) in self.router.local_domains:
            return env.sender       # our own users: our SPF already covers this host
        return self.srs.forward(env.sender)

    def _corrupt(self, qid: str, queue: str, why: str) -> None:
        log.error("moving {queue_id} to corrupt/: {why}", queue_id=qid, why=why)
        try:
            self.spool.move(qid, queue, "corrupt")
        except OSError as e:
            log.error("cannot move {queue_id} to corrupt/: {why}", queue_id=qid, why=str(e))

    def _maybe_sign(self, sf: SpoolFile) -> SpoolFile:
        env = sf.envelope
        if self.signer is None or env.extra.get("dkim") or sf.status_records or not self.signer.wants(env):
            return sf
        message = sf.read_message()
        header = self.signer.sign(env, message)
        env.extra["dkim"] = "signed" if header else "none"
        if header:
            message = header + message
        # Rewrite the file with the signed message: temp file, fsync, rename over it.
        tmp = self.spool.dir("tmp") / f"{env.queue_id}.dkim"
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        write_file_synced(tmp, encode(env, message))
        os.rename(tmp, sf.path)
        fsync_dir(sf.path.parent)
        return parse(sf.path, keep_message=CACHE_LIMIT)

    # --- status records ------------------------------------------------------

    def _retry_delay(self, attempts: int) -> float:
        delay = self.qcfg.retry_first * (2 ** max(0, min(attempts - 1, 30)))
        return min(delay, self.qcfg.retry_max)

    def _record(self, msg: ActiveMessage, i: int, state: str, status: str, reason: str,
                remote_mta: str | None, smtp_reply: bool = False, expired: bool = False,
                relayed: bool | None = False) -> None:
        """A recipient's outcome: delivered and deferred are appended now; bounced is
        collected and appended after the notice is written (in _finish). relayed:
        False for a final delivery, True for a hand-over to a server without DSN,
        None when the next server took over DSN duties (no success notice here)."""
        r = msg.env.recipients[i]
        now = time.time()
        info: dict = {"status": status, "reason": reason[:1000]}
        if remote_mta:
            info["remote_mta"] = remote_mta
        report = RecipientReport(r, "", status, reason, remote_mta, smtp_reply, now)
        if state == BOUNCED:
            msg.failed_indices.append((i, info))
            report.action = "failed"
            msg.failed.append(report)
            return
        if state == DEFERRED:
            attempts = r.attempts + 1
            nxt = now + self._retry_delay(attempts)
            lifetime = self.qcfg.bounce_lifetime if msg.env.sender == "" else self.qcfg.max_lifetime
            expiry = msg.env.arrival + lifetime
            info["next_attempt"] = min(nxt, max(expiry, now + 1))
            warn = self.qcfg.delay_warning
            if (warn and now - msg.env.arrival >= warn and msg.env.sender != ""
                    and not _delay_warned(msg.sf, i) and _wants(r, "DELAY", default=True)):
                info["delay_warned"] = True
                report.action = "delayed"
                report.retry_until = expiry
                msg.delayed.append(report)
        elif state == DELIVERED:
            if r.notify and "SUCCESS" in r.notify and msg.env.sender != "" and relayed is not None:
                report.action = "relayed" if relayed else "delivered"
                msg.succeeded.append(report)
        msg.unsynced.append(status_record(i, state, **info))
        r.state = state
        r.attempts += 1
        r.status, r.reason = status, info["reason"]
        r.next_attempt = info.get("next_attempt")
        log.info("to=<{rcpt}> {state} status={status} {reason}", **msg.ids,
                 rcpt=r.address, state=state, status=status, reason=info["reason"][:300])

    # --- finishing a message ------------------------------------------------

    def _thread(self, f, *args):
        self._io_pending += 1
        d = deferToThreadPool(self.reactor, self._pool, f, *args)
        d.addBoth(self._io_done)
        return d

    def _io_done(self, result):
        self._io_pending -= 1
        return result

    def _flush(self, msg: ActiveMessage, after=None, on_done=None) -> None:
        """Append msg's new status records durably, in the I/O pool; then run after()
        there too; then on_done(whether it all succeeded) in the reactor."""
        if not msg.unsynced and after is None:
            return
        if after is None and msg.outstanding == 0:
            return      # nothing else in flight: _finish_io writes them, in the same I/O job
        records, msg.unsynced = msg.unsynced, []
        # When every recipient is done the file is removed next; its last records
        # need no fsync (a machine crash could only repeat a delivery). A file that
        # stays, or an MDA answer about to be removed, needs them durable.
        durable = after is not None or msg.outstanding > 0 or any(
            r.state in (PENDING, DEFERRED) for r in msg.env.recipients) or bool(msg.failed_indices)

        def write():
            if records:
                self.spool.append_status(msg.sf.path, records, sync=durable)
            if after is not None:
                after()

        def done(result):
            msg.io -= 1
            failed = isinstance(result, Exception) or hasattr(result, "getErrorMessage")
            if on_done is not None:
                on_done(not failed)
            if failed:
                log.error("cannot record delivery results: {why}", **msg.ids,
                          why=getattr(result, "getErrorMessage", lambda: str(result))())
            self._maybe_finish(msg)

        msg.io += 1
        self._thread(write).addBoth(done)

    def _maybe_finish(self, msg: ActiveMessage) -> None:
        if msg.outstanding == 0 and msg.io == 0 and not msg.finishing:
            self._finish(msg)

    def _finish(self, msg: ActiveMessage) -> None:
        """Nothing in flight for msg: send its notices, then remove or defer it (in
        the I/O pool; log lines are written back in the reactor). The messages that
        finish in one reactor turn go to the pool together (BATCH at a time)."""
        msg.finishing = True
        self.active.pop(msg.qid, None)
        self._finishing.append(msg)
        if len(self._finishing) == 1:
            self.reactor.callLater(0, self._finish_batch)

    def _finish_batch(self) -> None:
        todo, self._finishing = self._finishing, []
        for o in range(0, len(todo), BATCH):
            self._thread(self._finish_many, todo[o:o + BATCH]).addCallback(self._finished)

    def _finish_many(self, msgs: list[ActiveMessage]) -> tuple[list, bool]:
        """In the I/O pool: _finish_io for each message; then, if some were finished
        with MDA answers, an fsync of active/, which makes their results durable (in a
        status record fsync'd by _finish_io, or by the removal of the spool file). The
        answers are removed afterwards (_answer_durable); a crash before leaves them,
        and they are applied again. Returns the outcomes and whether that sync was made."""
        outcomes = self._each(self._finish_io, msgs)
        if any(msg.answers for msg, lines in outcomes if not isinstance(lines, Exception)):
            try:
                fsync_dir(self.spool.dir("active"))
            except OSError as e:
                log.error("cannot sync active/: {why}", why=str(e))
                return outcomes, False
        return outcomes, True

    def _finished(self, result) -> None:
        outcomes, synced = result
        notices = False
        for msg, lines in outcomes:
            if synced and not isinstance(lines, Exception):
                for name, hid in msg.answers:
                    self._answer_durable(name, hid)
        for msg, lines in outcomes:
            if isinstance(lines, Exception):
                # The file stays in active/; the next start picks it up again.
                log.error("finishing the message failed: {why}", **msg.ids, why=str(lines))
                continue
            for level, fmt, kw in lines:
                getattr(log, level)(fmt, **msg.ids, **kw)
            notices = notices or any(fmt.endswith("notice {dsn_id} to <{to}>") for _, fmt, kw in lines)
        if notices or (self._backlog and len(self.active) + len(self.loading) <= self.qcfg.max_active // 2):
            # New notices in incoming/, or room again for the messages left there (taken
            # below half the limit, so a long backlog is not listed after each message).
            self.nudge("incoming")

    @staticmethod
    def _each(f, items) -> list:
        """In the I/O pool: [(item, f(item) or the exception it raised)]."""
        out = []
        for item in items:
            try:
                out.append((item, f(item)))
            except Exception as e:
                out.append((item, e))
        return out

    def _finish_io(self, msg: ActiveMessage) -> list:
        lines: list = []
        goes = not msg.failed_indices and not any(r.state in (PENDING, DEFERRED) for r in msg.env.recipients)
        if msg.unsynced and not (goes and msg.answers):
            # The last delivery's records (see _flush): durable unless the file goes now.
            # (When it goes with MDA answers, not at all: the answers stay until its
            # removal is durable, and a crash before that applies them again.)
            self.spool.append_status(msg.sf.path, msg.unsynced, sync=not goes)
        msg.unsynced = []
        self._send_notices(msg, lines)
        if msg.failed_indices:
            self.spool.append_status(msg.sf.path, [status_record(i, BOUNCED, **info)
                                                    for i, info in msg.failed_indices])
            for (i, info), rep in zip(msg.failed_indices, msg.failed):
                msg.env.recipients[i].state = BOUNCED
                lines.append(("info", "to=<{rcpt}> bounced status={status} {reason}",
                              {"rcpt": rep.recipient.address, "status": info["status"],
                               "reason": info["reason"][:300]}))
        left = [r for r in msg.env.recipients if r.state in (PENDING, DEFERRED)]
        if not left:
            self.spool.remove("active", msg.qid, sync=False)
            lines.append(("info", "removed: every recipient done", {}))
            return lines
        nxt = min((r.next_attempt or time.time()) for r in left)
        # The due time first: a scan must never see the file in deferred/ with an old mtime.
        os.utime(msg.sf.path, (nxt, nxt))
        self.spool.move(msg.qid, "active", "deferred", sync=False)
        return lines

    def _send_notices(self, msg: ActiveMessage, lines: list) -> None:
        env = msg.env
        failed = [rep for rep in msg.failed if _wants(rep.recipient, "FAILURE", default=True)]
        if msg.failed and env.sender == "":
            if env.source == "bounce" and not env.extra.get("double_bounce") and self.qcfg.postmaster:
                self._write_notice(msg, msg.failed, lines, to=self.qcfg.postmaster, double=True)
            else:
                lines.append(("warn", "undeliverable mail with a null sender dropped: {rcpts}",
                              {"rcpts": ", ".join(r.recipient.address for r in msg.failed)}))
            return
        if failed:
            self._write_notice(msg, failed, lines)
        if msg.delayed:
            self._write_notice(msg, msg.delayed, lines)
        if msg.succeeded:
            self._write_notice(msg, msg.succeeded, lines)

    def _write_notice(self, msg: ActiveMessage, reports, lines: list, to: str | None = None,
                      double: bool = False) -> None:
        to = to or msg.env.sender
        dsn_env = dsn_envelope(msg.env, to, double_bounce=double)
        body = build_dsn(msg.env, msg.sf.read_message(), reports, self.core.hostname, to=to)
        dsn_env.size = len(body)
        self.spool.write(dsn_env, [body], "incoming")
        lines.append(("info", "{action} notice {dsn_id} to <{to}>",
                      {"action": reports[0].action, "dsn_id": dsn_env.queue_id, "to": to}))

    # --- remote deliveries ----------------------------------------------------

    def _enqueue(self, job: Job) -> None:
        dest = self.dests.setdefault(job.hop.key, Destination())
        job.msg.outstanding += 1
        dest.waiting.append(job)

    def _pump(self) -> None:
        from common.runner import sessions

        if sessions.stopping:
            return      # SIGTERM: no new deliveries; the messages wait in active/ for the next start
        now = time.time()
        for key, dest in list(self.dests.items()):
            while dest.waiting:
                if dest.down_until > now:
                    job = dest.waiting.popleft()
                    self._job_done(job, None, dest.reason, backed_off=True)
                    continue
                if self.connections >= self.qcfg.max_connections or dest.active >= self.qcfg.max_per_destination:
                    break
                job = dest.waiting.popleft()
                dest.active += 1
                self.connections += 1
                d = self._run(job)
                d.addBoth(self._released, key)
            if not dest.waiting and not dest.active and dest.down_until <= now:
                del self.dests[key]

    def _released(self, _, key: str) -> None:
        self.connections -= 1
        dest = self.dests.get(key)
        if dest is not None:
            dest.active -= 1
        self._pump()

    @defer.inlineCallbacks
    def _run(self, job: Job):
        msg, hop = job.msg, job.hop
        try:
            try:
                hosts = yield resolve_hosts(self.resolver, hop)
            except MailError as e:
                reply = Reply(e.code, e.enhanced, e.public if e.detail == e.public else f"{e.public}: {e.detail}",
                              "resolve")
                self._job_done(job, None, reply, dns_failure=True)
                return
            creds = self.credentials.lookup(hop)
            level = self.router.tls_level(hop, creds is not None)
            if creds is None and self.credentials.error and not hop.mx:
                # Without its password a relay refuses permanently (530): wait for a fix instead.
                log.warn("relay credentials unusable: {why}", **msg.ids, why=self.credentials.error)
                self._job_done(job, None, Reply(451, "4.7.0", "relay credentials file unusable", "internal"))
                return
            env = msg.env
            message = msg.data if msg.data is not None else (yield self._thread(msg.sf.read_message))
            tx = Transaction(job.sender, [Rcpt(env.recipients[i].address, env.recipients[i].notify,
                                               env.recipients[i].orcpt) for i in job.indices],
                             message, env.body, env.smtputf8, env.ret, env.envid)
            options = ClientOptions(self.helo, level, creds[0] if creds else None, creds[1] if creds else None)
            from common.tls import client_creator

            ca = self.qcfg.tls_ca_file
            delivery = yield deliver(self.reactor, hosts, options, tx, self.qcfg.timeouts,
                                     lambda name: client_creator(name, level == "verify", ca),
                                     (self.qcfg.bind_address, self.qcfg.bind_address6),
                                     cache=self.cache, cache_key=(hop.key,), log_ids=msg.ids)
        except Exception as e:
            log.failure("delivery failed unexpectedly: {why}", **msg.ids, why=str(e))
            self._job_done(job, None, Reply(451, "4.3.0", f"internal error: {type(e).__name__}", "internal"))
            return
        self._job_done(job, delivery, None)

    def _job_done(self, job: Job, delivery, reply: Reply | None, backed_off: bool = False,
                  dns_failure: bool = False) -> None:
        msg = job.msg
        dest = self.dests.get(job.hop.key)
        try:
            if delivery is not None:
                fin = delivery.finished
                reached = delivery.reached
                for i, rep in zip(job.indices, fin.replies):
                    self._outcome(msg, i, rep, delivery.host, relayed=None if fin.dsn_offered else True)
                if dest is not None:
                    if reached:
                        dest.failures = 0
                    else:
                        dest.failures += 1
                        dest.reason = fin.session_reply
                        dest.down_until = time.time() + min(
                            self.qcfg.destination_backoff * 2 ** min(dest.failures - 1, 20), self.qcfg.retry_max)
                        log.info("destination {dest} unreachable; backed off until {until}", **msg.ids,
                                 dest=job.hop.key, until=time.ctime(dest.down_until))
            else:
                assert reply is not None
                text = reply.text if not backed_off else f"delivery to {job.hop.key} deferred: {reply.text}"
                for i in job.indices:
                    self._outcome(msg, i, Reply(reply.code, reply.enhanced, text, reply.stage), None,
                                  smtp=False)
        except Exception as e:
            log.failure("recording the results failed: {why}", **msg.ids, why=str(e))
        msg.outstanding -= 1
        self._flush(msg)
        self._maybe_finish(msg)

    def _outcome(self, msg, i, rep: Reply, host, smtp: bool = True, relayed: bool | None = False):
        is_smtp = smtp and rep.stage not in ("connect", "resolve", "internal", "")
        text = rep.diagnostic() if is_smtp else rep.text
        if host and is_smtp:
            text = f"host {host} said: {text}" if not rep.ok else text
        if rep.ok:
            self._record(msg, i, DELIVERED, rep.enhanced if rep.enhanced.startswith("2") else "2.0.0",
                         f"delivered via {host}: {rep.diagnostic()}", host, relayed=relayed)
        elif rep.temporary:
            self._record(msg, i, DEFERRED, rep.enhanced if rep.enhanced[:1] == "4" else "4.0.0", text, host,
                         smtp_reply=is_smtp)
        else:
            self._record(msg, i, BOUNCED, rep.enhanced if rep.enhanced[:1] == "5" else "5.0.0",
                         rep.diagnostic() if is_smtp else text, host, smtp_reply=is_smtp)

    # --- the MDA --------------------------------------------------------------

    def _handoff(self, msg: ActiveMessage, indices: list[int]) -> None:
        """Hand msg's local recipients to the MDA. The hand-offs made in one reactor turn
        (the messages of one load) go into one request file in mda/, BATCH at a time
        (common.spool.write_handoffs); each is still answered on its own."""
        hid = f"{msg.qid}.{uuid.uuid4().hex[:8]}"
        self._add_handoff(hid, msg.qid)
        self.in_mda.setdefault(msg.qid, set()).update(indices)
        msg.outstanding += 1
        self._handing_off.append((msg, Handoff(hid, msg.qid, str(msg.sf.path), indices)))
        if len(self._handing_off) == 1:
            self.reactor.callLater(0, self._handoff_batch)

    def _handoff_batch(self) -> None:
        todo, self._handing_off = self._handing_off, []
        for o in range(0, len(todo), BATCH):
            chunk = todo[o:o + BATCH]
            d = self._thread(write_handoffs, self.spool, [h for _, h in chunk])
            d.addErrback(lambda f, chunk=chunk: [self._handoff_failed(msg, h, f.getErrorMessage())
                                                 for msg, h in chunk])

    def _handoff_failed(self, msg: ActiveMessage, handoff: Handoff, why: str) -> None:
        self._drop_handoff(handoff.handoff_id)
        self.in_mda.get(msg.qid, set()).difference_update(handoff.recipients)
        for i in handoff.recipients:
            self._record(msg, i, DEFERRED, "4.3.0", f"cannot hand off to the MDA: {why}", None)
        msg.outstanding -= 1
        self._flush(msg)
        self._maybe_finish(msg)

    def _add_handoff(self, hid: str, qid: str) -> None:
        self.handoffs[hid] = qid
        self.handoffs_of.setdefault(qid, set()).add(hid)

    def _drop_handoff(self, hid: str) -> None:
        qid = self.handoffs.pop(hid, None)
        ids = self.handoffs_of.get(qid)
        if ids is not None:
            ids.discard(hid)
            if not ids:
                del self.handoffs_of[qid]

    def _recover_handoffs(self) -> None:
        """After a restart: requests still in mda/ are in flight (their recipients are
        not routed again); answers in mda-done/ are applied by _apply_mda_results."""
        for name in self.spool.list("mda"):
            try:
                handoffs = read_handoff_request(name, self.spool.path("mda", name).read_bytes())
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("unreadable hand-off {hid}: {why}", hid=name, why=str(e))
                continue
            for h in handoffs:
                self._add_handoff(h.handoff_id, h.queue_id)
                self.in_mda.setdefault(h.queue_id, set()).update(h.recipients)
        for name in self.spool.list("mda-done"):
            # Answered while we were down (the MDA removed the request): the answer
            # names the recipients, which must not be handed off again.
            try:
                answers = read_handoff_answers(name, self.spool.path("mda-done", name))
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("unreadable hand-off answer {hid}: {why}", hid=name, why=str(e))
                continue
            for hid, results in answers.items():
                if hid not in self.handoffs:
                    qid = hid.partition(".")[0]
                    self._add_handoff(hid, qid)
                    self.in_mda.setdefault(qid, set()).update(r.rcpt for r in results)

    def _apply_mda_results(self) -> None:
        """Apply the MDA's answers in mda-done/ (one file per request, answering each
        hand-off in it). A file is removed once the results of every hand-off in it
        are durable in the spool (or their message is gone): see _answer_durable."""
        for name in self.spool.list("mda-done"):
            state = self._answers.get(name)
            if state is not None and (state.removing or state.applied >= state.hids):
                continue    # its results are being written
            path = self.spool.path("mda-done", name)
            try:
                answers = read_handoff_answers(name, path)
            except FileNotFoundError:
                continue
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.error("unreadable hand-off answer {hid}: {why}", hid=name, why=str(e))
                continue
            if state is None:
                state = self._answers[name] = AnswerFile(set(answers))
            for hid, results in answers.items():
                if hid not in state.applied:
                    self._apply_answer(name, state, hid, results)
            self._answer_progress(name)

    def _apply_answer(self, name: str, state: "AnswerFile", hid: str, results) -> None:
        qid = self.handoffs.get(hid) or hid.partition(".")[0]
        msg = self.active.get(qid)
        if msg is None:
            if qid in self.loading:
                return      # being loaded: its answer is applied on the next scan
            # The message is not loaded (a restart): load it from active/ first.
            if self.spool.path("active", qid).exists():
                if hid not in self.handoffs:
                    self._add_handoff(hid, qid)
                self._load(qid, "active")
                return
            log.warn("hand-off answer {hid} for a message not in active/; ignored", queue_id=qid, hid=hid)
            self._drop_handoff(hid)
            state.applied.add(hid)
            state.durable.add(hid)
            return
        done = {i for i, r in enumerate(msg.env.recipients) if r.state not in (PENDING, DEFERRED)}
        at_mda = self.in_mda.get(qid, set())
        for res in results:
            at_mda.discard(res.rcpt)
            if not 0 <= res.rcpt < len(msg.env.recipients) or res.rcpt in done:
                continue
            code = 250 if res.state == DELIVERED else 451 if res.state == DEFERRED else 550
            status = res.status or {250: "2.0.0", 451: "4.0.0", 550: "5.0.0"}[code]
            self._outcome(msg, res.rcpt, Reply(code, status, res.reason or res.state, "mda"), None, smtp=False)
        self._drop_handoff(hid)
        if qid not in self.handoffs_of:
            self.in_mda.pop(qid, None)
        msg.outstanding = max(0, msg.outstanding - 1)
        state.applied.add(hid)
        if msg.outstanding == 0:
            # Its last answer: the records go with the message's finishing job (see
            # _finish_many), after which the answer counts as durable.
            msg.answers.append((name, hid))
            self._maybe_finish(msg)
            return
        self._flush(msg, after=_nothing, on_done=lambda ok: ok and self._answer_durable(name, hid))
        self._maybe_finish(msg)

    def _answer_durable(self, name: str, hid: str) -> None:
        state = self._answers.get(name)
        if state is not None:
            state.durable.add(hid)
            self._answer_progress(name)

    def _answer_progress(self, name: str) -> None:
        """Remove answer file name once every hand-off's results in it are durable."""
        state = self._answers.get(name)
        if state is None or state.removing or not state.durable >= state.hids:
            return
        state.removing = True
        path = self.spool.path("mda-done", name)

        def remove():
            path.unlink(missing_ok=True)
            fsync_dir(path.parent)

        def removed(result):
            self._answers.pop(name, None)
            if hasattr(result, "getErrorMessage"):
                log.error("cannot remove the hand-off answer {hid}: {why}", hid=name, why=result.getErrorMessage())

        self._thread(remove).addBoth(removed)


def _nothing() -> None:
    """For _flush: no work after the records, which it then makes durable."""


@dataclass
class AnswerFile:
    """An answer file in mda-done/ while its results are applied."""

    hids: set[str]                                          # the hand-offs it answers
    applied: set[str] = field(default_factory=set)          # results taken (their records on the way)
    durable: set[str] = field(default_factory=set)          # results durable in the spool, or message gone
    removing: bool = False


def _wants(r, kind: str, default: bool) -> bool:
    if r.notify is None:
        return default
    return kind in r.notify and "NEVER" not in r.notify


def _delay_warned(sf: SpoolFile, i: int) -> bool:
    return any(rec.get("rcpt") == i and rec.get("delay_warned") for rec in sf.status_records)


def _human(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
