"""mda.state -- small per-user records the MDA keeps under paths.state.

    <state>/mda/<user>/vacation/<key>    a vacation reply was sent (mtime = when)
    <state>/mda/<user>/duplicate/<key>   a message ID was seen (content = expiry time)
    <state>/mda/sent/<key>.<what>        a redirect (r0, r1...) or the vacation reply (v)
                                         of a spool delivery left (so a retry does not
                                         send it again); <key> as in mda.journal

One small file per record, written durably (temp file, fsync, rename, fsync dir):
no lock and no database, and old records are pruned by age.

SECURITY: keys are hex digests or names we built, never text from a message; the
user part of the path is the user database name with anything but [a-z0-9._@+-]
replaced, so no record can land outside its folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from common.fsutil import write_durably

_UNSAFE = re.compile(r"[^a-z0-9._@+-]")
_KEY = re.compile(r"[A-Za-z0-9._=+-]{1,200}\Z")


def digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def user_dir(state: Path, user: str) -> Path:
    safe = _UNSAFE.sub("_", user.lower()).lstrip(".") or "_"
    return state / "mda" / safe[:200]


def _check(key: str) -> str:
    if not _KEY.match(key) or key.startswith("."):
        raise ValueError(f"bad state key {key!r}")
    return key


class Records:
    """A folder of timestamped records: has(key, within) and put(key)."""

    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, key: str) -> Path:
        return self.directory / _check(key)

    def age(self, key: str) -> float | None:
        """Seconds since the record was written, or None if there is none."""
        try:
            return time.time() - os.stat(self._path(key)).st_mtime
        except OSError:   # missing, or not readable by a postroom-deliver run as the user
            return None

    def expiry(self, key: str) -> float | None:
        try:
            return float(self._path(key).read_text().strip() or 0)
        except (OSError, ValueError):
            return None

    def put(self, key: str, content: str = "") -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_durably(self.directory, _check(key), [content.encode()])

    def exists(self, key: str) -> bool:
        try:
            os.stat(self._path(key))
            return True
        except OSError:
            return False

    def prune(self, older_than: float, limit: int = 10_000) -> int:
        """Remove records older than older_than seconds; at most limit per call."""
        removed = 0
        now = time.time()
        try:
            entries = os.scandir(self.directory)
        except FileNotFoundError:
            return 0
        with entries:
            for entry in entries:
                if removed >= limit:
                    break
                try:
                    if now - entry.stat(follow_symlinks=False).st_mtime > older_than:
                        os.unlink(entry.path)
                        removed += 1
                except OSError:
                    pass
        return removed


class DuplicateStore:
    """RFC 7352 tracking: a key is a duplicate until its expiry time."""

    def __init__(self, state: Path, user: str):
        self.records = Records(user_dir(state, user) / "duplicate")

    def seen(self, key: str) -> bool:
        expiry = self.records.expiry(key)
        return expiry is not None and expiry > time.time()

    def record(self, key: str, seconds: float, last: bool) -> None:
        if not last and self.seen(key):
            return   # without :last the period runs from the first time it was seen
        self.records.put(key, f"{time.time() + seconds:.0f}")


class VacationStore:
    """When a vacation reply last went to a sender, per handle (RFC 5230 4.2)."""

    def __init__(self, state: Path, user: str):
        self.records = Records(user_dir(state, user) / "vacation")

    def key(self, sender: str, handle: str) -> str:
        return digest(sender.lower(), handle)

    def replied_within(self, sender: str, handle: str, seconds: float) -> bool:
        age = self.records.age(self.key(sender, handle))
        return age is not None and age < seconds

    def record(self, sender: str, handle: str) -> None:
        self.records.put(self.key(sender, handle))


def sent_journal(state: Path) -> Records:
    """Markers of redirects and replies already handed to the MTA for a hand-off."""
    return Records(state / "mda" / "sent")
