"""common.storage.lock -- the dotlock Dovecot uses for dovecot-uidlist, and an fcntl lock.

DotLock: "<file>.lock" created with O_EXCL (as Dovecot's file_dotlock can), holding
"pid:host". Another holder waits a bounded time; a lock whose mtime has not changed
for `stale` seconds (Dovecot: 2 minutes for the uidlist), or whose pid on this host
is dead, or that is still empty after a few seconds (its holder was killed between
creating and writing it), is removed. Data guarded by the lock is
rewritten through a temporary file and a rename while it is held, so readers never
need the lock.

A long-running process may take its dotlocks by link(2) instead (`link_holders`):
it keeps one file of its own in the folder's tmp/, ".dotlock.<host>.<pid>", holding
the same "pid:host", and links it to "<file>.lock". A hard link is as atomic and
as exclusive as O_EXCL (and is how Dovecot's dotlocks work on NFS), but allocates no
inode: on ext4 a create-and-unlink cycle cost about 50 us of CPU, a link-and-unlink
cycle 3. The holder's mtime is set before each link, so the lock's age is the age of
this hold for every stale check. Holders are removed at exit; one left by a crash is
swept from tmp/ with other stale files.

FileLock: an flock() on a file, released by the kernel when the process dies; used for
the POP3 session lock, which must never be stale.

SECURITY: lock files live inside the user's maildir and are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import atexit
import errno
import fcntl
import os
import socket
import time
from pathlib import Path

from .errors import LockTimeout, MailboxInUse

_HOST = socket.gethostname().split(".")[0]
#: An empty lock file older than this is stale (its holder died before writing its pid).
EMPTY_STALE = 5.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_holders: dict[str, str | None] = {}  # folder -> this process's holder (None: create locks)
_holders_pid = 0
_link = False


def link_holders(enabled: bool = True) -> None:
    """Take dotlocks by linking a holder file of this process (see the module's
    docstring): for daemons, which lock the same folders again and again. A short-lived
    process (a delivery) is better off creating the lock: it would create a holder."""
    global _link
    _link = enabled


def _holder(folder: str, content: bytes) -> str | None:
    """This process's holder file in folder/tmp/, made on first use; None where there
    is no tmp/ or it cannot be made (the lock is then created directly)."""
    global _holders_pid
    if _holders_pid != os.getpid():
        _holders.clear()
        _holders_pid = os.getpid()
    try:
        return _holders[folder]
    except KeyError:
        pass
    path = os.path.join(folder, "tmp", f".dotlock.{_HOST}.{os.getpid()}")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
        finally:
            os.close(fd)
    except OSError:
        path = None
    _holders[folder] = path
    return path


@atexit.register
def _remove_holders() -> None:
    if _holders_pid == os.getpid():
        for path in _holders.values():
            if path is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
    _holders.clear()


class DotLock:
    """`with DotLock(path_of_guarded_file): ...` -- Dovecot-compatible dotlock."""

    def __init__(self, target: Path, *, timeout: float = 10.0, stale: float = 120.0,
                 owner: tuple[int, int] | None = None):
        self.target = Path(target)
        self.path = self.target.with_name(self.target.name + ".lock")
        self._path = os.fspath(self.path)
        self._folder = os.path.dirname(self._path)
        self.timeout = timeout
        self.stale = stale
        self.owner = owner
        self.held = False

    def acquire(self) -> "DotLock":
        content = f"{os.getpid()}:{_HOST}".encode()
        if self._try(content):
            return self
        deadline = time.monotonic() + self.timeout
        delay = 0.0005
        while True:
            self._remove_if_stale()
            if self._try(content):
                return self
            if time.monotonic() >= deadline:
                raise LockTimeout(f"timed out waiting for {self.path}")
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _try(self, content: bytes) -> bool:
        try:
            self._create(content)
        except FileExistsError:
            return False
        self.held = True
        return True

    def _create(self, content: bytes) -> None:
        """Make the lock file (FileExistsError while another holds it)."""
        if _link and self.owner is None:
            folder = self._folder
            holder = _holder(folder, content)
            if holder is not None:
                try:
                    os.utime(holder, follow_symlinks=False)
                    os.link(holder, self._path, follow_symlinks=False)
                    return
                except FileExistsError:
                    raise
                except FileNotFoundError:
                    _holders.pop(folder, None)  # swept from tmp/ (or the folder is gone): made again
                except OSError:
                    _holders[folder] = None  # no hard links here: create the locks
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, content)
            if self.owner is not None:
                os.fchown(fd, *self.owner)
        finally:
            os.close(fd)

    def _remove_if_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        age = time.time() - st.st_mtime
        # A holder writes its pid at once after creating the lock: one still empty
        # after EMPTY_STALE seconds was left by a holder killed in between.
        stale = age > self.stale or (st.st_size == 0 and age > EMPTY_STALE)
        if not stale:
            try:
                with open(os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC), "rb") as f:
                    pid_s, _, host = f.read(300).decode("ascii", "replace").partition(":")
                if host.strip() == _HOST and pid_s.isdigit() and not _pid_alive(int(pid_s)):
                    stale = True
            except OSError:
                return
        if stale:
            try:
                # Remove only the lock we judged: a fresh one under the same name survives.
                if os.lstat(self.path).st_ino == st.st_ino:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass

    def touch(self) -> None:
        """Keep a long-held lock from looking stale."""
        if self.held:
            os.utime(self.path, follow_symlinks=False)

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "DotLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class FileLock:
    """An exclusive, non-blocking flock() on path; MailboxInUse when another holds it."""

    def __init__(self, path: Path, owner: tuple[int, int] | None = None):
        self.path = Path(path)
        self.fd: int | None = None
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MailboxInUse("the mailbox is locked by another session") from None
            raise
        if owner is not None:
            try:
                os.fchown(fd, *owner)
            except OSError:
                pass
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> "FileLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        self.release()
