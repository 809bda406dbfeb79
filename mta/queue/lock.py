"""mta.queue.lock -- who owns active/: the running queue manager, or nobody.

The queue manager holds an exclusive flock(2) on the spool's `.queue-manager.lock`
for as long as it runs; the kernel drops it when the process ends, even by
SIGKILL, so a stale lock cannot exist. postroom-queue takes the same lock to learn
that no queue manager runs, and keeps it while it acts on messages in active/, so
that none starts meanwhile (as Postfix's postsuper acts on the active queue only
safely while Postfix is stopped). A second queue manager on the same spool cannot
start either.

SECURITY: the file holds no data; it is created 0600 and given to the spool's
owner, so no other local user can open it to hold the lock.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

LOCK_NAME = ".queue-manager.lock"


def open_lock(spool_root: Path) -> int:
    """A descriptor of the lock file (created if need be); the caller closes it."""
    fd = os.open(Path(spool_root) / LOCK_NAME, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        owner = os.stat(spool_root)
        if os.geteuid() == 0 and os.fstat(fd).st_uid != owner.st_uid:
            os.fchown(fd, owner.st_uid, owner.st_gid)   # root made it: the MTA user must open it too
    except OSError:
        os.close(fd)
        raise
    return fd


def try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def acquire(spool_root: Path, wait: float) -> int:
    """The lock for a queue manager, waiting up to `wait` seconds for a postroom-queue
    run to finish. RuntimeError when another queue manager holds it."""
    fd = open_lock(spool_root)
    deadline = time.monotonic() + wait
    while not try_lock(fd):
        if time.monotonic() >= deadline:
            os.close(fd)
            raise RuntimeError(f"another queue manager runs on the spool {spool_root}")
        time.sleep(0.05)
    return fd


def manager_stopped(spool_root: Path) -> int | None:
    """A locked descriptor when no queue manager runs (close it when done), else None."""
    try:
        fd = open_lock(spool_root)
    except FileNotFoundError:
        return None     # no spool at all: nothing in active/ either
    if try_lock(fd):
        return fd
    os.close(fd)
    return None
