"""common.fsutil -- durable file writes, in one place, for spool and maildir alike.

The rule the whole suite keeps: nothing is acknowledged (250, OK, exit 0) before the
data is fsync'd, and the directory entry that makes it visible is fsync'd too. A
state change is a rename, so a crash leaves either the old state or the new one.

SECURITY: never follows a symlink for the final name (rename replaces the link
itself); files are created with the mode the caller gives, not the umask's.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Iterable
from pathlib import Path

#: Disk full and quota errors: callers turn these into temporary failures (452, 75).
NO_SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def fsync_dir(directory: str | os.PathLike) -> None:
    """fsync a directory so that entries created or renamed in it survive a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _load_syncfs():
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes
        import ctypes.util
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_syncfs = _load_syncfs()
#: Whether syncfs() is available (Linux): one call makes every write on a filesystem
#: durable (data, inodes and directory entries: one journal commit), so a batch of
#: files costs one call instead of an fsync per file and folder.
HAVE_SYNCFS = _syncfs is not None


def syncfs(directory: str | os.PathLike) -> None:
    """syncfs(2) the filesystem holding directory (HAVE_SYNCFS only). Since Linux 5.8
    it reports writeback errors; any error means nothing may be acknowledged."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if _syncfs(fd) != 0:
            import ctypes
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fspath(directory))
    finally:
        os.close(fd)


def write_file_synced(path: str | os.PathLike, chunks: Iterable[bytes], mode: int = 0o600,
                      sync: bool = True) -> int:
    """Create path exclusively, write chunks, fsync, close. Returns the size written.

    With sync=False there is no fsync: the caller makes the file durable (one
    syncfs(2) for a batch). On any error the partial file is removed and the error
    re-raised."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, mode)
    size = 0
    try:
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                view = view[n:]
                size += n
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    os.close(fd)
    return size


def write_durably(directory: Path, final_name: str, chunks: Iterable[bytes],
                  tmp_dir: Path | None = None, mode: int = 0o600, sync_dir: bool = True,
                  sync_file: bool = True) -> Path:
    """Write to a temp file, fsync it, rename it into place, fsync the directory.

    Only after this returns may anyone be told the data is safe. tmp_dir must be on
    the same filesystem as directory (default: directory itself, with a dot name).
    sync_dir=False and sync_file=False leave those fsyncs to the caller."""
    tmp_dir = tmp_dir or directory
    tmp = tmp_dir / f".tmp.{os.getpid()}.{final_name}"
    write_file_synced(tmp, chunks, mode, sync=sync_file)
    final = directory / final_name
    try:
        os.rename(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync_dir:
        fsync_dir(directory)
        if tmp_dir != directory:
            fsync_dir(tmp_dir)
    return final


def rename_durably(src: Path, dst: Path) -> None:
    """Move src to dst (same filesystem) and fsync both directories: a state change."""
    os.rename(src, dst)
    fsync_dir(dst.parent)
    if src.parent != dst.parent:
        fsync_dir(src.parent)


def replace_file_durably(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Atomically replace path's contents (temp file in the same folder + rename)."""
    write_durably(path.parent, path.name, [data], mode=mode)


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in NO_SPACE_ERRNOS
