"""common.storage.quota -- Maildir++ quota, the `maildirsize` file at the maildir root.

    <bytes>S,<count>C          limits (either part may be absent; 0 means no limit)
    <bytes> <count>            one line per change, appended (negative for removals)

Usage is the sum of the lines after the first. As the Maildir++ specification asks,
the file is recalculated from the folders when it is missing, when it grows to 5120
bytes or more, when the limits changed, and when it says "over quota" but is older
than 15 minutes. Appends are single small O_APPEND writes, so concurrent writers do
not need a lock (as in Courier and Dovecot).

SECURITY: the file is user-writable: numbers are parsed strictly and the read is
bounded; a broken file is recalculated.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from ..fsutil import write_durably

FILENAME = "maildirsize"
RECALC_SIZE = 5120
RECALC_AGE = 15 * 60
_READ_LIMIT = 1 << 20

Limits = tuple[int | None, int | None]
_SIZE_RE = re.compile(r",S=(\d+)")


def message_size(dirpath: str, filename: str) -> int:
    """Size of a maildir file: from ",S=" in its name, else lstat (0 if it vanished)."""
    m = _SIZE_RE.search(filename.split(":", 1)[0])
    if m:
        return int(m.group(1))
    try:
        return os.lstat(os.path.join(dirpath, filename)).st_size
    except OSError:
        return 0


def format_limits(limits: Limits) -> str:
    storage, count = limits
    parts = []
    if storage is not None:
        parts.append(f"{storage}S")
    if count is not None:
        parts.append(f"{count}C")
    return ",".join(parts) or "0S,0C"


def parse_limits(line: str) -> Limits:
    storage = count = None
    for part in line.strip().split(","):
        m = re.fullmatch(r"(\d{1,19})([SC])", part.strip())
        if m:
            value = int(m.group(1)) or None  # 0 means unlimited
            if m.group(2) == "S":
                storage = value
            else:
                count = value
    return storage, count


class MaildirSize:
    def __init__(self, root: Path, owner: tuple[int, int] | None = None):
        self.root = Path(root)
        self.path = self.root / FILENAME
        self.owner = owner

    def read(self) -> tuple[Limits, int, int, int, float] | None:
        """(limits, bytes, messages, file size, mtime), or None if missing or broken."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            data = f.read(_READ_LIMIT)
        lines = data.decode("ascii", "replace").split("\n")
        limits = parse_limits(lines[0])
        total = count = 0
        for line in lines[1:]:
            fields = line.split()
            if len(fields) != 2:
                if line.strip():
                    return None
                continue
            try:
                total += int(fields[0])
                count += int(fields[1])
            except ValueError:
                return None
        return limits, total, count, st.st_size, st.st_mtime

    def recalculate(self, limits: Limits) -> tuple[int, int]:
        total = count = 0
        folders = [self.root]
        with os.scandir(self.root) as it:
            for entry in it:
                if entry.name.startswith(".") and entry.name not in (".", "..") and \
                        not entry.name.startswith("..") and entry.is_dir(follow_symlinks=False):
                    folders.append(Path(entry.path))
        for folder in folders:
            for sub in ("new", "cur"):
                d = os.path.join(folder, sub)
                try:
                    names = os.listdir(d)
                except OSError:
                    continue
                for name in names:
                    if not name.startswith("."):
                        total += message_size(d, name)
                        count += 1
        data = f"{format_limits(limits)}\n{total} {count}\n".encode()
        write_durably(self.root, FILENAME, [data], tmp_dir=self.root / "tmp")
        if self.owner is not None:
            os.chown(self.path, *self.owner, follow_symlinks=False)
        return total, count

    def usage(self, limits: Limits | None = None) -> tuple[int, int]:
        """Current (bytes, messages), recalculating when the specification says so.

        limits None keeps what the file says."""
        state = self.read()
        if state is None:
            return self.recalculate(limits or (None, None))
        file_limits, total, count, size, mtime = state
        want = file_limits if limits is None else limits
        over = self.over(want, total, count, 0)
        if size >= RECALC_SIZE or want != file_limits or (over and time.time() - mtime > RECALC_AGE):
            return self.recalculate(want)
        return total, count

    @staticmethod
    def over(limits: Limits, total: int, count: int, adding: int) -> bool:
        storage, max_count = limits
        return (storage is not None and total + adding > storage) or \
            (max_count is not None and count + (1 if adding else 0) > max_count)

    def add(self, size: int, count: int = 1) -> None:
        """Record a change (a delivery, or negative for an expunge) if the file exists."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return
        try:
            os.write(fd, f"{size} {count}\n".encode())
        finally:
            os.close(fd)
