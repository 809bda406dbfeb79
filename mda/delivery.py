"""mda.delivery -- the one place that applies a Sieve result to storage and the spool.

`Deliverer.deliver(request)` does one recipient's delivery, the same way for the
spool consumer, postroom-deliver and LMTP, in two steps:

`prepare` decides, and writes nothing but the plan:
1. find the user (a +detail is split off with the configured delimiter);
2. refuse a message that went through too many hops (Delivered-To count);
3. add Return-Path (replacing any the message carries) and Delivered-To;
4. run the global-before, user and global-after Sieve scripts (a broken script or
   a runtime error leaves the implicit keep: the message goes to the default
   folder, and the error is logged), and turn the result into a `journal.Plan`:
   the folders (one that cannot be used falls back to INBOX) with the maildir name
   of each copy, the redirects and the vacation reply with the queue ID of each,
   the duplicate IDs.

`commit` carries the plan out: file the message into each folder (created on
demand when allowed), then send redirects and the vacation reply through the MTA's
maildrop, then record duplicate IDs.

Outcomes are `common.errors` errors: 550 5.1.1 unknown user, 550 5.7.1 a Sieve
reject, 552 5.2.2 (or 452 4.2.2) over quota, 452 4.3.1 disk full, 554 5.4.6 a loop,
451 4.3.0 anything else. Nothing is reported delivered before storage returned,
which is after fsync of file and directory (or, for the spool consumer, after its
group commit).

Exactly-once for the spool consumer (`request.key`, the queue ID and recipient
index): the plan is recorded in the journal, durably, before the first write, and
every attempt looks for it first. An attempt that finds one replays it instead of
running Sieve again: a folder already holding its copy (found by name) is skipped,
and so is a redirect or reply whose marker says it was handed to the MTA. A crash
between a maildrop write and its marker is harmless too: the retry writes the same
queue ID, which the spool refuses (still in maildrop/) or the pickup drops (still
queued); only a first copy that already left the queue could be sent again.

SECURITY: runs as root for several users (files are chowned to the user) or as the
mail user. The message and the user's scripts are untrusted: folder names are
validated by storage and cannot leave the maildir; a script file not owned by the
user (or root) is ignored when running as root; headers we add are built from the
envelope, with CR and LF refused.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.errors import MailError, PermanentError, TemporaryError
from common.fsutil import is_no_space
from common.log import get_logger
from common.spool import Envelope, Recipient, Spool, new_queue_id
from common.storage import (InvalidMailboxName, MailStore, NoSpace, QuotaExceeded, StorageError,
                            validate_mailbox_name)
from common.storage.maildir import new_unique
from common.users import UserDB, UserRecord

from . import state, vacation
from .crashpoints import crash_point
from .groupsync import GroupSync, SharedSyncfs
from .journal import Journal, Plan
from .sieve import (EnvelopeInfo, Environment, FileInto, Limits, Message, Result, Script, SieveSyntaxError,
                    Vacation, fallback_result, parse_bytes, run)

log = get_logger("mda.delivery")


@dataclass
class DeliveryRequest:
    message: bytes
    sender: str                         # "" for the null sender
    recipient: str                      # as given in RCPT TO / -a / the spool (may carry +detail)
    user: str | None = None             # the user database name, when already known
    folder: str | None = None           # the default folder (postroom-deliver -m)
    detail: str | None = None           # the +detail, when the MTA already split it off
    original_recipient: str | None = None   # as given in RCPT TO, before aliases (Sieve's envelope "to")
    key: str | None = None              # exactly-once key: queue ID.recipient index (spool consumer)
    #: an earlier attempt was answered (spool consumer): its plan may have been made by
    #: another consumer process, so the journal's folder is read again when memory lacks it
    retry: bool = False
    trace_id: str | None = None
    queue_id: str | None = None
    #: when given: the plan and the maildir files written are not fsync'd but added
    #: here; deliver() flushes it after each step, a caller of prepare() and commit()
    #: flushes it itself before going on (group commit: spool consumer, LMTP)
    group: GroupSync | None = None

    def log_context(self) -> dict[str, str]:
        """The fields every log line about this message carries."""
        return {k: v for k, v in (("queue_id", self.queue_id), ("trace_id", self.trace_id)) if v}


@dataclass
class Prepared:
    """A delivery decided by Deliverer.prepare, to be carried out by commit."""

    req: DeliveryRequest
    user: UserRecord
    store: MailStore
    data: bytes                         # the message with our Return-Path and Delivered-To
    delivered_line: bytes
    plan: Plan
    replay: bool                        # the plan comes from an earlier attempt


@dataclass
class DeliveryReport:
    user: str
    mailboxes: list[str] = field(default_factory=list)
    redirects: list[str] = field(default_factory=list)
    vacation: str | None = None         # "sent", or why not
    sieve_errors: list[str] = field(default_factory=list)
    discarded: bool = False
    skipped: list[str] = field(default_factory=list)   # already delivered by an earlier attempt


class _ScriptCache:
    """Parsed scripts by path, re-read when the file changes."""

    def __init__(self, max_size: int):
        self.max_size = max_size
        self.entries: dict[Path, tuple[tuple, Any]] = {}

    def load(self, path: Path, owner_uid: int | None = None) -> Script | None:
        """The script, None if there is none; raises SieveSyntaxError or OSError."""
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if os.geteuid() == 0 and owner_uid is not None and st.st_uid not in (0, owner_uid):
            raise SieveSyntaxError(f"ignored: not owned by the user (uid {st.st_uid})", 1, 1, str(path))
        sig = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = self.entries.get(path)
        if cached is not None and cached[0] == sig:
            value = cached[1]
        else:
            if st.st_size > self.max_size:
                value = SieveSyntaxError("script too large", 1, 1, str(path))
            else:
                with open(path, "rb") as f:
                    data = f.read(self.max_size + 1)
                try:
                    value = parse_bytes(data, str(path))
                except SieveSyntaxError as e:
                    value = e
            if len(self.entries) > 10_000:
                self.entries.clear()
            self.entries[path] = (sig, value)
        if isinstance(value, SieveSyntaxError):
            raise value
        return value


class _SieveEnvironment(Environment):
    def __init__(self, deliverer: "Deliverer", store: MailStore, user: UserRecord, home: Path):
        cfg = deliverer.cfg.sieve
        self.deliverer = deliverer
        self.store = store
        self.user = user
        self.home = home
        self.recipient_delimiter = deliverer.cfg.recipient_delimiter
        self.vacation_default_days = cfg.vacation_default_days
        self.vacation_min_days = cfg.vacation_min_days
        self.vacation_max_days = cfg.vacation_max_days
        self.duplicate_default_seconds = int(cfg.duplicate_default_period)

    def mailbox_exists(self, name: str) -> bool:
        try:
            return self.store.mailbox_exists(normalize_folder(name))
        except (StorageError, ValueError):
            return False

    def load_include(self, location: str, name: str) -> Script | None:
        if location == "global":
            folder = self.deliverer.cfg.sieve.global_dir
            if folder is None:
                return None
            return self.deliverer.scripts.load(folder / f"{name}.sieve")
        folder = expand_home(self.deliverer.cfg.sieve.user_dir, self.home)
        return self.deliverer.scripts.load(folder / f"{name}.sieve", self.user.uid)

    def duplicate_seen(self, key: str) -> bool:
        return state.DuplicateStore(self.deliverer.core.paths.state, self.user.name).seen(key)


def expand_home(template: str, home: Path) -> Path:
    if template == "~" or template.startswith("~/"):
        return home / template[2:]
    return Path(template)


def normalize_folder(name: str) -> str:
    """A Sieve folder name as a storage name: "/" is taken as the hierarchy separator."""
    return validate_mailbox_name(name.replace("/", "."))


def drop_header(message: bytes, name: bytes) -> bytes:
    """message without any header field called name (with its continuation lines)."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    head_end = len(message) if end < 0 else end + 1
    lname = name.lower() + b":"
    if lname not in message[:head_end].lower():
        return message
    lines = message[:head_end].split(b"\n")
    kept, dropping = [], False
    for line in lines:
        if dropping and line[:1] in (b" ", b"\t"):
            continue
        dropping = line[:len(lname)].lower() == lname
        if not dropping:
            kept.append(line)
    return b"\n".join(kept) + message[head_end:]


def count_header(message: bytes, name: bytes) -> tuple[int, list[bytes]]:
    """How many times header name occurs in message's header, and their values."""
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
    head = message if end < 0 else message[:end]
    values = []
    lname = name.lower() + b":"
    for line in head.split(b"\n"):
        if line[:len(lname)].lower() == lname:
            values.append(line[len(lname):].strip())
    return len(values), values


def _check_header_value(value: str) -> str:
    if "\r" in value or "\n" in value or len(value) > 1000:
        raise PermanentError(501, "5.1.7", "Bad address syntax", f"bad envelope address {value!r}")
    return value


class Deliverer:
    """Delivery for one configuration; shared by the consumer's threads, the LMTP
    sessions and postroom-deliver."""

    def __init__(self, core, cfg, users: UserDB | None = None, spool: Spool | None = None):
        self.core = core
        self.cfg = cfg
        self.users = users or UserDB(core.auth.users_file)
        self.spool = spool or Spool(core.paths.spool)
        self.scripts = _ScriptCache(int(cfg.sieve.max_script_size))
        s = cfg.sieve
        self.limits = Limits(max_actions=s.max_actions, max_redirects=s.max_redirects,
                             max_include_depth=s.max_include_depth, max_includes=s.max_includes,
                             max_variable_size=int(s.max_variable_size), max_run_time=float(s.max_run_time))
        self.sent = state.sent_journal(core.paths.state)
        self.journal = Journal(core.paths.state)
        #: one syncfs(2) serves every thread waiting on it (GroupSync)
        self.shared_sync = SharedSyncfs()
        self.run_as_root = os.geteuid() == 0
        self._stores: dict[tuple, tuple[MailStore, str]] = {}   # user -> store, its cur/

    # -- users -------------------------------------------------------------------------

    def resolve(self, recipient: str, user: str | None = None) -> tuple[UserRecord, str | None]:
        """The user for a recipient and the +detail, or PermanentError 550 5.1.1."""
        if user:
            rec = self.users.lookup(user)
            if rec is not None:
                return rec, self.detail_of(recipient)
        candidates = [(recipient, None)]
        local, at, domain = recipient.rpartition("@") if "@" in recipient else (recipient, "", "")
        delim = self.cfg.recipient_delimiter
        if delim and delim in local:
            base, _, detail = local.partition(delim)
            candidates.append((f"{base}{at}{domain}", detail))
        if not at:
            for name, detail in list(candidates):
                candidates += [(f"{name}@{d}", detail) for d in self.core.local_domains]
        for name, detail in candidates:
            rec = self.users.lookup(name)
            if rec is not None:
                return rec, detail
        raise PermanentError(550, "5.1.1", "No such user here", f"unknown user {recipient!r}")

    def detail_of(self, recipient: str) -> str | None:
        local = recipient.rpartition("@")[0] if "@" in recipient else recipient
        delim = self.cfg.recipient_delimiter
        if delim and delim in local:
            return local.partition(delim)[2]
        return None

    def quota(self, rec: UserRecord) -> tuple[int | None, int | None] | None:
        storage, count = rec.quota()
        if storage is None:
            storage = self.cfg.default_quota_storage
        if count is None:
            count = self.cfg.default_quota_messages
        if storage is None and count is None:
            return None
        return (int(storage) if storage is not None else None, count)

    def home_of(self, rec: UserRecord, maildir: Path) -> Path:
        return rec.home if rec.home is not None else maildir.parent

    def store_for(self, rec: UserRecord) -> tuple[MailStore, Path]:
        """The user's MailStore (kept for reuse; it holds no open files) and maildir."""
        owner = None
        if self.run_as_root and rec.uid is not None:
            owner = (rec.uid, rec.gid if rec.gid is not None else rec.uid)
        key = (rec.name, rec.home, owner)
        cached = self._stores.get(key)
        if cached is None or not os.path.isdir(cached[1]):
            maildir = rec.maildir(self.core)
            cached = (MailStore(maildir, owner=owner), os.path.join(maildir, "cur"))
            if len(self._stores) >= 1000:
                self._stores.clear()
            self._stores[key] = cached
        return cached[0], cached[0].root

    # -- the delivery ------------------------------------------------------------------

    def deliver(self, req: DeliveryRequest) -> DeliveryReport:
        """Deliver to one recipient. Raises MailError; anything else is unexpected
        (callers turn it into a temporary failure)."""
        prepared = self.prepare(req)
        if req.group is None:
            return self.commit(prepared)
        self.record_plans(req.group)
        req.group.flush()       # the plan is durable before the first write
        report = self.commit(prepared)
        req.group.flush()       # and the delivery before anyone hears of it
        return report

    @contextlib.contextmanager
    def _storage_errors(self):
        """Storage failures as the MailErrors the table in docs/mda.md promises."""
        try:
            yield
        except QuotaExceeded as e:
            if e.temporary or self.cfg.quota_temporary:
                raise TemporaryError(452, "4.2.2", "Mailbox full", str(e)) from None
            raise PermanentError(552, "5.2.2", "Mailbox full", str(e)) from None
        except NoSpace as e:
            raise TemporaryError(452, "4.3.1", "Insufficient system storage", str(e)) from None
        except StorageError as e:
            raise TemporaryError(451, "4.3.0", "Temporary local problem, try again later", str(e)) from None
        except OSError as e:
            if is_no_space(e):
                raise TemporaryError(452, "4.3.1", "Insufficient system storage", str(e)) from None
            raise

    def prepare(self, req: DeliveryRequest) -> Prepared:
        """Decide one recipient's delivery: the plan an earlier attempt recorded under
        req.key, else a new one from Sieve (recorded under req.key, to be made
        durable by req.group or here). Writes nothing else. Raises MailError."""
        rec, detail = self.resolve(req.recipient, req.user)
        _check_header_value(req.sender)
        _check_header_value(req.recipient)
        hops, delivered_to = count_header(req.message, b"Delivered-To")
        if hops >= self.cfg.max_hops:
            raise PermanentError(554, "5.4.6", "Too many hops (mail loop?)", f"{hops} Delivered-To headers")
        with self._storage_errors():
            store, maildir = self.store_for(rec)
            nl = req.message.find(b"\n")
            eol = b"\r\n" if nl > 0 and req.message[nl - 1:nl] == b"\r" else b"\n"
            delivered_line = f"Delivered-To: {req.recipient}".encode("utf-8") + eol
            data = (f"Return-Path: <{req.sender}>".encode("utf-8") + eol + delivered_line
                    + drop_header(req.message, b"Return-Path"))
            found = self.journal.load(req.key, refresh=req.retry) if req.key else None
            if found is not None and found[0].user == rec.name:
                plan, path = found
                group = req.group if req.group is not None else GroupSync()
                group.add_file(path)    # durable before the replay writes (its batch may have failed)
                if req.group is None:
                    group.flush()
                return Prepared(req, rec, store, data, delivered_line, plan, replay=True)
            plan = self._decide(req, rec, detail or None, delivered_to, store, maildir, data)
            if req.key:
                group = req.group if req.group is not None else GroupSync()
                group.plans[req.key] = plan
                if req.group is None:
                    self.record_plans(group)
                    group.flush()
            return Prepared(req, rec, store, data, delivered_line, plan, replay=False)

    def record_plans(self, group: GroupSync) -> None:
        """Write the new plans collected in group into one journal file, to be made
        durable by the group's next flush."""
        if group.plans:
            group.add_file(self.journal.write(group.plans))
            group.plans = {}

    def _decide(self, req: DeliveryRequest, rec: UserRecord, detail: str | None, delivered_to: list[bytes],
                store: MailStore, maildir: Path, data: bytes) -> Plan:
        """Run Sieve and turn its result into a plan with every outcome named."""
        detail = req.detail or detail
        default_folder = req.folder
        if default_folder is None and detail and self.cfg.detail_folders:
            default_folder = detail
        result = self._run_sieve(req, rec, store, maildir, Message(data))
        plan = Plan(user=rec.name, errors=list(result.errors))

        if result.reject is not None:
            reason = " ".join(result.reject.reason.split())[:400] or "Message rejected"
            raise PermanentError(550, "5.7.1", reason, f"rejected by Sieve: {reason}")

        redirects = result.redirects
        mine = {req.recipient.lower().encode("utf-8"), rec.name.lower().encode("utf-8")}
        if redirects and any(v.lower() in mine for v in delivered_to):
            # The message was delivered here before: redirecting again would loop. Keep it.
            log.warn("redirects for {rcpt} skipped: the message was already delivered here (loop)",
                     rcpt=req.recipient, **req.log_context())
            plan.errors.append("redirect skipped: mail loop")
            redirects = []
            if not result.deliveries:
                result.deliveries.append(FileInto("INBOX", implicit=True))

        for action in result.deliveries:
            folder = action.mailbox
            if action.implicit and default_folder:
                folder = default_folder
            name = self._usable_folder(store, folder, action.create, plan.errors)
            if all(f["name"] != name for f in plan.folders):
                plan.folders.append({"name": name, "flags": list(action.flags or ()), "unique": new_unique()})
        plan.redirects = [{"to": r.address, "qid": new_queue_id()} for r in redirects]
        if plan.redirects:
            plan.fallback = new_unique()
        if result.vacation is not None:
            why_not = self._vacation_refusal(req, rec, Message(req.message), result.vacation)
            if why_not:
                plan.vacation_note = why_not
            else:
                plan.vacation = {**asdict(result.vacation), "qid": new_queue_id()}
        plan.duplicates = [[d.key, d.seconds, d.last] for d in result.duplicates]
        return plan

    def commit(self, p: Prepared) -> DeliveryReport:
        """Carry a plan out. Raises MailError; replaying an earlier attempt's plan,
        every outcome already there is skipped."""
        with self._storage_errors():
            return self._commit(p)

    def _commit(self, p: Prepared) -> DeliveryReport:
        req, plan, store = p.req, p.plan, p.store
        report = DeliveryReport(user=p.user.name, sieve_errors=list(plan.errors))
        quota = self.quota(p.user)
        for i, folder in enumerate(plan.folders):
            if i:
                self._crash_point(req, "between_folders")
            name = folder["name"]
            if p.replay and store.delivered(folder["unique"], name):
                report.skipped.append(name)
            else:
                self._store(req, store, p.data, name, folder["unique"], flags=folder["flags"],
                            create=name != "INBOX", quota=quota)
            report.mailboxes.append(name)
        report.discarded = not plan.folders and not plan.redirects

        for i, redirect in enumerate(plan.redirects):
            address = redirect["to"]
            try:
                self._send_once(p, f"r{i}", redirect["qid"],
                                lambda a=address, q=redirect["qid"]: self._redirect(req, p.delivered_line + req.message, a, q))
            except OSError as e:
                # The spool is out of reach: keep the message rather than lose it.
                log.error("redirect for {rcpt} to {to} failed, keeping the message: {error}",
                          rcpt=req.recipient, to=address, error=str(e), **req.log_context())
                report.sieve_errors.append(f"redirect to {address} failed")
                if not report.mailboxes:
                    if not (p.replay and store.delivered(plan.fallback, "INBOX")):
                        self._store(req, store, p.data, "INBOX", plan.fallback, quota=quota)
                    report.mailboxes.append("INBOX")
                continue
            report.redirects.append(address)

        # The message is safe now; what follows must not make the delivery fail.
        report.vacation = plan.vacation_note
        if plan.vacation is not None:
            try:
                report.vacation = self._vacation(p)
            except OSError as e:
                log.error("vacation reply for {rcpt} failed: {error}", rcpt=req.recipient, error=str(e),
                          **req.log_context())
                report.vacation = f"failed: {e.strerror}"
        if plan.duplicates:
            try:
                dup = state.DuplicateStore(self.core.paths.state, p.user.name)
                for key, seconds, last in plan.duplicates:
                    dup.record(key, seconds, last)
            except OSError as e:
                log.error("duplicate tracking for {rcpt} not recorded: {error}", rcpt=req.recipient, error=str(e),
                          **req.log_context())
        return report

    @staticmethod
    def _crash_point(req: DeliveryRequest, name: str) -> None:
        if req.key:
            crash_point(name)

    def _store(self, req: DeliveryRequest, store: MailStore, data: bytes, name: str, unique: str, **kw) -> None:
        """File data into folder name under its planned name; durable at once, or,
        with req.group, once the caller flushes it."""
        grouped = req.group is not None
        final = store.deliver(data, name, quota_temporary=self.cfg.quota_temporary, unique=unique,
                              sync_dir=not grouped, sync_file=not grouped,
                              before_rename=(lambda: self._crash_point(req, "inside_write")) if req.key else None,
                              **kw)
        if grouped:
            req.group.add_file(os.path.join(store.delivery_dir(name, final), final))

    def _usable_folder(self, store: MailStore, folder: str, create: bool, errors: list[str]) -> str:
        """The storage name to deliver into; INBOX when folder cannot be used."""
        try:
            name = normalize_folder(folder)
        except (InvalidMailboxName, ValueError) as e:
            errors.append(f"folder {folder!r} is not valid ({e}); delivered to INBOX")
            return "INBOX"
        if name == "INBOX" or store.mailbox_exists(name):
            return name
        if create or self.cfg.create_folders:
            return name
        errors.append(f"folder {folder!r} does not exist; delivered to INBOX")
        return "INBOX"

    def _run_sieve(self, req: DeliveryRequest, rec: UserRecord, store: MailStore, maildir: Path,
                   message: Message) -> Result:
        if not self.cfg.sieve.enabled:
            return fallback_result_no_error()
        home = self.home_of(rec, maildir)
        scripts: list[Script] = []
        try:
            for path in self.cfg.sieve.before:
                s = self.scripts.load(path)
                if s is not None:
                    scripts.append(s)
            user_script = self.scripts.load(expand_home(self.cfg.sieve.user_script, home), rec.uid)
            if user_script is not None:
                scripts.append(user_script)
            for path in self.cfg.sieve.after:
                s = self.scripts.load(path)
                if s is not None:
                    scripts.append(s)
        except SieveSyntaxError as e:
            log.warn("user {user}: Sieve script error, delivering to INBOX: {error}", user=rec.name, error=str(e),
                     **req.log_context())
            return fallback_result(str(e))
        except OSError as e:
            log.warn("user {user}: Sieve script unreadable, delivering to INBOX: {error}", user=rec.name,
                     error=str(e), **req.log_context())
            return fallback_result(f"script unreadable: {e.strerror}")
        if not scripts:
            return fallback_result_no_error()
        envelope = EnvelopeInfo(req.sender, req.original_recipient or req.recipient, req.original_recipient)
        result = run(scripts, message, envelope, _SieveEnvironment(self, store, rec, home), self.limits)
        for error in result.errors:
            log.warn("user {user}: Sieve runtime error, delivering to INBOX: {error}", user=rec.name, error=error,
                     **req.log_context())
        return result

    # -- mail that leaves again ----------------------------------------------------------

    def _send_once(self, p: Prepared, what: str, qid: str, send) -> None:
        """Send, and for a spool delivery remember it, so a retry does not send again.
        The maildrop file's queue ID comes from the plan: written a second time (a
        crash before the marker) it is refused by the spool or dropped by the pickup."""
        req = p.req
        if req.key is None:
            send()
            return
        marker = f"{req.key}.{what}"
        if p.replay:
            if self.sent.exists(marker):
                return
            # A write killed half way leaves the spool's temporary file under this ID.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.spool.dir("tmp") / qid)
        try:
            send()
        except FileExistsError:
            if not self.spool.path("maildrop", qid).exists():
                raise
        self._crash_point(req, "after_maildrop")
        self.sent.put(marker)

    def _maildrop(self, envelope: Envelope, data: bytes) -> None:
        envelope.size = len(data)
        self.spool.write(envelope, [data], queue="maildrop")

    def _redirect(self, req: DeliveryRequest, data: bytes, address: str, qid: str) -> None:
        env = Envelope(sender=req.sender, recipients=[Recipient(address=address)], source="local", queue_id=qid)
        env.extra["redirected_by"] = req.recipient
        if req.trace_id:
            env.trace_id = req.trace_id
        # The Delivered-To line we added stays in: it is how a loop is recognised.
        self._maildrop(env, data)
        log.info("redirected for {rcpt} to {to}", rcpt=req.recipient, to=address, **req.log_context())

    def _vacation_refusal(self, req: DeliveryRequest, rec: UserRecord, message: Message, vac: Vacation) -> str | None:
        """Why no vacation reply goes out for this message, or None when one is due."""
        addresses = [req.recipient, rec.name]
        for address in (req.recipient, req.original_recipient):
            if address:
                addresses += [address, self.resolve_plain(address) or address]
        why_not = vacation.refusal(message, req.sender, addresses, vac)
        if why_not:
            return why_not
        if state.VacationStore(self.core.paths.state, rec.name).replied_within(req.sender, vac.handle, vac.seconds):
            return "already replied within the period"
        return None

    def _vacation(self, p: Prepared) -> str:
        req = p.req
        fields = dict(p.plan.vacation)
        qid = fields.pop("qid")
        fields["addresses"] = tuple(fields.get("addresses") or ())
        vac = Vacation(**fields)
        reply = vacation.compose(Message(req.message), req.sender, req.recipient, vac, self.core.hostname)
        envelope = vacation.reply_envelope(req.sender, req.recipient, len(reply))
        envelope.queue_id = qid
        if req.trace_id:
            envelope.trace_id = req.trace_id
        self._send_once(p, "v", qid, lambda: self._maildrop(envelope, reply))
        state.VacationStore(self.core.paths.state, p.user.name).record(req.sender, vac.handle)
        log.info("vacation reply for {rcpt} to {to}", rcpt=req.recipient, to=req.sender, **req.log_context())
        return "sent"

    def resolve_plain(self, recipient: str) -> str | None:
        delim = self.cfg.recipient_delimiter
        local, at, domain = recipient.rpartition("@")
        if delim and at and delim in local:
            return f"{local.partition(delim)[0]}@{domain}"
        return None


def fallback_result_no_error() -> Result:
    """No script: the implicit keep."""
    return Result(deliveries=[FileInto("INBOX", implicit=True)])


def error_reply(exc: BaseException) -> MailError:
    """Any exception as a MailError (unexpected ones become 451 4.3.0)."""
    from common.errors import unexpected
    if isinstance(exc, MailError):
        return exc
    return unexpected(exc)


__all__ = ["Deliverer", "DeliveryReport", "DeliveryRequest", "error_reply"]
