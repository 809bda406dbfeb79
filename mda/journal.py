"""mda.journal -- what a spool delivery decided, recorded before anything is written.

The spool consumer delivers each recipient of a queued message exactly once, however
often the queue manager hands it off (it makes a new hand-off per attempt) and
wherever a crash cuts an attempt short. Before the first maildir write, the
consumer records the plan under the recipient's key (the spool file's queue ID and
the recipient's index):

    <state>/mda/journal/<queue_id>.<index>     one JSON plan

A plan names every outcome with its final identity: each folder with the maildir
name its copy gets (`common.storage.maildir.new_unique`), each redirect and the
vacation reply with the queue ID of its maildrop file, the duplicate IDs to record.
A later attempt finds the plan and replays it instead of running Sieve again (which
could decide otherwise, `duplicate` for one), skipping every folder that already
holds its copy. The plan is removed once a final answer (delivered or bounced) is
durable; records left behind (a message the queue expired while deferred) are
pruned by age.

A plan is written without its own fsync: the caller makes a batch of plans durable
at once (`common`-free group commit, see mda.groupsync) before the first maildir
write. A plan torn by a crash does not parse and counts as absent, which is safe:
nothing was written after it.

SECURITY: keys are built from a queue ID and an index and checked against a strict
pattern; plans are written by this daemon only and parsed strictly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .state import Records

_KEY = re.compile(r"[0-9A-Za-z]{1,64}\.[0-9]{1,6}\Z")

#: plans older than this are pruned (longer than any queue keeps a message)
MAX_AGE = 30 * 86400


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

    def to_json(self) -> bytes:
        # The fields are plain lists and dicts already (dataclasses.asdict's deep copy
        # cost more than the rest of the plan's write).
        return json.dumps(self.__dict__, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Plan":
        d = json.loads(data.decode("utf-8"))
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
    """The plans of deliveries not yet finally answered."""

    def __init__(self, state: Path):
        self.directory = state / "mda" / "journal"
        self.dir_name = str(self.directory)
        self.records = Records(self.directory)

    def path(self, key: str) -> str:
        return os.path.join(self.dir_name, key)

    def load(self, key: str) -> Plan | None:
        """The plan recorded for key; None when there is none (or it was torn)."""
        try:
            fd = os.open(self.path(key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with open(fd, "rb") as f:
            data = f.read(1 << 20)
        try:
            return Plan.from_json(data)
        except (ValueError, TypeError, KeyError):
            return None

    def write(self, key: str, plan: Plan) -> str:
        """Write the plan, not yet durable: the caller syncs the returned file and
        the journal folder (or the filesystem) before the first delivery."""
        path = self.path(key)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(plan.to_json())
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        return path

    def remove(self, key: str) -> None:
        """Forget a plan whose final answer is durable. Not fsync'd: a plan that
        comes back after a crash is pruned by age, or replayed harmlessly."""
        try:
            os.unlink(self.path(key))
        except FileNotFoundError:
            pass

    def prune(self) -> int:
        return self.records.prune(MAX_AGE)
