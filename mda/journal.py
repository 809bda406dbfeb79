"""mda.journal -- what a spool delivery decided, recorded before anything is written.

The spool consumer delivers each recipient of a queued message exactly once, however
often the queue manager hands it off (it makes a new hand-off per attempt) and
wherever a crash cuts an attempt short. Before the first maildir write, the
consumer records the plan of every recipient of a batch under its key (the spool
file's queue ID and the recipient's index), in one file per batch:

    <state>/mda/journal/<time>.<pid>.<n>     {"plans": {"<queue_id>.<index>": plan, ...}}

A plan names every outcome with its final identity: each folder with the maildir
name its copy gets (`common.storage.maildir.new_unique`), each redirect and the
vacation reply with the queue ID of its maildrop file, the duplicate IDs to record.
A later attempt finds the plan and replays it instead of running Sieve again (which
could decide otherwise, `duplicate` for one), skipping every folder that already
holds its copy.

The plans are also kept in memory, by key (read from the folder at the first
lookup after a start), so the check every delivery makes costs no system call. A
file is removed once every plan in it is answered for good (delivered or
bounced); files left behind (a message the queue expired while deferred) are
pruned by age. The memory is this process's: with several consumer processes, a
retry (a recipient answered before) whose plan memory lacks looks through the files
written since by the others (`load(refresh=True)`); such a file stays its writer's
to remove, and one whose last plan was answered elsewhere is pruned by age.

A batch file is written without its own fsync: the caller makes it durable with
the batch (mda.groupsync) before the first maildir write. A file torn by a crash
does not parse and counts as absent, which is safe: nothing was written after it.

SECURITY: keys are built from a queue ID and an index and checked against a strict
pattern; the files are written by this daemon only and parsed strictly.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

_KEY = re.compile(r"[0-9A-Za-z]{1,64}\.[0-9]{1,6}\Z")

#: plans older than this are pruned (longer than any queue keeps a message)
MAX_AGE = 30 * 86400

_counter = itertools.count(1)


def key_of(queue_id: str, index: int) -> str:
    key = f"{queue_id}.{index}"
    if not _KEY.match(key):
        raise ValueError(f"bad queue ID {queue_id!r}")
    return key


@dataclass
class Plan:
    """One recipient's delivery, decided. Folders are storage names."""

    user: str
    folders: list[dict] = field(default_factory=list)      # {"name", "flags", "unique"}
    redirects: list[dict] = field(default_factory=list)    # {"to", "qid"}
    vacation: dict | None = None        # the Vacation's fields and "qid", when a reply is due
    vacation_note: str | None = None    # why no reply, when the script asked for one
    duplicates: list[list] = field(default_factory=list)   # [key, seconds, last]
    errors: list[str] = field(default_factory=list)        # Sieve and folder problems, for the log
    fallback: str | None = None         # the INBOX copy's name if no redirect can be sent

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        if not isinstance(d, dict) or not isinstance(d.get("user"), str):
            raise ValueError("not a plan")
        plan = cls(**d)
        if not all(isinstance(f, dict) and isinstance(f.get("name"), str) and isinstance(f.get("unique"), str)
                   for f in plan.folders):
            raise ValueError("bad folders")
        if not all(isinstance(r, dict) and isinstance(r.get("to"), str) and isinstance(r.get("qid"), str)
                   for r in plan.redirects):
            raise ValueError("bad redirects")
        return plan


class Journal:
    """The plans of deliveries not yet answered for good. Thread-safe."""

    def __init__(self, state: Path):
        self.directory = state / "mda" / "journal"
        self.dir_name = str(self.directory)
        self._lock = threading.Lock()
        self._loaded = False
        self._plans: dict[str, tuple[Plan, str]] = {}     # key -> plan, its file's name
        self._pending: dict[str, set[str]] = {}           # file name -> keys not answered for good

    def _load_all(self) -> None:
        """Read every batch file (once, under the lock)."""
        self._loaded = True
        try:
            names = sorted(os.listdir(self.dir_name))
        except FileNotFoundError:
            return
        for name in names:
            plans = self._read(name)
            if plans:
                for key, plan in plans.items():
                    self._plans[key] = (plan, name)
                self._pending[name] = set(plans)

    def _read(self, name: str) -> dict[str, Plan] | None:
        try:
            fd = os.open(os.path.join(self.dir_name, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with open(fd, "rb") as f:
            data = f.read(64 << 20)
        try:
            d = json.loads(data.decode("utf-8"))
            return {key: Plan.from_dict(value) for key, value in d["plans"].items() if _KEY.match(key)}
        except (ValueError, TypeError, KeyError, AttributeError):
            return None   # torn by a crash before its sync: nothing was written after it

    def load(self, key: str, refresh: bool = False) -> tuple[Plan, str] | None:
        """The plan recorded for key and the path of its file, or None. refresh: when
        memory has none, read the files written since (by another consumer process:
        a retry's first attempt may have been made there)."""
        with self._lock:
            if not self._loaded:
                self._load_all()
            found = self._plans.get(key)
            if found is None and refresh:
                found = self._find(key)
        if found is None:
            return None
        return found[0], os.path.join(self.dir_name, found[1])

    def _find(self, key: str) -> tuple[Plan, str] | None:
        """key's plan in a file this process does not hold (written by another consumer
        process since the start), kept in memory for this key only. The file stays the
        other process's to remove (it is not counted here), so forgetting the key here
        never removes plans that process still needs."""
        try:
            names = sorted(os.listdir(self.dir_name))
        except FileNotFoundError:
            return None
        for name in names:
            if name in self._pending:
                continue
            plans = self._read(name)
            if plans and key in plans:
                self._plans[key] = (plans[key], name)
                return self._plans[key]
        return None

    def write(self, plans: dict[str, Plan]) -> str:
        """Record a batch's plans in a new file, not yet durable: the caller syncs the
        returned path (or its filesystem) before the first delivery."""
        with self._lock:
            if not self._loaded:
                self._load_all()    # before the new file exists
            replaced = [key for key in plans if key in self._plans]
        if replaced:
            self.forget(replaced)   # a plan decided anew (the user's entry changed)
        name = f"{time.time_ns()}.{os.getpid()}.{next(_counter)}"
        path = os.path.join(self.dir_name, name)
        data = json.dumps({"plans": {key: plan.__dict__ for key, plan in plans.items()}}, ensure_ascii=False,
                          separators=(",", ":")).encode("utf-8")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, flags, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        with self._lock:
            for key, plan in plans.items():
                self._plans[key] = (plan, name)
            self._pending[name] = set(plans)
        return path

    def forget(self, keys: list[str]) -> None:
        """Drop the plans of recipients answered for good; a file none of whose plans
        is needed any more is removed (not fsync'd: one that comes back after a
        crash is read again harmlessly, and pruned by age)."""
        done = []
        with self._lock:
            if not self._loaded:
                self._load_all()
            for key in keys:
                found = self._plans.pop(key, None)
                if found is None:
                    continue
                pending = self._pending.get(found[1])
                if pending is not None:
                    pending.discard(key)
                    if not pending:
                        del self._pending[found[1]]
                        done.append(found[1])
        for name in done:
            try:
                os.unlink(os.path.join(self.dir_name, name))
            except FileNotFoundError:
                pass

    def prune(self) -> int:
        """Remove batch files older than MAX_AGE (and their plans)."""
        removed = 0
        now = time.time()
        try:
            entries = list(os.scandir(self.dir_name))
        except FileNotFoundError:
            return 0
        for entry in entries:
            try:
                if now - entry.stat(follow_symlinks=False).st_mtime <= MAX_AGE:
                    continue
                os.unlink(entry.path)
            except OSError:
                continue
            removed += 1
            with self._lock:
                for key in self._pending.pop(entry.name, ()):
                    self._plans.pop(key, None)
        return removed
