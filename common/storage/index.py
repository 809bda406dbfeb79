"""common.storage.index -- what postroom keeps about a mailbox beyond the maildir, and
the state of a mailbox that every session of one process shares.

Next to dovecot-uidlist in each mailbox directory:

    postroom-index        snapshot: every message's UID, file name, sizes, arrival
                          time and modification sequence, \\Recent, expunge history
                          (binary, checksummed; rewritten through a temporary file)
    postroom-index.log    what changed since the snapshot, one record per line,
                          appended under the lock
    postroom-index.lock   flock() held while the mailbox or the index changes

The maildir, dovecot-uidlist and dovecot-keywords stay the truth. The index only
spares a large mailbox the full directory listing and uidlist parse at open, and
keeps what the maildir cannot: modification sequences (RFC 7162), the expunge
history QRESYNC answers VANISHED from, and which messages are still \\Recent (the
first session that selects a mailbox takes them, as in Dovecot). It is never
fsync'd and never the only copy of anything: a missing, stale or corrupt index is
rebuilt from the maildir with the same UIDs (dovecot-uidlist keeps them), and is
reconciled with whatever other software did to the directories (their mtimes are
compared at every sync, and a directory whose mtime is too recent to prove
anything is listed again).

Modification sequences never go backwards, even when the index is lost: each new
one is max(highest + 1, the current time in microseconds), so a rebuilt index
starts above any value handed out before.

One `MailboxState` per mailbox per process (see `state_for`), shared by the
sessions of that process; each session's `common.storage.mailbox.Mailbox` is a view
that learns what changed since its last look from the state's journal, so a sync
costs the size of the change, not of the mailbox.

SECURITY: the index files are in the user's maildir and so user-writable: the
snapshot is checksummed and parsed strictly, log records are parsed strictly, file
names containing "/" or control characters are refused, and anything malformed
makes the index be rebuilt from the maildir. Files are opened with O_NOFOLLOW.
"""

from __future__ import annotations

import array
import atexit
import bisect
import errno
import fcntl
import os
import queue
import re
import struct
import sys
import threading
import time
import zlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ..fsutil import HAVE_SYNCFS, fsync_dir, syncfs, write_durably
from . import keywords as kwfile
from . import uidlist as uidfile
from .cache import MailCache
from .errors import MailboxNotFound, StorageError
from .lock import DotLock

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
INDEX = "postroom-index"
INDEX_LOG = "postroom-index.log"
INDEX_LOCK = "postroom-index.lock"

SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
LETTER_BY_LOWER = {v.lower(): k for k, v in SYSTEM_FLAGS.items()}
KEYWORD_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")

#: Largest control file (uidlist, keywords, index) we read.
CONTROL_READ_LIMIT = 256 << 20
#: A directory whose mtime is older than this when it is listed proves later that
#: nothing changed in it as long as its mtime stays. Filesystems with nanosecond
#: times set them from the kernel's coarse clock (a tick, at most 10 ms): a margin
#: of SETTLE_FINE covers that. A directory whose mtime has no sub-second part may be
#: on a filesystem that keeps whole seconds (ext3, NFS, FAT): SETTLE_SECONDS then.
SETTLE_SECONDS = 2.0
SETTLE_FINE = 0.05
#: How many times a flag change or expunge chases a file renamed by someone else.
RENAME_RETRIES = 8
#: Changes a view can catch up with incrementally; an older view compares everything.
JOURNAL_KEEP = 20_000
#: Expunges remembered for QRESYNC; older ones are answered from the client's UIDs.
EXPUNGE_HISTORY = 100_000
#: The log is folded into a new snapshot when it grows past this (and a quarter of
#: the snapshot's size).
LOG_COMPACT_BYTES = 256 * 1024
#: States without sessions kept per process, in messages (a warm reopen costs nothing).
IDLE_STATE_MESSAGES = 400_000
IDLE_STATES = 200
#: dovecot-uidlist is rewritten (dropping expunged records) when this many are stale.
UIDLIST_STALE_REWRITE = 1000

_VSIZE_RE = re.compile(r",W=(\d+)")
_SIZE_RE = re.compile(r",S=(\d+)")
_BAD_NAME = re.compile(r"[\x00-\x1f/\x7f]")
_BAD_NAME_IN_LIST = re.compile(r"[\x00-\x09\x0b-\x1f/\x7f]")
_MAGIC = b"postroom-index\x00\x01"
_HEAD = struct.Struct("<IIIQQQIIIQ")
_STAMP = struct.Struct("<QqBQqB")


def split_name(filename: str) -> tuple[str, str]:
    """'base:2,FS' -> ('base', 'FS'); names without ':2,' have no flags."""
    base, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, ""


_TIME_RE = re.compile(r"(\d{1,18})(?:\.M(\d{1,9}))?")


def sort_key(base: str) -> tuple[int, int, str]:
    """Arrival order of maildir names, as Dovecot's maildir_filename_sort_cmp: the
    seconds, then the microseconds of the M field as numbers, then the name."""
    m = _TIME_RE.match(base)
    if not m:
        return (0, 0, base)
    return (int(m.group(1)), int(m.group(2) or 0), base)


def crlf_size(data: bytes) -> int:
    """Size with every bare LF counted as CRLF (what IMAP and POP3 send)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def open_nofollow(path: Path | str) -> BinaryIO:
    """A message file for reading, unbuffered (whole reads or large steps: no
    buffer copy, no isatty/lseek per open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return open(fd, "rb", buffering=0)


def flag_letters(flags, keyword_index: dict[str, int] | None = None) -> str:
    letters = set()
    by_lower = {k.lower(): i for k, i in (keyword_index or {}).items()}
    for flag in flags:
        letter = LETTER_BY_LOWER.get(flag.lower())
        if letter:
            letters.add(letter)
        elif flag.lower() in by_lower:
            letters.add(kwfile.letter(by_lower[flag.lower()]))
    return "".join(sorted(letters))


def _now_modseq() -> int:
    return time.time_ns() // 1000


class Message:
    """One message as the state knows it. Replaced (never changed) when its flags,
    location or modification sequence change, so views can keep old ones."""

    __slots__ = ("uid", "filename", "sub", "_dir", "flags", "modseq", "_size", "_internaldate", "_vsize",
                 "pop3_uidl")

    def __init__(self, uid: int, filename: str, mailbox_dir: str, sub: str, flags: frozenset[str],
                 modseq: int = 0, size: int | None = None, vsize: int | None = None,
                 internaldate: float | None = None, pop3_uidl: str | None = None):
        self.uid = uid
        self.filename = filename
        self.sub = sub  # "cur" or "new"
        self._dir = mailbox_dir
        self.flags = flags
        self.modseq = modseq
        self._size = size
        self._vsize = vsize
        self._internaldate = internaldate
        self.pop3_uidl = pop3_uidl

    def moved(self, sub: str, filename: str, flags: frozenset[str], modseq: int) -> "Message":
        return Message(self.uid, filename, self._dir, sub, flags, modseq, self._size, self._vsize,
                       self._internaldate, self.pop3_uidl)

    @property
    def path(self) -> Path:
        return Path(self._dir, self.sub, self.filename)

    @property
    def fspath(self) -> str:
        return os.path.join(self._dir, self.sub, self.filename)

    @property
    def basename(self) -> str:
        return split_name(self.filename)[0]

    @property
    def size(self) -> int:
        """Physical size: ",S=" from the name, else from stat."""
        if self._size is None:
            m = _SIZE_RE.search(self.basename)
            if m:
                self._size = int(m.group(1))
            else:
                try:
                    self._size = os.lstat(self.fspath).st_size
                except OSError:
                    return 0
        return self._size

    @property
    def vsize(self) -> int:
        """Size with CRLF line endings: ",W=" from the name, else computed from the file."""
        if self._vsize is None:
            m = _VSIZE_RE.search(self.basename)
            if m:
                self._vsize = int(m.group(1))
            else:
                try:
                    with open_nofollow(self.fspath) as f:
                        self._vsize = crlf_size(f.read())
                except OSError:
                    return self.size
        return self._vsize

    @property
    def internaldate(self) -> float:
        """When the message arrived: the file's mtime, as Dovecot uses it."""
        if self._internaldate is None:
            try:
                self._internaldate = os.lstat(self.fspath).st_mtime
            except OSError:
                return 0.0
        return self._internaldate

    def __repr__(self) -> str:
        return f"<Message uid={self.uid} {self.filename!r}>"


class IndexCorrupt(Exception):
    """The snapshot or log cannot be used: rebuild from the maildir."""


# The journal's kinds of change.
NEW, FLAGS, EXPUNGED = 0, 1, 2


class MailboxState:
    """One mailbox as this process knows it; shared by its sessions' views."""

    def __init__(self, store, name: str, path: Path):
        self.store = store
        self.name = name
        self.path = Path(path)
        self._dir = str(path)
        self.dir_ino = os.stat(self._dir).st_ino
        join = os.path.join
        self._uidlist_path = join(self._dir, UIDLIST)
        self._keywords_path = join(self._dir, KEYWORDS)
        self._log_path = join(self._dir, INDEX_LOG)
        self._new_dir, self._cur_dir = join(self._dir, "new"), join(self._dir, "cur")
        self.uidvalidity = 0
        self.next_uid = 1
        self.highest_modseq = 0
        self.first_recent_uid = 1
        self.by_uid: dict[int, Message] = {}
        self.by_base: dict[str, int] = {}
        self._names: dict[str, set[str]] | None = None  # file names in new/ and cur/ (built on first use)
        self._sorted: list[int] | None = []
        self.exp_modseqs: list[int] = []
        self.exp_uids: list[int] = []
        self.vanished_floor = 0
        # journal of changes for views: entry i has version journal_base + i + 1
        self.version = 0
        self.journal_base = 0
        self.journal: list[tuple[int, int]] = []
        self.views = 0
        # directory stamps: (ino, mtime_ns) and whether a listing proved their content
        self._new_stamp: tuple | None = None
        self._cur_stamp: tuple | None = None
        self._new_trusted = False
        self._cur_trusted = False
        # cur/ trusted from our own change rather than a listing: list it once after this (ns)
        self._cur_verify_at = 0
        self._chases = 0  # files found renamed by someone else (find())
        # dovecot-uidlist as last read (parsed incrementally when appended to)
        self._ul: uidfile.UidList | None = None
        self._ul_sig: tuple | None = None
        self._ul_pos = 0
        self._ul_ino = 0  # the uidlist file our UIDs agree with
        self._ul_compacted_at = 0  # records the uidlist kept at our last rewrite of it
        self._ul_dotlock: DotLock | None = None
        self._keywords: list[str | None] = []
        self._keywords_sig: tuple | None = None
        self._flags_memo: dict[str, frozenset[str]] = {}
        # the index files
        self._lock_fd: int | None = None
        self._lock_depth = 0
        self._log_fd: int | None = None
        self._log_ino = 0
        self._log_pos = 0
        self._generation = 0
        self._snapshot_size = 0
        self._pending: list[str] = []
        self.persistent = True
        self._loaded = False
        self._cache = None
        self._counts_version = -1
        self._unseen = self._vsize_total = 0

    # ------------------------------------------------------------------ basics

    def sorted_uids(self) -> list[int]:
        if self._sorted is None:
            self._sorted = sorted(self.by_uid)
        return self._sorted

    def messages(self) -> list[Message]:
        by_uid = self.by_uid
        return [by_uid[u] for u in self.sorted_uids()]

    def unseen_count(self) -> int:
        if self._counts_version != self.version:
            self._count_totals()
        return self._unseen

    def total_vsize(self) -> int:
        """The mailbox's size as IMAP counts it (CRLF), for STATUS SIZE."""
        if self._counts_version != self.version:
            self._count_totals()
        return self._vsize_total

    def _count_totals(self) -> None:
        msgs = self.by_uid.values()
        self._unseen = sum(1 for m in msgs if "\\Seen" not in m.flags)
        self._vsize_total = sum(m.vsize for m in msgs)
        self._counts_version = self.version

    def recent_count(self) -> int:
        uids = self.sorted_uids()
        return len(uids) - bisect.bisect_left(uids, self.first_recent_uid)

    def _next_modseq(self) -> int:
        self.highest_modseq = max(self.highest_modseq + 1, _now_modseq())
        return self.highest_modseq

    def _note(self, kind: int, uid: int) -> None:
        self.version += 1
        self.journal.append((kind, uid))
        if len(self.journal) > JOURNAL_KEEP:
            drop = len(self.journal) - JOURNAL_KEEP // 2
            del self.journal[:drop]
            self.journal_base += drop

    def changes_since(self, version: int) -> list[tuple[int, int]] | None:
        """(kind, uid) changes after `version`, in order; None when too old to tell."""
        if version < self.journal_base:
            return None
        return self.journal[version - self.journal_base:]

    def _add(self, msg: Message) -> None:
        self.by_uid[msg.uid] = msg
        self.by_base[msg.basename] = msg.uid
        if self._names is not None:
            self._names[msg.sub].add(msg.filename)
        if self._sorted is not None:
            if not self._sorted or msg.uid > self._sorted[-1]:
                self._sorted.append(msg.uid)
            else:
                self._sorted = None
        self._note(NEW, msg.uid)

    def _replace(self, msg: Message, notify: bool = True) -> None:
        old = self.by_uid.get(msg.uid)
        if old is not None:
            if old.basename != msg.basename:
                self.by_base.pop(old.basename, None)
            if self._names is not None:
                self._names[old.sub].discard(old.filename)
        if self._names is not None:
            self._names[msg.sub].add(msg.filename)
        self.by_uid[msg.uid] = msg
        self.by_base[msg.basename] = msg.uid
        if notify:
            self._note(FLAGS, msg.uid)

    def _forget(self, uids, modseq: int) -> None:
        gone = []
        for uid in uids:
            msg = self.by_uid.pop(uid, None)
            if msg is None:
                continue
            gone.append(uid)
            self.by_base.pop(msg.basename, None)
            if self._names is not None:
                self._names[msg.sub].discard(msg.filename)
            self.exp_modseqs.append(modseq)
            self.exp_uids.append(uid)
            self._note(EXPUNGED, uid)
        if self._cache is not None and gone:
            self._cache.forget(gone)
        if self._sorted is not None and len(gone) <= 32:
            for uid in gone:
                i = bisect.bisect_left(self._sorted, uid)
                if i < len(self._sorted) and self._sorted[i] == uid:
                    del self._sorted[i]
        elif gone:
            self._sorted = None
        if len(self.exp_uids) > EXPUNGE_HISTORY:
            drop = len(self.exp_uids) - EXPUNGE_HISTORY // 2
            self.vanished_floor = max(self.vanished_floor, self.exp_modseqs[drop - 1])
            del self.exp_modseqs[:drop]
            del self.exp_uids[:drop]

    def cache_get(self, uid: int, kind: int) -> bytes | None:
        """A value derived from message `uid`'s content kept in postroom-cache
        (common.storage.cache; untrusted bytes: parse them strictly)."""
        if self._cache is None:
            self._cache = MailCache(self.path, self.store.owner)
        return self._cache.get(self.uidvalidity, uid, kind)

    def cache_put(self, uid: int, kind: int, data: bytes) -> None:
        if uid not in self.by_uid:
            return
        if self._cache is None:
            self._cache = MailCache(self.path, self.store.owner)
        self._cache.put(self.uidvalidity, uid, kind, data)

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after `modseq`, or None when the history does not reach back
        that far (the caller then reports every UID it cannot find)."""
        if modseq < self.vanished_floor:
            return None
        i = bisect.bisect_right(self.exp_modseqs, modseq)
        return sorted(set(self.exp_uids[i:]))

    # ------------------------------------------------------------------ keywords and flags

    def load_keywords(self, force: bool = False) -> list[str | None]:
        path = self._keywords_path
        if not force and _signature(path) == self._keywords_sig:
            return self._keywords
        got = _read_control(path)
        if got is None:
            table, sig = [], None
        else:
            table, sig = kwfile.parse(got[0]), got[1]
        if table != self._keywords:
            self._flags_memo = {}
        self._keywords, self._keywords_sig = table, sig
        return table

    def flags_of(self, letters: str) -> frozenset[str]:
        got = self._flags_memo.get(letters)
        if got is not None:
            return got
        flags = []
        table = self._keywords
        for ch in letters:
            if ch in SYSTEM_FLAGS:
                flags.append(SYSTEM_FLAGS[ch])
            elif ch in KEYWORD_LETTERS:
                i = kwfile.index_of(ch)
                if i >= len(table) or table[i] is None:
                    table = self.load_keywords()
                if i < len(table) and table[i]:
                    flags.append(table[i])
        got = frozenset(flags)
        if len(self._flags_memo) < 4096:
            self._flags_memo[letters] = got
        return got

    def ensure_keywords(self, names) -> dict[str, int]:
        """Index of each keyword, adding new ones to dovecot-keywords (under its own
        dotlock, as Dovecot does). Keywords beyond the 26 letters are not stored."""
        wanted = [n for n in names if not n.startswith("\\")]
        if not wanted:
            return {}
        for n in wanted:
            if not kwfile.valid_keyword(n):
                raise StorageError(f"invalid keyword {n!r}", temporary=False)

        def lookup(table):
            by_lower = {k.lower(): i for i, k in enumerate(table) if k}
            found = {n: by_lower[n.lower()] for n in wanted if n.lower() in by_lower}
            return found, [n for n in wanted if n not in found]

        found, missing = lookup(self.load_keywords())
        if not missing:
            return found
        with DotLock(self.path / KEYWORDS, owner=self.store.owner):
            table = list(self.load_keywords(force=True))
            found, missing = lookup(table)
            for n in missing:
                if n.lower() in {k.lower() for k in table if k}:
                    continue
                slot = next((i for i, k in enumerate(table) if k is None), None)
                if slot is None and len(table) < kwfile.MAX_KEYWORDS:
                    table.append(None)
                    slot = len(table) - 1
                if slot is None:
                    break
                table[slot] = n
            if missing:
                write_durably(self.path, KEYWORDS, [kwfile.format(table)], tmp_dir=self.path / "tmp")
                self.store._chown(self.path / KEYWORDS)
        found, _ = lookup(self.load_keywords(force=True))
        return found

    # ------------------------------------------------------------------ locking and the log

    def locked(self) -> "_Locked":
        """`with state.locked():` -- exclusive against other processes, re-entrant,
        caught up with the log on entry, records written on exit."""
        return _Locked(self)

    def _acquire(self) -> None:
        if self._lock_depth == 0:
            if self.persistent and self._lock_fd is None:
                try:
                    fd = os.open(self.path / INDEX_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                    if self.store.owner is not None:
                        os.fchown(fd, *self.store.owner)
                    self._lock_fd = fd
                except OSError as e:
                    if e.errno == errno.ENOENT and not os.path.isdir(self._dir):
                        raise MailboxNotFound(self.name) from None
                    self._go_memory_only(e)
            if self._lock_fd is not None:
                _flock(self._lock_fd, fcntl.LOCK_EX, self._dir)
        self._lock_depth += 1

    def _release(self) -> None:
        self._lock_depth -= 1
        if self._lock_depth:
            return
        try:
            self._flush_log()
        finally:
            if self._lock_fd is not None:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _go_memory_only(self, exc: BaseException) -> None:
        """The index cannot be written here (read-only maildir): work from memory."""
        self.persistent = False
        self._pending = []
        for fd in (self._lock_fd, self._log_fd):
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._log_fd = None
        if self._cache is not None:
            self._cache.close()
        from ..log import get_logger
        get_logger("storage.index").info("index of {path} not writable ({error}); kept in memory only",
                                         path=self._dir, error=str(exc))

    def _log(self, record: str) -> None:
        if self.persistent:
            self._pending.append(record)

    def _flush_log(self) -> None:
        if not self._pending or not self.persistent:
            return
        data = "".join(self._pending).encode("utf-8", "surrogateescape")
        self._pending = []
        try:
            if self._log_fd is None:
                self._write_snapshot()
                return
            os.write(self._log_fd, data)
            self._log_pos += len(data)
            if self._log_pos > LOG_COMPACT_BYTES and self._log_pos > self._snapshot_size // 4:
                self._write_snapshot()
        except OSError as e:
            self._go_memory_only(e)

    def _catch_up(self) -> None:
        """Apply what other processes appended to the log; reload or rebuild when the
        files were replaced, removed or damaged. Called with the lock held."""
        if not self.persistent:
            return
        try:
            st = os.stat(self._log_path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError as e:
            self._go_memory_only(e)
            return
        if self._log_fd is None and self._loaded and st is not None and st.st_ino == self._log_ino:
            # Same log as when the files were closed (an idle state): read on -- unless
            # its inode number was freed and given to a later log (of another generation).
            try:
                self._log_fd = os.open(self._log_path, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                self._log_fd = None
            if self._log_fd is not None and (
                    os.fstat(self._log_fd).st_ino != self._log_ino
                    or not os.pread(self._log_fd, 32, 0).startswith(b"G %d\n" % self._generation)):
                os.close(self._log_fd)
                self._log_fd = None
        if self._log_fd is not None and st is not None and st.st_ino == self._log_ino:
            if st.st_size == self._log_pos:
                return
            try:
                data = os.pread(self._log_fd, min(st.st_size - self._log_pos, CONTROL_READ_LIMIT), self._log_pos)
                self._replay(data)
                return
            except (IndexCorrupt, OSError) as e:
                self._note_corrupt(e)
        if self._loaded and st is not None:
            # The log was replaced: another process wrote a new snapshot.
            try:
                self._load_files()
                return
            except (IndexCorrupt, OSError) as e:
                self._note_corrupt(e)
        if self._loaded:
            # Removed or damaged while we held a good picture: write it out again
            # after checking it against the maildir (modseqs keep going up).
            self._reset_dir_trust()
            self._scan_dirs(move_new=False)
            self._write_snapshot()
            return
        try:
            self._load_files()
        except (IndexCorrupt, OSError) as e:
            if not isinstance(e, FileNotFoundError):
                self._note_corrupt(e)
            self._rebuild()

    def _note_corrupt(self, exc: BaseException) -> None:
        from ..log import get_logger
        get_logger("storage.index").warn("index of {path} unusable ({error}); rebuilding", path=self._dir,
                                         error=str(exc))

    def _replay(self, data: bytes) -> None:
        end = data.rfind(b"\n") + 1
        if end == 0:
            return
        for line in data[:end].decode("utf-8", "surrogateescape").split("\n")[:-1]:
            self._apply(line)
        self._log_pos += end

    def _apply(self, line: str) -> None:
        """One log record of another process (or of a reload)."""
        kind, _, rest = line.partition(" ")
        try:
            if kind == "N":
                uid_s, modseq_s, sub, idate_s, size_s, vsize_s, filename = rest.split(" ", 6)
                uid = _uint(uid_s)
                self._check_name(filename)
                if sub not in ("new", "cur"):
                    raise ValueError(sub)
                size, vsize = int(size_s), int(vsize_s)
                msg = Message(uid, filename, self._dir, sub, self.flags_of(split_name(filename)[1]),
                              _uint(modseq_s), size if size >= 0 else None, vsize if vsize >= 0 else None,
                              float(idate_s))
                if uid in self.by_uid:
                    self._replace(msg)
                else:
                    self._add(msg)
                self.next_uid = max(self.next_uid, uid + 1)
                self.highest_modseq = max(self.highest_modseq, msg.modseq)
                self._dirty_sub(sub)
            elif kind == "F":
                uid_s, modseq_s, sub, filename = rest.split(" ", 3)
                uid, modseq = _uint(uid_s), _uint(modseq_s)
                self._check_name(filename)
                old = self.by_uid.get(uid)
                if old is not None:
                    new = old.moved(sub, filename, self.flags_of(split_name(filename)[1]), modseq or old.modseq)
                    self._replace(new, notify=bool(modseq))
                    self.highest_modseq = max(self.highest_modseq, modseq)
                self._dirty_sub(sub)
            elif kind == "X":
                modseq_s, uids_s = rest.split(" ", 1)
                modseq = _uint(modseq_s)
                self._forget([_uint(u) for u in uids_s.split(",")], modseq)
                self.highest_modseq = max(self.highest_modseq, modseq)
                self._cur_trusted = self._new_trusted = False
            elif kind == "R":
                self.first_recent_uid = max(self.first_recent_uid, _uint(rest))
            elif kind == "V":
                uidvalidity_s, modseq_s = rest.split(" ")
                self._reset_uids(_uint(uidvalidity_s), _uint(modseq_s))
            elif kind == "D":
                f = [int(x) for x in rest.split(" ")]
                if len(f) != 6:
                    raise ValueError("stamp")
                self._new_stamp, self._new_trusted = (f[0], f[1]), bool(f[2])
                self._cur_stamp, self._cur_trusted = (f[3], f[4]), bool(f[5])
            elif kind == "P":
                uid_s, value = rest.split(" ", 1)
                old = self.by_uid.get(_uint(uid_s))
                if old is not None:
                    old.pop3_uidl = value
            elif kind == "G":
                raise ValueError("generation record inside the log")
            else:
                raise ValueError(f"record type {kind[:5]!r}")
        except (ValueError, IndexError) as e:
            raise IndexCorrupt(f"bad log record: {e}") from None

    @staticmethod
    def _check_name(filename: str) -> None:
        if not filename or _BAD_NAME.search(filename):
            raise ValueError("file name")

    def _dirty_sub(self, sub: str) -> None:
        if sub == "new":
            self._new_trusted = False
        else:
            self._cur_trusted = False

    def _reset_dir_trust(self) -> None:
        self._new_trusted = self._cur_trusted = False

    def _reset_uids(self, uidvalidity: int, modseq: int) -> None:
        """UIDVALIDITY changed: every UID known is gone."""
        self._forget(list(self.by_uid), modseq)
        self.by_base.clear()
        self.exp_modseqs.clear()
        self.exp_uids.clear()
        self.vanished_floor = modseq
        self.uidvalidity = uidvalidity
        self.next_uid = 1
        self.first_recent_uid = 1
        self.highest_modseq = max(self.highest_modseq, modseq)
        self._reset_dir_trust()

    # ------------------------------------------------------------------ snapshot

    def _load_files(self) -> None:
        """Load snapshot and log from scratch (the log must belong to the snapshot)."""
        log_fd = os.open(self.path / INDEX_LOG, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            st = os.fstat(log_fd)
            if st.st_size > CONTROL_READ_LIMIT:
                raise IndexCorrupt("log too large")
            data = os.pread(log_fd, st.st_size, 0)
            head, _, _ = data.partition(b"\n")
            if not head.startswith(b"G ") or not head[2:].isdigit():
                raise IndexCorrupt("log without a generation")
            generation = int(head[2:])
            snap = _read_control(self.path / INDEX)
            if snap is None:
                raise IndexCorrupt("log without a snapshot")
            self._decode_snapshot(snap[0], generation)
            self._snapshot_size = len(snap[0])
            self._generation = generation
            self._log_pos = len(head) + 1
            self._replay(data[self._log_pos:])
        except BaseException:
            os.close(log_fd)
            raise
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd, self._log_ino = log_fd, st.st_ino
        self._loaded = True

    def _decode_snapshot(self, data: bytes, generation: int) -> None:
        if len(data) < len(_MAGIC) + _HEAD.size + _STAMP.size + 4 or not data.startswith(_MAGIC):
            raise IndexCorrupt("not a snapshot")
        body, crc = data[:-4], struct.unpack("<I", data[-4:])[0]
        if zlib.crc32(body) != crc:
            raise IndexCorrupt("snapshot checksum")
        pos = len(_MAGIC)
        (uidvalidity, next_uid, first_recent, highest, floor, gen, count, n_exp, extra_len,
         ul_ino) = _HEAD.unpack_from(body, pos)
        pos += _HEAD.size
        if gen != generation:
            raise IndexCorrupt("snapshot and log of different generations")
        new_ino, new_mtime, new_ok, cur_ino, cur_mtime, cur_ok = _STAMP.unpack_from(body, pos)
        pos += _STAMP.size

        def column(code: str, n: int):
            nonlocal pos
            arr = array.array(code)
            size = arr.itemsize * n
            if pos + size > len(body):
                raise IndexCorrupt("short snapshot")
            arr.frombytes(body[pos:pos + size])
            if sys.byteorder != "little":
                arr.byteswap()
            pos += size
            return arr

        uids = column("I", count)
        modseqs = column("Q", count)
        idates = column("d", count)
        sizes = column("q", count)
        vsizes = column("q", count)
        subs = column("B", count)
        names_len = column("I", 1)[0]
        if pos + names_len > len(body):
            raise IndexCorrupt("short snapshot")
        names_text = body[pos:pos + names_len].decode("utf-8", "surrogateescape")
        names = names_text.split("\n") if count else []
        pos += names_len
        exp_modseqs = column("Q", n_exp)
        exp_uids = column("I", n_exp)
        extra = body[pos:pos + extra_len].decode("utf-8", "surrogateescape")
        pos += extra_len
        if pos != len(body) or len(names) != count:
            raise IndexCorrupt("snapshot layout")
        if count and (any(b > 1 for b in subs) or list(uids) != sorted(set(uids)) or uids[-1] >= next_uid):
            raise IndexCorrupt("snapshot records")
        if count and (_BAD_NAME_IN_LIST.search(names_text) or "\n\n" in names_text
                      or names_text[:1] == "\n" or names_text[-1:] == "\n"):
            raise IndexCorrupt("snapshot file names")
        self.uidvalidity, self.next_uid, self._ul_ino = uidvalidity, next_uid, ul_ino
        self.first_recent_uid, self.vanished_floor = first_recent, floor
        self.highest_modseq = max(self.highest_modseq, highest)
        d = self._dir
        flags_of = self.flags_of
        self.load_keywords()
        memo = self._flags_memo
        by_uid: dict[int, Message] = {}
        by_base: dict[str, int] = {}
        sub_names = ("new", "cur")
        for uid, name, modseq, idate, size, vsize, sub in zip(uids, names, modseqs, idates, sizes, vsizes, subs):
            base, _, info = name.partition(":")
            letters = info[2:] if info[:2] == "2," else ""
            flags = memo.get(letters)
            if flags is None:
                flags = flags_of(letters)
            msg = Message(uid, name, d, sub_names[sub], flags, modseq, size if size >= 0 else None,
                          vsize if vsize >= 0 else None, idate)
            by_uid[uid] = msg
            by_base[base] = uid
        for line in extra.split("\n"):
            if line:
                uid_s, _, value = line.partition(" ")
                msg = by_uid.get(int(uid_s)) if uid_s.isdigit() else None
                if msg is not None:
                    msg.pop3_uidl = value
        self.by_uid, self.by_base, self._sorted = by_uid, by_base, list(uids)
        self._names = None
        self.exp_modseqs, self.exp_uids = list(exp_modseqs), list(exp_uids)
        # Views of this process compare everything with what they had.
        self.version += 1
        self.journal_base = self.version
        self.journal = []
        self._new_stamp, self._new_trusted = (new_ino, new_mtime), bool(new_ok)
        self._cur_stamp, self._cur_trusted = (cur_ino, cur_mtime), bool(cur_ok)

    def _encode_snapshot(self, generation: int) -> bytes:
        msgs = self.messages()
        count = len(msgs)
        names = "\n".join(m.filename for m in msgs).encode("utf-8", "surrogateescape")
        extra = "".join(f"{m.uid} {m.pop3_uidl}\n" for m in msgs if m.pop3_uidl).encode("utf-8", "surrogateescape")

        def col(code: str, values) -> bytes:
            arr = array.array(code, values)
            if sys.byteorder != "little":
                arr.byteswap()
            return arr.tobytes()

        new_stamp = self._new_stamp or (0, 0)
        cur_stamp = self._cur_stamp or (0, 0)
        parts = [
            _MAGIC,
            _HEAD.pack(self.uidvalidity, self.next_uid, self.first_recent_uid, self.highest_modseq,
                       self.vanished_floor, generation, count, len(self.exp_uids), len(extra), self._ul_ino),
            _STAMP.pack(new_stamp[0], new_stamp[1], int(self._new_trusted), cur_stamp[0], cur_stamp[1],
                        int(self._cur_listed_trust())),
            col("I", (m.uid for m in msgs)),
            col("Q", (m.modseq for m in msgs)),
            col("d", (m._internaldate if m._internaldate is not None else 0.0 for m in msgs)),
            col("q", (m._size if m._size is not None else -1 for m in msgs)),
            col("q", (m._vsize if m._vsize is not None else -1 for m in msgs)),
            col("B", (1 if m.sub == "cur" else 0 for m in msgs)),
            col("I", [len(names)]),
            names,
            col("Q", self.exp_modseqs),
            col("I", self.exp_uids),
            extra,
        ]
        body = b"".join(parts)
        return body + struct.pack("<I", zlib.crc32(body))

    def _write_snapshot(self) -> None:
        """Fold everything into a new snapshot and start an empty log (lock held).
        Neither file is fsync'd: the index is never the only copy of anything."""
        if not self.persistent:
            return
        generation = max(self._generation + 1, int(time.time()))
        tmp_dir = self.path / "tmp"
        data = self._encode_snapshot(generation)
        try:
            # temporary file and rename, no fsync: the index is never the only copy
            write_durably(self.path, INDEX, [data], tmp_dir=tmp_dir, sync_dir=False, sync_file=False)
            head = f"G {generation}\n".encode()
            write_durably(self.path, INDEX_LOG, [head], tmp_dir=tmp_dir, sync_dir=False, sync_file=False)
            for name in (INDEX, INDEX_LOG):
                self.store._chown(self.path / name)
            log_fd = os.open(self.path / INDEX_LOG, os.O_RDWR | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            self._go_memory_only(e)
            return
        if self._log_fd is not None:
            os.close(self._log_fd)
        self._log_fd, self._log_ino = log_fd, os.fstat(log_fd).st_ino
        self._log_pos = len(head)
        self._generation = generation
        self._snapshot_size = len(data)
        self._loaded = True

    # ------------------------------------------------------------------ rebuilding and syncing

    def _rebuild(self) -> None:
        """No usable index: everything from the maildir and dovecot-uidlist. The UIDs
        come from the uidlist, so clients keep theirs; every message gets one new
        modification sequence above anything handed out before; what is in new/ is
        \\Recent."""
        modseq = self._next_modseq()
        self.vanished_floor = modseq
        self._reset_dir_trust()
        self._scan_dirs(move_new=False, modseq=modseq, rebuild=True)
        self._loaded = True
        self._write_snapshot()

    def refresh(self, move_new: bool = True) -> bool:
        """Catch up with the maildir and the other processes. True when anything
        changed (the journal says what)."""
        before = self.version
        if self._loaded and self._quick_check():
            return False
        with self.locked():
            self._scan_dirs(move_new)
        return self.version != before

    def _quick_check(self) -> bool:
        """True when nothing can have changed: the log has not grown and both
        directories still have mtimes a listing proved."""
        try:
            if self.persistent:
                st = os.stat(self._log_path)
                if st.st_ino != self._log_ino or st.st_size != self._log_pos:
                    return False
            new = os.stat(self._new_dir)
            cur = os.stat(self._cur_dir)
            ul = os.stat(self._uidlist_path)
        except OSError:
            return False
        if ul.st_ino != self._ul_ino:
            return False
        if self._cur_verify_at and time.time_ns() >= self._cur_verify_at:
            return False
        return (self._new_trusted and self._cur_trusted and (new.st_ino, new.st_mtime_ns) == self._new_stamp
                and (cur.st_ino, cur.st_mtime_ns) == self._cur_stamp)

    def _scan_dirs(self, move_new: bool, modseq: int | None = None, rebuild: bool = False) -> None:
        """List the directories whose mtime does not prove their content; turn what
        changed there into new messages, flag changes and expunges (lock held).

        A listing is compared as a set with the file names the state knows, so a
        directory that did not change costs one listdir and no per-file work."""
        new_dir, cur_dir = self._new_dir, self._cur_dir
        try:
            st_new, st_cur = os.stat(new_dir), os.stat(cur_dir)
            if os.stat(self._dir).st_ino != self.dir_ino:
                raise MailboxNotFound(self.name)
        except FileNotFoundError:
            raise MailboxNotFound(self.name) from None
        self._check_uidlist()
        started = time.time_ns()
        new_stamp = (st_new.st_ino, st_new.st_mtime_ns)
        cur_stamp = (st_cur.st_ino, st_cur.st_mtime_ns)
        scan_new = rebuild or not self._new_trusted or new_stamp != self._new_stamp
        scan_cur = (rebuild or not self._cur_trusted or cur_stamp != self._cur_stamp
                    or (self._cur_verify_at and started >= self._cur_verify_at))
        if not (scan_new or scan_cur):
            return
        added: dict[str, tuple[str, str]] = {}   # base -> (sub, file name) of names not known
        gone: list[Message] = []                  # known messages whose file name is not listed
        in_new: set[str] = set()
        moved = False
        try:
            for sub, path, scan in (("new", new_dir, scan_new), ("cur", cur_dir, scan_cur)):
                if not scan:
                    continue
                listed = set(os.listdir(path))
                known = self._known_names(sub)
                if listed == known and not (sub == "new" and move_new and listed):
                    continue
                for filename in (listed if sub == "new" and move_new else listed - known):
                    if filename[:1] == "." or _BAD_NAME.search(filename):
                        continue
                    base, letters = split_name(filename)
                    if sub == "new":
                        in_new.add(base)
                        if move_new:
                            target = f"{base}:2,{letters}"
                            try:
                                os.rename(os.path.join(new_dir, filename), os.path.join(cur_dir, target))
                            except FileNotFoundError:
                                continue  # moved by someone else: cur/ shows it
                            moved = True
                            added[base] = ("cur", target)
                            continue
                    added.setdefault(base, (sub, filename))
                by_base, by_uid = self.by_base, self.by_uid
                gone.extend(by_uid[by_base[split_name(f)[0]]] for f in known - listed
                            if split_name(f)[0] in by_base)
        except FileNotFoundError:
            raise MailboxNotFound(self.name) from None
        except OSError as e:
            raise StorageError(f"listing {self._dir}: {e}") from e
        missing = [m for m in gone if m.basename not in added]
        if missing:
            # A file renamed while we listed may have been missed: look once more in both.
            for sub, path in (("cur", cur_dir), ("new", new_dir)):
                for filename in os.listdir(path):
                    if filename[:1] != "." and not _BAD_NAME.search(filename):
                        base = split_name(filename)[0]
                        if base in self.by_base and base not in added:
                            old = self.by_uid[self.by_base[base]]
                            if (old.sub, old.filename) != (sub, filename):
                                added[base] = (sub, filename)
            present = {m.basename for m in missing} - added.keys()
            missing = [m for m in missing if m.basename in present and not self._still_there(m)]
        changed: list[Message] = []
        unknown: list[str] = []
        for base, (sub, filename) in added.items():
            uid = self.by_base.get(base)
            if uid is None:
                unknown.append(base)
                continue
            old = self.by_uid[uid]
            if old.filename != filename or old.sub != sub:
                changed.append(old)
        if missing or changed or unknown:
            modseq = modseq or self._next_modseq()
        if missing:
            uids = [m.uid for m in missing]
            self._forget(uids, modseq)
            self._log(f"X {modseq} {','.join(map(str, uids))}\n")
        for old in changed:
            sub, filename = added[old.basename]
            letters = split_name(filename)[1]
            if letters == split_name(old.filename)[1]:
                self._replace(old.moved(sub, filename, old.flags, old.modseq), notify=False)
                self._log(f"F {old.uid} 0 {sub} {filename}\n")
            else:
                self._replace(old.moved(sub, filename, self.flags_of(letters), modseq))
                self._log(f"F {old.uid} {modseq} {sub} {filename}\n")
        if unknown:
            self._add_unknown(unknown, added, in_new, modseq, rebuild)
        # The listing proves the content for later syncs only if the directory had
        # settled before we looked; our own moves out of new/ changed both.
        before = (self._new_stamp, self._new_trusted, self._cur_stamp, self._cur_listed_trust())
        if scan_new:
            self._new_stamp = new_stamp
            self._new_trusted = not moved and _settled(started, st_new.st_mtime_ns)
        if scan_cur:
            pending = self._cur_verify_at if started < self._cur_verify_at else 0
            self._cur_stamp = cur_stamp
            self._cur_verify_at = 0
            self._cur_trusted = not moved
            if not moved and not _settled(started, st_cur.st_mtime_ns):
                # Listed under the lock, so exact but for a program outside postroom
                # changing cur/ within the same clock tick: trusted until listed again
                # once this mtime has settled (a check already due stays as due).
                self._cur_verify_at = _settles_at(st_cur.st_mtime_ns, pending)
        elif moved:
            self._cur_trusted = False
        if (self._new_stamp, self._new_trusted, self._cur_stamp, self._cur_listed_trust()) != before:
            self._log("D %d %d %d %d %d %d\n" % (*(self._new_stamp or (0, 0)), self._new_trusted,
                                                 *(self._cur_stamp or (0, 0)), self._cur_listed_trust()))

    def _cur_listed_trust(self) -> bool:
        """cur/ trusted on the strength of a listing (what other processes may adopt)."""
        return self._cur_trusted and not self._cur_verify_at

    def _cur_known_now(self) -> bool:
        """Lock held, before changing files in cur/: whether the state knows cur/
        exactly (trusted, its mtime still the one proven)."""
        if not self._cur_trusted:
            return False
        try:
            st = os.stat(self._cur_dir)
        except OSError:
            return False
        return (st.st_ino, st.st_mtime_ns) == self._cur_stamp

    def _cur_changed_here(self, known: bool) -> None:
        """Lock held, after renaming, adding or removing files in cur/ (the names the
        state keeps changed with them). If cur/ was known exactly just before
        (`_cur_known_now()`) and no file had to be chased, it is known now too:
        trusted at its new mtime without a listing. Only a program outside postroom
        (which takes no lock) changing cur/ in that same moment would be missed, so
        cur/ is listed once more when its new mtime has settled (SETTLE_FINE later,
        or earlier when such a check was already due; other postroom processes log
        their changes, which untrusts it at once)."""
        self._cur_trusted = False
        if not known:
            return
        try:
            st = os.stat(self._cur_dir)
        except OSError:
            return
        self._cur_stamp = (st.st_ino, st.st_mtime_ns)
        self._cur_trusted = True
        self._cur_verify_at = _settles_at(max(st.st_mtime_ns, time.time_ns()), self._cur_verify_at)

    def _still_there(self, msg: Message) -> bool:
        """A message's file under its known name (a listing raced a rename back)."""
        return os.path.lexists(os.path.join(self._dir, msg.sub, msg.filename))

    def _known_names(self, sub: str) -> set[str]:
        """The file names the state has in new/ or cur/ (kept as messages change)."""
        if self._names is None:
            self._names = {"new": set(), "cur": set()}
            for m in self.by_uid.values():
                self._names[m.sub].add(m.filename)
        return self._names[sub]

    def _add_unknown(self, bases: list[str], found, in_new: set[str], modseq: int, rebuild: bool) -> None:
        """Files no message of ours has: their UIDs from dovecot-uidlist, or new ones."""
        ul = self._read_uidlist()
        need = [b for b in bases if ul is None or b not in ul.records]
        if need:
            ul = self._assign_uids(sorted(need, key=sort_key))
        added = []
        for base in sorted(bases, key=lambda b: ul.records[b].uid if b in ul.records else 0):
            rec = ul.records.get(base)
            if rec is None or rec.uid in self.by_uid:
                continue
            sub, filename = found[base]
            path = os.path.join(self._dir, sub, filename)
            try:
                st = os.lstat(path)
                idate, size = st.st_mtime, st.st_size
            except OSError:
                continue  # gone already: never shown, so nothing to expunge
            m = _SIZE_RE.search(base)
            vsize = None
            m_w = _VSIZE_RE.search(base)
            if m_w:
                vsize = int(m_w.group(1))
            elif rec.extensions:
                w = rec.ext("W")
                if w and w.isdigit():
                    vsize = int(w)
            msg = Message(rec.uid, filename, self._dir, sub, self.flags_of(split_name(filename)[1]), modseq,
                          int(m.group(1)) if m else size, vsize, idate, rec.ext("P") if rec.extensions else None)
            added.append(msg)
        added.sort(key=lambda m: m.uid)
        for msg in added:
            self._add(msg)
            self._log(f"N {msg.uid} {modseq} {msg.sub} {msg._internaldate!r} {msg._size} "
                      f"{msg._vsize if msg._vsize is not None else -1} {msg.filename}\n")
            if msg.pop3_uidl:
                self._log(f"P {msg.uid} {msg.pop3_uidl}\n")
        self.next_uid = max(self.next_uid, ul.next_uid)
        if rebuild:
            recent = [m.uid for m in added if m.basename in in_new]
            self.first_recent_uid = min(recent) if recent else self.next_uid
            self._log(f"R {self.first_recent_uid}\n")

    # ------------------------------------------------------------------ dovecot-uidlist

    def _check_uidlist(self) -> None:
        """A replaced uidlist may carry a new UIDVALIDITY, a missing or broken one is
        made anew with one: then every UID we know is void (lock held)."""
        sig = _signature(self._uidlist_path)
        ino = sig[0] if sig else 0
        if ino and ino == self._ul_ino:
            return
        ul = self._read_uidlist()
        if ul is None:
            # Missing (a new mailbox) or broken: a new one, so UIDVALIDITY is never 0.
            with self._uidlist_lock():
                ul = self._read_uidlist() or self._new_uidlist()
        if self.uidvalidity and ul.uidvalidity != self.uidvalidity:
            modseq = self._next_modseq()
            self._reset_uids(ul.uidvalidity, modseq)
            self._log(f"V {ul.uidvalidity} {modseq}\n")
        self.uidvalidity = ul.uidvalidity
        self.next_uid = max(self.next_uid, ul.next_uid)
        self._ul_ino = self._ul_sig[0] if self._ul_sig else 0

    def _read_uidlist(self) -> uidfile.UidList | None:
        """dovecot-uidlist as it is now: only the appended part is parsed when the
        file grew; None when missing (a broken one is rebuilt by the caller's lock)."""
        try:
            st = os.stat(self._uidlist_path, follow_symlinks=False)
        except FileNotFoundError:
            self._ul = self._ul_sig = None
            return None
        if self._ul is not None and self._ul_sig is not None and st.st_ino == self._ul_sig[0] \
                and st.st_size == self._ul_pos:
            self._ul_sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            return self._ul  # as we know it: no need to open it
        try:
            fd = os.open(self._uidlist_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            self._ul = self._ul_sig = None
            return None
        with open(fd, "rb") as f:
            st = os.fstat(f.fileno())
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._ul is not None and self._ul_sig is not None and st.st_ino == self._ul_sig[0] \
                    and st.st_size >= self._ul_pos:
                if st.st_size == self._ul_pos:
                    self._ul_sig = sig
                    return self._ul
                f.seek(self._ul_pos)
                tail = f.read(min(st.st_size - self._ul_pos, CONTROL_READ_LIMIT))
                end = tail.rfind(b"\n") + 1
                try:
                    uidfile.parse_records(tail[:end], self._ul)
                    self._ul_pos += end
                    self._ul_sig = sig
                    return self._ul
                except uidfile.UidListError:
                    f.seek(0)
            else:
                f.seek(0)
            data = f.read(CONTROL_READ_LIMIT)
        end = data.rfind(b"\n") + 1
        try:
            ul = uidfile.parse(data[:end])
        except uidfile.UidListError:
            return self._ul if self._ul is not None and self._ul.uidvalidity == self.uidvalidity else None
        self._ul, self._ul_sig, self._ul_pos = ul, sig, end
        return ul

    def _uidlist_lock(self) -> DotLock:
        """dovecot-uidlist's dotlock (one object per state: it is taken often)."""
        if self._ul_dotlock is None or self._ul_dotlock.owner != self.store.owner:
            self._ul_dotlock = DotLock(self.path / UIDLIST, owner=self.store.owner)
        return self._ul_dotlock

    def _new_uidlist(self) -> uidfile.UidList:
        """A fresh dovecot-uidlist (new UIDVALIDITY), written durably; dotlock held
        by the caller or taken here."""
        previous = self.uidvalidity or (self._ul.uidvalidity if self._ul else 0)
        ul = uidfile.UidList(max(int(time.time()), previous + 1))
        self._write_uidlist(ul)
        return ul

    def _write_uidlist(self, ul: uidfile.UidList) -> None:
        write_durably(self.path, UIDLIST, [ul.format()], tmp_dir=self.path / "tmp")
        self.store._chown(self.path / UIDLIST)
        st = os.stat(self.path / UIDLIST)
        self._ul, self._ul_sig, self._ul_pos = ul, (st.st_ino, st.st_size, st.st_mtime_ns), st.st_size
        self._ul_ino = st.st_ino

    def _assign_uids(self, bases: list[str], sync: bool = True) -> uidfile.UidList:
        """New UIDs for these base names, appended to dovecot-uidlist (fsync'd unless
        the caller syncs the filesystem) under its dotlock, as Dovecot appends.
        Returns the uidlist."""
        with self._uidlist_lock():
            ul = self._read_uidlist()
            if ul is None:
                ul = self._new_uidlist()
                if self.uidvalidity and ul.uidvalidity != self.uidvalidity:
                    modseq = self._next_modseq()
                    self._reset_uids(ul.uidvalidity, modseq)
                    self._log(f"V {ul.uidvalidity} {modseq}\n")
                self.uidvalidity = ul.uidvalidity
            todo = [b for b in bases if b not in ul.records]
            if not todo:
                return ul
            for base in todo:
                ul.assign(base)
            self._append_uidlist("".join(f"{ul.records[b].uid} :{b}\n" for b in todo).encode("utf-8",
                                                                                            "surrogateescape"),
                                 sync)
            stale = len(ul.records) - len(self.by_uid) - len(todo)
            if stale > max(UIDLIST_STALE_REWRITE, len(self.by_uid)) and \
                    len(ul.records) > self._ul_compacted_at + UIDLIST_STALE_REWRITE:
                self._compact_uidlist(ul)
        return ul

    def _append_uidlist(self, data: bytes, sync: bool = True) -> None:
        fd = os.open(self._uidlist_path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A torn record of a crashed writer: its UID was never handed out.
                end = size
                while end > 0 and os.pread(fd, 1, end - 1) != b"\n":
                    end -= 1
                os.ftruncate(fd, end)
                size = end
            os.pwrite(fd, data, size)
            if sync:
                os.fsync(fd)
            st = os.fstat(fd)
        finally:
            os.close(fd)
        self._ul_pos = st.st_size
        self._ul_sig = (st.st_ino, st.st_size, st.st_mtime_ns)

    def _compact_uidlist(self, ul: uidfile.UidList) -> None:
        """Drop the records of messages known to be expunged (uidlist dotlock held)."""
        gone = set(self.exp_uids)
        ul.records = {b: r for b, r in ul.records.items() if r.uid not in gone}
        self._write_uidlist(ul)
        # Records the history does not know (expunged before the index was made) stay;
        # try again only when as many more have come, not at every new UID.
        self._ul_compacted_at = len(ul.records)

    # ------------------------------------------------------------------ changes made here

    def claim_recent(self) -> list[int]:
        """The messages still \\Recent, now this session's (RFC 3501 2.3.2: one
        session gets them); lock held by the caller or taken here."""
        with self.locked():
            if self.first_recent_uid >= self.next_uid:
                return []
            uids = self.sorted_uids()
            claimed = uids[bisect.bisect_left(uids, self.first_recent_uid):]
            self.first_recent_uid = self.next_uid
            self._log(f"R {self.first_recent_uid}\n")
        return claimed

    def store_flags(self, uids, compute, unchanged_since: int | None = None):
        """Rename each message to the flags compute(old letters) gives, chasing renames
        by others so their changes are kept. Returns (messages now, failed UIDs of the
        UNCHANGEDSINCE test); messages whose flags did not change keep their modseq."""
        done: list[Message] = []
        failed: list[int] = []
        with self.locked():
            if unchanged_since is not None:
                self._scan_dirs(move_new=False)  # what others changed counts against the test
            modseq = None
            known, chases, changed = self._cur_known_now(), self._chases, False
            for uid in sorted(set(uids)):
                msg = self.by_uid.get(uid)
                if msg is None:
                    continue
                if unchanged_since is not None and msg.modseq > unchanged_since:
                    failed.append(uid)
                    continue
                renamed = self._rename_flags(msg, compute)
                if renamed is None:
                    continue
                sub, filename = renamed
                letters = split_name(filename)[1]
                if (sub, filename) == (msg.sub, msg.filename):
                    done.append(msg)
                    continue
                if letters == split_name(msg.filename)[1]:
                    new = msg.moved(sub, filename, msg.flags, msg.modseq)
                    self._replace(new, notify=False)
                    self._log(f"F {uid} 0 {sub} {filename}\n")
                else:
                    modseq = modseq or self._next_modseq()
                    new = msg.moved(sub, filename, self.flags_of(letters), modseq)
                    self._replace(new)
                    self._log(f"F {uid} {modseq} {sub} {filename}\n")
                done.append(new)
                changed = True
                if msg.sub == "new":
                    self._new_trusted = False
            if changed:
                self._cur_changed_here(known and self._chases == chases)
        return done, failed

    def _rename_flags(self, msg: Message, compute) -> tuple[str, str] | None:
        sub, filename = msg.sub, msg.filename
        for _ in range(RENAME_RETRIES):
            base, letters = split_name(filename)
            new_filename = f"{base}:2,{compute(letters)}"
            if new_filename == filename and sub == "cur":
                return sub, filename
            try:
                os.rename(os.path.join(self._dir, sub, filename), os.path.join(self._dir, "cur", new_filename))
            except FileNotFoundError:
                found = self.find(base)
                if found is None:
                    return None
                sub, filename = found
                continue
            return "cur", new_filename
        raise StorageError(f"UID {msg.uid}: flags changed too often by others, try again")

    def find(self, base: str) -> tuple[str, str] | None:
        """Where the file with this base name is now (after someone renamed it)."""
        self._chases += 1
        for sub in ("cur", "new"):
            try:
                for filename in os.listdir(os.path.join(self._dir, sub)):
                    if filename == base or filename.startswith(base + ":"):
                        return sub, filename
            except OSError:
                continue
        return None

    def remove(self, uids, need_deleted: bool) -> tuple[list[int], int]:
        """Remove these messages (only those still flagged \\Deleted when need_deleted):
        out of new/ and cur/ at once, their files unlinked in the background
        (`_discard`); returns (removed UIDs, bytes freed). One modification sequence
        for all."""
        removed: list[int] = []
        freed = 0
        with self.locked():
            known, chases, subs = self._cur_known_now(), self._chases, set()
            for uid in sorted(set(uids)):
                msg = self.by_uid.get(uid)
                if msg is None:
                    continue
                if need_deleted and "\\Deleted" not in msg.flags:
                    continue
                sub, filename = msg.sub, msg.filename
                for _ in range(RENAME_RETRIES):
                    try:
                        _discard(os.path.join(self._dir, sub, filename),
                                 os.path.join(self._dir, "tmp", msg.basename + ".expunged"))
                    except FileNotFoundError:
                        found = self.find(msg.basename)
                        if found is None:
                            removed.append(uid)  # expunged by someone else meanwhile
                            break
                        sub, filename = found
                        if need_deleted and "T" not in split_name(filename)[1]:
                            break  # someone took \Deleted off meanwhile
                        continue
                    removed.append(uid)
                    freed += msg.size
                    subs.add(sub)
                    break
            if removed:
                modseq = self._next_modseq()
                self._forget(removed, modseq)
                self._log(f"X {modseq} {','.join(map(str, removed))}\n")
                if "new" in subs or self._chases != chases:
                    self._new_trusted = False
                if "cur" in subs or self._chases != chases:
                    self._cur_changed_here(known and self._chases == chases)
        return removed, freed

    def commit_files(self, files: list[tuple[str, str, float]], sync: bool = True,
                     claim: list[int] | None = None) -> list[int]:
        """Rename finished files (in tmp/) into cur/ under the given names and give them
        UIDs in order (appended to dovecot-uidlist). Durable on return, and only then
        may their UIDs be told: where syncfs(2) exists one call makes the files, cur/
        and the uidlist durable at once (the files need not be fsync'd before);
        elsewhere the caller fsync'd the files, and cur/ and the uidlist are fsync'd.
        With sync=False where syncfs(2) exists, that call is the caller's (so that
        one call, off the event loop, serves several sessions' writes): nobody may be
        told the messages are saved before it returned. With `claim` (a list), the
        messages still \\Recent, these included, are claimed under the same lock
        (claim_recent) and added to it."""
        with self.locked():
            cur = self._cur_dir
            known = self._cur_known_now()
            for tmp, final, _idate in files:
                os.rename(tmp, os.path.join(cur, final))
            if not HAVE_SYNCFS:
                fsync_dir(cur)
            bases = [split_name(final)[0] for _tmp, final, _ in files]
            ul = self._assign_uids(bases, sync=not HAVE_SYNCFS)
            if HAVE_SYNCFS and sync:
                syncfs(cur)
            modseq = self._next_modseq()
            uids = []
            for (_tmp, final, idate), base in zip(files, bases):
                uid = ul.records[base].uid
                m = _SIZE_RE.search(base)
                w = _VSIZE_RE.search(base)
                msg = Message(uid, final, self._dir, "cur", self.flags_of(split_name(final)[1]), modseq,
                              int(m.group(1)) if m else None, int(w.group(1)) if w else None, idate)
                self._add(msg)
                self._log(f"N {uid} {modseq} cur {idate!r} {msg._size if msg._size is not None else -1} "
                          f"{msg._vsize if msg._vsize is not None else -1} {final}\n")
                uids.append(uid)
            self.next_uid = max(self.next_uid, ul.next_uid)
            self._cur_changed_here(known)
            if claim is not None:
                claim.extend(self.claim_recent())
        return uids

    def close_files(self) -> None:
        """Close the index files (an idle state keeps its memory and reopens them)."""
        if self._lock_depth:
            return
        for fd in (self._lock_fd, self._log_fd):
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self._lock_fd = self._log_fd = None
        if self._cache is not None:
            self._cache.close()


class _Locked:
    __slots__ = ("state",)

    def __init__(self, state: MailboxState):
        self.state = state

    def __enter__(self) -> MailboxState:
        s = self.state
        s._acquire()
        if s._lock_depth == 1:
            try:
                s._catch_up()
            except BaseException:
                s._release()
                raise
        return s

    def __exit__(self, *exc) -> None:
        self.state._release()


def _settled(listed_at_ns: int, mtime_ns: int) -> bool:
    """Whether a listing made at listed_at proves a directory's content for as long as
    its mtime stays mtime (see SETTLE_SECONDS)."""
    margin = SETTLE_SECONDS if mtime_ns % 1_000_000_000 == 0 else SETTLE_FINE
    return listed_at_ns - mtime_ns > margin * 1e9


class _Reaper:
    """Unlinks the files of expunged messages in a thread of its own. Unlinking a
    file frees its blocks and can wait a millisecond on the disk (a journal commit,
    or a filesystem mounted with `discard` trimming them at once); the session
    expunging (and every other session of its event loop) need not.
    What is still queued when the process ends stays in tmp/, where delivery's
    sweep of stale files removes it (the files keep their old mtimes)."""

    def __init__(self):
        self.queue: "queue.SimpleQueue[str]" = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        self.pid = 0

    def add(self, path: str) -> None:
        if self.thread is None or self.pid != os.getpid() or not self.thread.is_alive():
            self.pid = os.getpid()
            self.thread = threading.Thread(target=self._run, name="postroom-reaper", daemon=True)
            self.thread.start()
        self.queue.put(path)

    def _run(self) -> None:
        while True:
            path = self.queue.get()
            try:
                os.unlink(path)
            except OSError:
                pass  # already swept, or the folder is gone

    def drain(self, timeout: float = 5.0) -> None:
        """Unlink what is queued now, here (at exit, and for tests), within timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                path = self.queue.get_nowait()
            except queue.Empty:
                return
            try:
                os.unlink(path)
            except OSError:
                pass


_reaper = _Reaper()
atexit.register(_reaper.drain)
_unlink_later = _reaper.add


def unlink_later_with(fn: Callable[[str], None] | None) -> None:
    """Have fn unlink the files of expunged messages (postroom-imapd gives its
    filesystem helper process, common.fshelper, whose calls share no interpreter lock
    with the event loop) instead of this module's thread; None: the thread again."""
    global _unlink_later
    _unlink_later = fn if fn is not None else _reaper.add


def _discard(path: str, trash: str) -> None:
    """Take a message file out of its folder now (a rename into tmp/, under a name
    of its own) and unlink it in the background; FileNotFoundError when it is not
    there (renamed or expunged by someone else). Without a usable tmp/, unlink."""
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        if not os.path.lexists(path):
            raise
        os.unlink(path)  # no tmp/ to put it in
        return
    except OSError:
        os.unlink(path)
        return
    _unlink_later(trash)


def _settles_at(mtime_ns: int, pending: int = 0) -> int:
    """When a directory changed at mtime_ns must be listed again to prove its content
    (see SETTLE_SECONDS); a check already pending before that stays first."""
    margin = SETTLE_SECONDS if mtime_ns % 1_000_000_000 == 0 else SETTLE_FINE
    at = mtime_ns + int(margin * 1e9)
    return min(pending, at) if pending else at


def _flock(fd: int, op: int, what: str, timeout: float = 10.0) -> None:
    """flock with a bounded wait (a stuck holder must not hang a session forever)."""
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        pass
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        time.sleep(delay)
        try:
            fcntl.flock(fd, op | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                from .errors import LockTimeout
                raise LockTimeout(f"timed out waiting for the index lock of {what}") from None
            delay = min(delay * 2, 0.02)


def _uint(s: str) -> int:
    if not s.isdigit() or len(s) > 20:
        raise ValueError(f"number {s[:20]!r}")
    return int(s)


def _signature(path: Path) -> tuple | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_control(path: Path) -> tuple[bytes, tuple] | None:
    """A control file's bytes and a signature that changes when the file is replaced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(CONTROL_READ_LIMIT), (st.st_ino, st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------------- the per-process registry

class _Registry:
    """The states of this process, by mailbox directory. States with open views stay;
    the others are kept, least recently used first out, up to IDLE_STATE_MESSAGES
    messages, so reopening a large mailbox costs nothing."""

    def __init__(self):
        self.pid = os.getpid()
        self.states: OrderedDict[str, MailboxState] = OrderedDict()

    def get(self, store, name: str, path: Path) -> MailboxState:
        if os.getpid() != self.pid:  # a forked child: the parent's states are not ours
            self.pid = os.getpid()
            self.states = OrderedDict()
        key = str(path)
        state = self.states.get(key)
        if state is not None:
            try:
                ino = os.stat(key).st_ino
            except FileNotFoundError:
                raise MailboxNotFound(name) from None
            if ino != state.dir_ino:
                self._drop(key)
                state = None
            else:
                state.name = name
                self.states.move_to_end(key)
        if state is None:
            state = MailboxState(store, name, path)
            self.states[key] = state
        return state

    def _drop(self, key: str) -> None:
        state = self.states.pop(key, None)
        if state is not None and state.views == 0:
            state.close_files()

    def release(self, state: MailboxState) -> None:
        """A view closed: an unused state closes its files; the least recently used
        unused states are forgotten beyond IDLE_STATE_MESSAGES messages or
        IDLE_STATES states."""
        state.views -= 1
        if state.views > 0:
            return
        state.close_files()
        idle = [(k, s) for k, s in self.states.items() if s.views <= 0]
        total = sum(len(s.by_uid) for _k, s in idle)
        count = len(idle)
        for key, s in idle:
            if total <= IDLE_STATE_MESSAGES and count <= IDLE_STATES:
                break
            total -= len(s.by_uid)
            count -= 1
            self._drop(key)


_registry = _Registry()


def state_for(store, name: str, path: Path) -> MailboxState:
    """This process's shared state of a mailbox (loaded, not yet refreshed)."""
    state = _registry.get(store, name, path)
    if not state._loaded:
        with state.locked():
            pass  # loads the index, or rebuilds it
    return state


def release_state(state: MailboxState) -> None:
    _registry.release(state)
