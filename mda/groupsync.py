"""mda.groupsync -- make a batch of writes durable together (group commit).

The spool consumer writes many small files per batch (plans, maildir files) and may
tell nobody about any of them until all are on disk. `GroupSync` collects the files
and folders written without fsync and makes them durable in `flush()`: each file
and each folder fsync'd once.

SECURITY: paths come from this daemon's own writes; nothing here is followed
through a symlink (files are opened with O_NOFOLLOW).
"""

from __future__ import annotations

import os
from pathlib import Path

from common.fsutil import fsync_dir


class GroupSync:
    def __init__(self) -> None:
        self.files: list[Path] = []
        self.dirs: set[Path] = set()

    def add_file(self, path: Path) -> None:
        self.files.append(path)
        self.dirs.add(path.parent)

    def add_dir(self, path: Path) -> None:
        self.dirs.add(path)

    def __bool__(self) -> bool:
        return bool(self.files or self.dirs)

    def flush(self) -> None:
        """Every file and folder collected is durable on return."""
        for path in self.files:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        for d in self.dirs:
            fsync_dir(d)
        self.files.clear()
        self.dirs.clear()
