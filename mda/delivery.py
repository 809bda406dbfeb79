"""mda.delivery -- the one place that applies a Sieve result to storage and the spool.

`Deliverer.deliver(request)` does one recipient's delivery, the same way for the
spool consumer, postroom-deliver and LMTP:

1. find the user (a +detail is split off with the configured delimiter);
2. refuse a message that went through too many hops (Delivered-To count);
3. add Return-Path and Delivered-To;
4. run the global-before, user and global-after Sieve scripts (a broken script or
   a runtime error leaves the implicit keep: the message goes to the default
   folder, and the error is logged);
5. file the message into each folder (created on demand when allowed; a folder
   that cannot be used falls back to INBOX), then send redirects and the vacation
   reply through the MTA's maildrop, then record duplicate IDs.

Outcomes are `common.errors` errors: 550 5.1.1 unknown user, 550 5.7.1 a Sieve
reject, 552 5.2.2 (or 452 4.2.2) over quota, 452 4.3.1 disk full, 554 5.4.6 a loop,
451 4.3.0 anything else. Nothing is reported delivered before storage returned,
which is after fsync of file and directory.

Exactly-once for the spool consumer: with `request.unique` every file gets a
deterministic base name, and with `request.retry` a folder that already holds it is
skipped; redirects and replies leave a marker in the state folder once handed to
the MTA and are skipped on a retry. (A crash between the maildrop write and the
marker sends that redirect twice: a copy too many rather than a lost one.)

SECURITY: runs as root for several users (files are chowned to the user) or as the
mail user. The message and the user's scripts are untrusted: folder names are
validated by storage and cannot leave the maildir; a script file not owned by the
user (or root) is ignored when running as root; headers we add are built from the
envelope, with CR and LF refused.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.errors import MailError, PermanentError, TemporaryError
from common.log import get_logger
from common.spool import Envelope, Recipient, Spool
from common.storage import (InvalidMailboxName, MailStore, NoSpace, QuotaExceeded, StorageError,
                            validate_mailbox_name)
from common.users import UserDB, UserRecord

from . import state, vacation
from .sieve import (EnvelopeInfo, Environment, FileInto, Limits, Message, Result, Script, SieveSyntaxError,
                    fallback_result, parse_bytes, run)

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
    unique: str | None = None           # exactly-once base name (spool consumer)
    retry: bool = False                 # an earlier attempt may have delivered part of it
    trace_id: str | None = None
    #: when a set: the maildir folders are not fsync'd; each one written is added here
    #: and the caller fsyncs them before acknowledging (group commit, spool consumer)
    sync_dirs: set | None = None


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
        self.run_as_root = os.geteuid() == 0
        self._stores: dict[tuple, MailStore] = {}

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
        maildir = rec.maildir(self.core)
        key = (maildir, owner)
        store = self._stores.get(key)
        if store is None or not os.path.isdir(maildir / "cur"):
            store = MailStore(maildir, owner=owner)
            if len(self._stores) >= 1000:
                self._stores.clear()
            self._stores[key] = store
        return store, maildir

    # -- the delivery ------------------------------------------------------------------

    def deliver(self, req: DeliveryRequest) -> DeliveryReport:
        """Deliver to one recipient. Raises MailError; anything else is unexpected
        (callers turn it into a temporary failure)."""
        rec, detail = self.resolve(req.recipient, req.user)
        _check_header_value(req.sender)
        _check_header_value(req.recipient)
        hops, delivered_to = count_header(req.message, b"Delivered-To")
        if hops >= self.cfg.max_hops:
            raise PermanentError(554, "5.4.6", "Too many hops (mail loop?)", f"{hops} Delivered-To headers")
        try:
            return self._deliver(req, rec, detail, delivered_to)
        except QuotaExceeded as e:
            if e.temporary or self.cfg.quota_temporary:
                raise TemporaryError(452, "4.2.2", "Mailbox full", str(e)) from None
            raise PermanentError(552, "5.2.2", "Mailbox full", str(e)) from None
        except NoSpace as e:
            raise TemporaryError(452, "4.3.1", "Insufficient system storage", str(e)) from None
        except StorageError as e:
            raise TemporaryError(451, "4.3.0", "Temporary local problem, try again later", str(e)) from None
        except OSError as e:
            from common.fsutil import is_no_space
            if is_no_space(e):
                raise TemporaryError(452, "4.3.1", "Insufficient system storage", str(e)) from None
            raise

    def _deliver(self, req: DeliveryRequest, rec: UserRecord, detail: str | None,
                 delivered_to: list[bytes]) -> DeliveryReport:
        store, maildir = self.store_for(rec)
        report = DeliveryReport(user=rec.name)
        detail = req.detail or detail
        nl = req.message.find(b"\n")
        eol = b"\r\n" if nl > 0 and req.message[nl - 1:nl] == b"\r" else b"\n"
        delivered_line = f"Delivered-To: {req.recipient}".encode("utf-8") + eol
        data = f"Return-Path: <{req.sender}>".encode("utf-8") + eol + delivered_line + req.message

        default_folder = req.folder
        if default_folder is None and detail and self.cfg.detail_folders:
            default_folder = detail
        result = self._run_sieve(req, rec, store, maildir, Message(data))
        report.sieve_errors = list(result.errors)

        if result.reject is not None:
            reason = " ".join(result.reject.reason.split())[:400] or "Message rejected"
            raise PermanentError(550, "5.7.1", reason, f"rejected by Sieve: {reason}")

        redirects = result.redirects
        mine = {req.recipient.lower().encode("utf-8"), rec.name.lower().encode("utf-8")}
        if redirects and any(v.lower() in mine for v in delivered_to):
            # The message was delivered here before: redirecting again would loop. Keep it.
            log.warn("redirects for {rcpt} skipped: the message was already delivered here (loop)",
                     rcpt=req.recipient)
            report.sieve_errors.append("redirect skipped: mail loop")
            redirects = []
            if not result.deliveries:
                result.deliveries.append(FileInto("INBOX", implicit=True))

        quota = self.quota(rec)
        done: set[str] = set()
        for action in result.deliveries:
            folder = action.mailbox
            if action.implicit and default_folder:
                folder = default_folder
            name = self._usable_folder(store, folder, action.create, report)
            if name in done:
                continue
            done.add(name)
            if req.unique and req.retry and store.delivered(req.unique, name):
                report.skipped.append(name)
                report.mailboxes.append(name)
                continue
            self._store(req, store, data, name, flags=action.flags or (), create=name != "INBOX", quota=quota)
            report.mailboxes.append(name)
        report.discarded = not result.deliveries and not redirects

        for i, redirect in enumerate(redirects):
            try:
                self._send_once(req, f"r{i}", lambda a=redirect.address: self._redirect(req, delivered_line + req.message, a))
            except OSError as e:
                # The spool is out of reach: keep the message rather than lose it.
                log.error("redirect for {rcpt} to {to} failed, keeping the message: {error}",
                          rcpt=req.recipient, to=redirect.address, error=str(e))
                report.sieve_errors.append(f"redirect to {redirect.address} failed")
                if not report.mailboxes:
                    self._store(req, store, data, "INBOX", quota=quota)
                    report.mailboxes.append("INBOX")
                continue
            report.redirects.append(redirect.address)

        # The message is safe now; what follows must not make the delivery fail.
        if result.vacation is not None:
            try:
                report.vacation = self._vacation(req, rec, Message(req.message), result)
            except OSError as e:
                log.error("vacation reply for {rcpt} failed: {error}", rcpt=req.recipient, error=str(e))
                report.vacation = f"failed: {e.strerror}"
        if result.duplicates:
            try:
                dup = state.DuplicateStore(self.core.paths.state, rec.name)
                for d in result.duplicates:
                    dup.record(d.key, d.seconds, d.last)
            except OSError as e:
                log.error("duplicate tracking for {rcpt} not recorded: {error}", rcpt=req.recipient, error=str(e))
        return report

    def _store(self, req: DeliveryRequest, store: MailStore, data: bytes, name: str, **kw) -> None:
        """File data into folder name; durable at once, or, with req.sync_dirs, once the
        caller fsyncs the folders collected there."""
        grouped = req.sync_dirs is not None
        final = store.deliver(data, name, quota_temporary=self.cfg.quota_temporary, unique=req.unique,
                              sync_dir=not grouped, **kw)
        if grouped:
            req.sync_dirs.add(store.delivery_dir(name, final))

    def _usable_folder(self, store: MailStore, folder: str, create: bool, report: DeliveryReport) -> str:
        """The storage name to deliver into; INBOX when folder cannot be used."""
        try:
            name = normalize_folder(folder)
        except (InvalidMailboxName, ValueError) as e:
            report.sieve_errors.append(f"folder {folder!r} is not valid ({e}); delivered to INBOX")
            return "INBOX"
        if name == "INBOX" or store.mailbox_exists(name):
            return name
        if create or self.cfg.create_folders:
            return name
        report.sieve_errors.append(f"folder {folder!r} does not exist; delivered to INBOX")
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
            log.warn("user {user}: Sieve script error, delivering to INBOX: {error}", user=rec.name, error=str(e))
            return fallback_result(str(e))
        except OSError as e:
            log.warn("user {user}: Sieve script unreadable, delivering to INBOX: {error}", user=rec.name, error=str(e))
            return fallback_result(f"script unreadable: {e.strerror}")
        if not scripts:
            return fallback_result_no_error()
        envelope = EnvelopeInfo(req.sender, req.original_recipient or req.recipient, req.original_recipient)
        result = run(scripts, message, envelope, _SieveEnvironment(self, store, rec, home), self.limits)
        for error in result.errors:
            log.warn("user {user}: Sieve runtime error, delivering to INBOX: {error}", user=rec.name, error=error)
        return result

    # -- mail that leaves again ----------------------------------------------------------

    def _send_once(self, req: DeliveryRequest, what: str, send) -> None:
        """Send, and with a unique base, remember it so a retry does not send again."""
        if req.unique is None:
            send()
            return
        key = f"{req.unique}.{what}"
        if req.retry and self.sent.exists(key):
            return
        send()
        self.sent.put(key)

    def _maildrop(self, envelope: Envelope, data: bytes) -> None:
        envelope.size = len(data)
        self.spool.write(envelope, [data], queue="maildrop")

    def _redirect(self, req: DeliveryRequest, data: bytes, address: str) -> None:
        env = Envelope(sender=req.sender, recipients=[Recipient(address=address)], source="local")
        env.extra["redirected_by"] = req.recipient
        if req.trace_id:
            env.trace_id = req.trace_id
        # The Delivered-To line we added stays in: it is how a loop is recognised.
        self._maildrop(env, data)
        log.info("redirected for {rcpt} to {to}", rcpt=req.recipient, to=address)

    def _vacation(self, req: DeliveryRequest, rec: UserRecord, message: Message, result: Result) -> str:
        vac = result.vacation
        assert vac is not None
        addresses = [req.recipient, rec.name]
        for address in (req.recipient, req.original_recipient):
            if address:
                addresses += [address, self.resolve_plain(address) or address]
        why_not = vacation.refusal(message, req.sender, addresses, vac)
        if why_not:
            return why_not
        store = state.VacationStore(self.core.paths.state, rec.name)
        if store.replied_within(req.sender, vac.handle, vac.seconds):
            return "already replied within the period"
        reply = vacation.compose(message, req.sender, req.recipient, vac, self.core.hostname)
        self._send_once(req, "v", lambda: self._maildrop(vacation.reply_envelope(req.sender, req.recipient, len(reply)), reply))
        store.record(req.sender, vac.handle)
        log.info("vacation reply for {rcpt} to {to}", rcpt=req.recipient, to=req.sender)
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
