"""common.storage.cache -- postroom-cache: what was worked out from a message's
content, kept next to the index so a large mailbox is not read again.

A message's content never changes under its UID, so whatever was derived from it
(the header fields clients sort and thread by, a body structure) stays true until
the message is expunged or UIDVALIDITY changes. The daemon decides what to keep
(opaque bytes under a small kind number); this module only stores them:

    postroom-cache 2 <uidvalidity>\\n                          header line
    <uid u32> <kind u8> <length u32> <crc32 u32> <bytes>      records, appended

A record's CRC-32 starts from the UIDVALIDITY it was written under, so a record
appended by a process that has not yet noticed a new UIDVALIDITY (its UIDs name
other messages now) fails the check instead of being taken for the new UID.

Records are appended with one write each (O_APPEND), by any process; a reader
learns the offsets of what others appended by reading on from where it stopped.
The file is never fsync'd and may be deleted at any time. When most of it belongs
to expunged messages it is rewritten with the rest (temporary file + rename).

SECURITY: the file is in the user's maildir and so user-writable: every record is
checked against its CRC-32 and its bounds before use, a damaged file is started
anew, and callers must treat what they get back as untrusted input (the IMAP
server only re-renders parsed values through its own quoting, never sends cached
bytes as they are).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

CACHE = "postroom-cache"
_RECORD = struct.Struct("<IBII")
#: Largest value kept (a pathological body structure is simply not cached).
MAX_VALUE = 256 * 1024
#: The kinds of value a caller may keep (small numbers it chooses).
KINDS = range(1, 9)
#: Bytes read per step when learning the offsets of records.
_READ_STEP = 1 << 20


class MailCache:
    """The cache file of one mailbox (one per MailboxState)."""

    def __init__(self, path: Path, owner: tuple[int, int] | None = None):
        self.path = Path(path) / CACHE
        self.owner = owner
        self.uidvalidity = 0
        self.offsets: dict[tuple[int, int], tuple[int, int, int]] = {}
        self._fd: int | None = None
        self._ino = 0
        self._pos = 0       # how far the file has been read
        self._garbage = 0   # bytes of records whose message is gone
        self.broken = False  # no cache here (unwritable): every lookup misses

    def _header(self) -> bytes:
        return b"postroom-cache 2 %d\n" % self.uidvalidity

    def _crc(self, data: bytes) -> int:
        return zlib.crc32(data, self.uidvalidity & 0xFFFFFFFF)

    def _open(self, uidvalidity: int) -> bool:
        """Open (or start) the file for this UIDVALIDITY; False when there is none."""
        if self.broken:
            return False
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        except OSError:
            return False
        if self._fd is not None and st is not None and st.st_ino == self._ino and uidvalidity == self.uidvalidity:
            return True
        self.close()
        self.uidvalidity = uidvalidity
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            self.broken = True
            return False
        try:
            if self.owner is not None:
                os.fchown(fd, *self.owner)
            head = os.pread(fd, 64, 0)
            if not head.startswith(self._header()):
                # new, from another UIDVALIDITY, or damaged: start again
                os.ftruncate(fd, 0)
                os.write(fd, self._header())
        except OSError:
            os.close(fd)
            self.broken = True
            return False
        self._fd, self._ino = fd, os.fstat(fd).st_ino
        self._pos = len(self._header())
        self.offsets = {}
        self._garbage = 0
        return True

    def _read_on(self) -> None:
        """Learn the records appended since we last looked."""
        size = os.fstat(self._fd).st_size
        while self._pos < size:
            chunk = os.pread(self._fd, min(_READ_STEP, size - self._pos) + _RECORD.size + MAX_VALUE, self._pos)
            i = 0
            while i + _RECORD.size <= len(chunk):
                uid, kind, length, crc = _RECORD.unpack_from(chunk, i)
                if length > MAX_VALUE:
                    self._damaged()
                    return
                end = i + _RECORD.size + length
                if end > len(chunk):
                    break
                self.offsets[(uid, kind)] = (self._pos + i + _RECORD.size, length, crc)
                i = end
                if i >= _READ_STEP:
                    break
            if i == 0:
                return  # a record still being written (or torn by a crash): later
            self._pos += i

    def _damaged(self) -> None:
        try:
            os.ftruncate(self._fd, 0)
            os.write(self._fd, self._header())
        except OSError:
            self.broken = True
        self._pos = len(self._header())
        self.offsets = {}

    def get(self, uidvalidity: int, uid: int, kind: int) -> bytes | None:
        if not self._open(uidvalidity):
            return None
        where = self.offsets.get((uid, kind))
        if where is None:
            try:
                self._read_on()
            except OSError:
                return None
            where = self.offsets.get((uid, kind))
            if where is None:
                return None
        offset, length, crc = where
        try:
            data = os.pread(self._fd, length, offset)
        except OSError:
            return None
        if len(data) != length or self._crc(data) != crc:
            self._damaged()
            return None
        return data

    def put(self, uidvalidity: int, uid: int, kind: int, data: bytes) -> None:
        """Keep a value (best effort: a full disk or an unwritable folder only means
        it is worked out again next time)."""
        if len(data) > MAX_VALUE or not self._open(uidvalidity):
            return
        record = _RECORD.pack(uid, kind, len(data), self._crc(data)) + data
        try:
            os.write(self._fd, record)
        except OSError:
            return
        # Others may have appended before us: our offsets are learnt by reading on.

    def forget(self, uids) -> None:
        """Messages expunged: their records are garbage; rewrite the file when most of
        it is."""
        if self._fd is None:
            return
        for uid in uids:
            for kind in KINDS:
                where = self.offsets.pop((uid, kind), None)
                if where is not None:
                    self._garbage += where[1] + _RECORD.size
        try:
            size = os.fstat(self._fd).st_size
        except OSError:
            return
        if self._garbage > 1 << 20 and self._garbage * 2 > size:
            self._rewrite()

    def _rewrite(self) -> None:
        """Copy the records still in use into a new file and rename it into place."""
        try:
            self._read_on()
            tmp = self.path.with_name(f".{CACHE}.{os.getpid()}")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                out = [self._header()]
                for (uid, kind), (offset, length, crc) in self.offsets.items():
                    data = os.pread(self._fd, length, offset)
                    if len(data) == length and self._crc(data) == crc:
                        out.append(_RECORD.pack(uid, kind, length, crc) + data)
                os.write(fd, b"".join(out))
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
            finally:
                os.close(fd)
            os.rename(tmp, self.path)
        except OSError:
            return
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
        self._fd = None
        self._ino = 0
