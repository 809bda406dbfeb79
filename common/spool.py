"""common.spool -- the on-disk queue shared by the MTA and the MDA.

One file per message: a magic line, the envelope as one JSON record, the message
bytes, an END marker, then zero or more status records appended as recipients are
delivered, deferred or bounced. The format is documented in docs/spool.md.

Queue directories are states, and a state change is a rename:

    tmp/       being written; never read by anyone; cleaned at start
    incoming/  committed, fsync'd, not yet seen by the queue manager
    active/    the queue manager is working on it
    deferred/  waiting for a retry
    hold/      held by the administrator
    corrupt/   could not be parsed; kept for a human
    maildrop/  local submissions from postroom-sendmail, checked by the pickup
    mda/       hand-offs from the queue manager to the MDA (see Handoff)
    mda-done/  the MDA's per-recipient results for the queue manager

A file appears in a queue directory only after its data was fsync'd; the rename is
followed by an fsync of the directory before anyone is told (250, exit 0).

SECURITY: spool files are created 0600 (readable only by the MTA's user); the
envelope is JSON, never code; a file that does not parse is moved to corrupt/ by the
reader, never half-trusted.
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import itertools
import json
import mmap
import os
import re
import struct
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .fsutil import fsync_dir, write_file_synced

#: Messages up to this size are written with one write(2) (their chunks joined first).
JOIN_BELOW = 256 * 1024
#: Spool files up to this size are parsed from one read(2); larger ones are mapped.
READ_WHOLE = 1024 * 1024


def _libc_renameat2():
    """renameat2(2) where the C library has it (Linux), else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
    return function


_renameat2 = _libc_renameat2()


def _libc_sync_file_range():
    """sync_file_range(2) where the C library has it (Linux), else None."""
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    return function


_sync_file_range = _libc_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2
_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


def rename_no_replace(src: os.PathLike, dst: os.PathLike) -> None:
    """Rename src to dst unless dst exists (FileExistsError then; src stays). One
    renameat2(RENAME_NOREPLACE) on Linux; elsewhere, or where the filesystem lacks it,
    link(2) then unlink(2), which refuses the same way."""
    if _renameat2 is not None:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):
            raise OSError(err, os.strerror(err), str(src), None, str(dst))
    os.link(src, dst)
    os.unlink(src)

MAGIC = b"POSTROOM-SPOOL 1\n"
END = b"\nEND\n"
QUEUES = ("tmp", "incoming", "active", "deferred", "hold", "corrupt", "maildrop", "mda", "mda-done")

# Recipient states.
PENDING = "pending"
DELIVERED = "delivered"
DEFERRED = "deferred"
BOUNCED = "bounced"


class CorruptSpoolFile(Exception):
    """A spool file that cannot be parsed. The caller moves it to corrupt/."""


_counter = itertools.count()


def new_queue_id() -> str:
    """Unique across processes and restarts, and sorting by arrival time.

    14 hex digits of microseconds since the epoch, 5 of the process id, 3 of a
    per-process counter: 22 upper-case hex characters."""
    usec = time.time_ns() // 1000
    return f"{usec:014X}{os.getpid() & 0xFFFFF:05X}{next(_counter) & 0xFFF:03X}"


def new_trace_id() -> str:
    """An opaque ID that follows one message through every daemon's log."""
    return uuid.uuid4().hex[:16]


@dataclass
class Recipient:
    address: str
    orcpt: str | None = None            # DSN ORCPT, as given ("rfc822;user@example.org")
    notify: tuple[str, ...] | None = None  # DSN NOTIFY: NEVER or some of SUCCESS, FAILURE, DELAY
    original: str | None = None         # the address before aliases/subaddress handling
    mailbox: str | None = None          # local delivery: the user database name
    folder: str | None = None           # local delivery: a folder asked for (+detail)
    # Delivery state, rebuilt from status records when a file is read.
    state: str = PENDING
    reason: str | None = None
    status: str | None = None           # enhanced status code of the last attempt
    remote_mta: str | None = None
    attempts: int = 0
    next_attempt: float | None = None
    last_attempt: float | None = None


@dataclass
class Envelope:
    sender: str                          # "" for the null reverse-path
    recipients: list[Recipient]
    queue_id: str = field(default_factory=new_queue_id)
    trace_id: str = field(default_factory=new_trace_id)
    arrival: float = field(default_factory=time.time)
    source: str = "smtp"                 # smtp, submission, sendmail, lmtp, bounce, local
    client_address: str | None = None
    client_port: int | None = None
    client_name: str | None = None       # reverse DNS name, if verified
    helo: str | None = None
    auth_user: str | None = None
    tls_version: str | None = None
    tls_cipher: str | None = None
    body: str = "7BIT"                   # 7BIT, 8BITMIME or BINARYMIME
    smtputf8: bool = False
    ret: str | None = None               # DSN RET: FULL or HDRS
    envid: str | None = None             # DSN ENVID
    size: int = 0                        # message bytes
    extra: dict[str, Any] = field(default_factory=dict)   # free-form, e.g. spam marks

    def to_json(self) -> bytes:
        # Field by field rather than dataclasses.asdict(), whose recursive deep copy
        # was a tenth of the receiving side's CPU per message. Delivery state lives
        # in status records, not in the envelope.
        d = {name: getattr(self, name) for name in _ENVELOPE_FIELDS}
        d["recipients"] = [{name: getattr(r, name) for name in _RECIPIENT_FIELDS} for r in self.recipients]
        return json.dumps(d, ensure_ascii=False, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes) -> "Envelope":
        d = json.loads(data.decode("utf-8"))
        if not isinstance(d, dict) or "sender" not in d or "recipients" not in d:
            raise ValueError("envelope lacks sender or recipients")
        rcpts = []
        for r in d.pop("recipients"):
            if r.get("notify") is not None:
                r["notify"] = tuple(r["notify"])
            rcpts.append(Recipient(**r))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(recipients=rcpts, **{k: v for k, v in d.items() if k in known})


_ENVELOPE_FIELDS = tuple(f.name for f in dataclasses.fields(Envelope))  # "recipients" is replaced
_RECIPIENT_FIELDS = tuple(f.name for f in dataclasses.fields(Recipient) if f.name not in (
    "state", "reason", "status", "remote_mta", "attempts", "next_attempt", "last_attempt"))


def encode_header(envelope: Envelope) -> bytes:
    """Everything that precedes the message bytes."""
    env = envelope.to_json()
    return MAGIC + b"E %d\n" % len(env) + env + b"\nM %d\n" % envelope.size


def encode(envelope: Envelope, message: bytes) -> list[bytes]:
    """The chunks of a complete spool file for a message held in memory."""
    envelope.size = len(message)
    return [encode_header(envelope), message, END]


def status_record(rcpt_index: int, state: str, **info: Any) -> bytes:
    """One appended status line: a recipient's new state and why."""
    rec = {"rcpt": rcpt_index, "state": state, "time": time.time(), **info}
    return b"S " + json.dumps(rec, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


@dataclass
class SpoolFile:
    """A parsed spool file: the envelope with recipient states applied."""

    path: Path
    envelope: Envelope
    message_offset: int
    status_records: list[dict[str, Any]]
    data: bytes | None = None            # the message, when parse() was asked to keep it

    @property
    def queue_id(self) -> str:
        return self.envelope.queue_id

    def open_message(self) -> BinaryIO:
        """The file, positioned at the first byte of the message; read envelope.size bytes."""
        f = open(self.path, "rb")
        f.seek(self.message_offset)
        return f

    def read_message(self) -> bytes:
        if self.data is not None:
            return self.data
        with self.open_message() as f:
            return f.read(self.envelope.size)

    def pending(self) -> list[tuple[int, Recipient]]:
        return [(i, r) for i, r in enumerate(self.envelope.recipients) if r.state in (PENDING, DEFERRED)]


def parse(path: Path, keep_message: int = 0) -> SpoolFile:
    """Read and check a spool file. Raises CorruptSpoolFile, or OSError.

    A message of up to keep_message bytes is kept in memory (read_message() then
    reads nothing again). The file is read with one open and, below READ_WHOLE
    bytes, one read (no buffered file object: its fstat, ioctl and seeks per
    file were most of a parse's system calls); a larger one is mapped."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if size <= READ_WHOLE:
            buf = os.read(fd, size + 1)
            while len(buf) > size:      # grown meanwhile (a status record appended): read on
                more = os.read(fd, 65536)
                if not more:
                    break
                buf += more
        else:
            buf = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)
    name = path.name if isinstance(path, Path) else os.path.basename(path)
    if buf[:len(MAGIC)] != MAGIC:
        raise CorruptSpoolFile(f"{name}: bad magic")
    pos, env_len = _record_length(buf, len(MAGIC), b"E")
    env_data = buf[pos:pos + env_len]
    if len(env_data) != env_len or buf[pos + env_len:pos + env_len + 1] != b"\n":
        raise CorruptSpoolFile(f"{name}: truncated envelope")
    try:
        envelope = Envelope.from_json(env_data)
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptSpoolFile(f"{name}: bad envelope: {e}") from None
    offset, msg_len = _record_length(buf, pos + env_len + 1, b"M")
    if msg_len != envelope.size:
        raise CorruptSpoolFile(f"{name}: size mismatch")
    end = offset + msg_len
    if buf[end:end + len(END)] != END:
        raise CorruptSpoolFile(f"{name}: no END marker")
    records = []
    lines = buf[end + len(END):].split(b"\n")
    for line in lines[:-1]:     # the last piece: empty, or a torn final append that never happened
        if not line.startswith(b"S "):
            raise CorruptSpoolFile(f"{name}: bad status record")
        try:
            rec = json.loads(line[2:].decode("utf-8"))
            r = envelope.recipients[rec["rcpt"]]
        except (ValueError, KeyError, IndexError, TypeError):
            raise CorruptSpoolFile(f"{name}: bad status record") from None
        _apply(r, rec)
        records.append(rec)
    sf = SpoolFile(Path(path), envelope, offset, records)
    if msg_len <= keep_message:
        sf.data = bytes(buf[offset:end])
    if isinstance(buf, mmap.mmap):
        buf.close()
    return sf


def _record_length(buf, pos: int, kind: bytes) -> tuple[int, int]:
    """The "E n" or "M n" line at pos: (the offset after it, n)."""
    nl = buf.find(b"\n", pos)
    after = len(buf) if nl < 0 else nl + 1
    return after, _length(buf[pos:after], kind)


def _length(line: bytes, kind: bytes) -> int:
    parts = line.split()
    if len(parts) != 2 or parts[0] != kind or not parts[1].isdigit():
        raise CorruptSpoolFile(f"bad {kind.decode()} record")
    return int(parts[1])


def _apply(r: Recipient, rec: dict[str, Any]) -> None:
    r.state = rec["state"]
    for k in ("reason", "status", "remote_mta", "next_attempt"):
        if k in rec:
            setattr(r, k, rec[k])
    if rec["state"] in (DELIVERED, DEFERRED, BOUNCED):
        r.attempts += 1
        r.last_attempt = rec.get("time")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_together(items: list[tuple[str, str, list[bytes]]], sync: bool = True) -> list:
    """Write several files (temp path, final path, chunks), each fsync'd and then
    renamed to its final path without replacing anything: one final path (a str) or
    exception per item. The directories are not fsync'd: the caller does that once.
    With sync=False the files are not fsync'd either: the caller makes the whole
    batch durable with one syncfs(2) (common.fsutil.syncfs) before telling anyone.

    The writes come first and their writeback is started together (sync_file_range(2)
    where it exists), so the fsyncs that follow mostly find their data on its way and
    share journal commits instead of each waiting for its own."""
    started: list = []  # (tmp path, final path, fd) or the exception
    for tmp, final, parts in items:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except Exception as e:
            started.append(e)
            continue
        try:
            for chunk in parts:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view):]
        except Exception as e:
            os.close(fd)
            _unlink_quietly(tmp)
            started.append(e)
            continue
        if sync and _sync_file_range is not None:
            _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # a start only: fsync below decides
        started.append((tmp, final, fd))   # kept open for its fsync: no second open per file
    out = []
    for item in started:
        if isinstance(item, Exception):
            out.append(item)
            continue
        tmp, final, fd = item
        try:
            try:
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            rename_no_replace(tmp, final)
            out.append(final)
        except Exception as e:
            _unlink_quietly(tmp)
            out.append(e)
    return out


class Spool:
    """The queue directories under one root, and the verbs on them."""

    def __init__(self, root: Path, create: bool = False, mode: int = 0o700):
        self.root = Path(root)
        if create:
            self.create(mode)

    def create(self, mode: int = 0o700) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=mode)
        for q in QUEUES:
            (self.root / q).mkdir(exist_ok=True, mode=mode)

    def dir(self, queue: str) -> Path:
        assert queue in QUEUES, queue
        return self.root / queue

    def path(self, queue: str, queue_id: str) -> Path:
        return self.dir(queue) / queue_id

    def write_many(self, items: list[tuple[Envelope, Iterable[bytes]]], queue: str = "incoming",
                   sync: bool = True) -> list:
        """write() for several messages (sync_dir=False): one path (a str) or exception
        per item (see write_together; sync=False: the caller syncs the filesystem)."""
        if sync and (len(items) == 1 or _sync_file_range is None):
            out: list = []
            for envelope, chunks in items:
                try:
                    out.append(str(self.write(envelope, chunks, queue, sync_dir=False)))
                except Exception as e:
                    out.append(e)
            return out
        assert queue in QUEUES, queue
        root = str(self.root)
        return write_together(
            [(f"{root}/tmp/{envelope.queue_id}", f"{root}/{queue}/{envelope.queue_id}", self._parts(envelope, chunks))
             for envelope, chunks in items], sync)

    @staticmethod
    def _parts(envelope: Envelope, chunks: Iterable[bytes]) -> list[bytes]:
        parts = [encode_header(envelope), *chunks, END]
        if envelope.size < JOIN_BELOW:
            parts = [b"".join(parts)]  # one write(2), not one per chunk
        return parts

    def write(self, envelope: Envelope, chunks: Iterable[bytes], queue: str = "incoming",
              sync_dir: bool = True) -> Path:
        """Write a whole spool file durably into queue. chunks are the message bytes;
        envelope.size must already be their total length. Never replaces a file:
        FileExistsError if queue already holds this queue ID.

        With sync_dir=False the caller must call sync(queue) before acknowledging:
        that is how concurrent sessions share one directory fsync (group commit)."""
        assert queue in QUEUES, queue
        root = str(self.root)  # plain strings: pathlib's joins cost more than the syscalls
        tmp = f"{root}/tmp/{envelope.queue_id}"
        write_file_synced(tmp, self._parts(envelope, chunks))
        final = f"{root}/{queue}/{envelope.queue_id}"
        try:
            # Never replace: a file already queued under this name (a queue ID reused
            # by a broken clock or a wrapped counter) raises FileExistsError; the
            # client then hears a temporary failure.
            rename_no_replace(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)  # never leave a synced but unqueued copy behind
            raise
        if sync_dir:
            self.sync(queue)
        return Path(final)

    def sync(self, queue: str) -> None:
        fsync_dir(self.dir(queue))

    def move(self, queue_id: str, src: str, dst: str, sync: bool = True) -> Path:
        """A state change: rename between queue directories, then fsync the target
        (the new name must be durable) and the source (the old must be gone)."""
        target = self.path(dst, queue_id)
        os.rename(self.path(src, queue_id), target)
        if sync:
            fsync_dir(self.dir(dst))
            fsync_dir(self.dir(src))
        return target

    def append_status(self, path: Path, records: Iterable[bytes], sync: bool = True) -> None:
        """Append status records and fsync: recipients' new states are durable on return.

        sync=False leaves them in the page cache: they survive a crash of the process
        (kill -9) but not of the machine. The queue manager uses it for the final
        records of a message it removes next: losing them can only repeat a delivery."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            os.write(fd, b"".join(records))
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)

    def remove(self, queue: str, queue_id: str, sync: bool = True) -> None:
        os.unlink(self.path(queue, queue_id))
        if sync:
            fsync_dir(self.dir(queue))

    def list(self, queue: str) -> list[str]:
        """Queue IDs in queue, oldest first (queue IDs sort by arrival)."""
        try:
            names = os.listdir(self.dir(queue))
        except FileNotFoundError:
            return []
        return sorted(n for n in names if not n.startswith("."))

    def walk(self, queue: str) -> Iterator[SpoolFile | tuple[str, Exception]]:
        """Parse each file in queue; yield the SpoolFile, or (queue_id, error)."""
        for qid in self.list(queue):
            try:
                yield parse(self.path(queue, qid))
            except (CorruptSpoolFile, OSError) as e:
                yield (qid, e)

    def clean_tmp(self, older_than: float = 0.0) -> int:
        """Remove leftovers of writes that crashed before their rename. Run at start."""
        removed = 0
        now = time.time()
        for name in os.listdir(self.dir("tmp")):
            p = self.dir("tmp") / name
            try:
                if now - p.stat().st_mtime >= older_than:
                    p.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed


_IN_CREATE = 0x100
_IN_MOVED_TO = 0x80
_IN_Q_OVERFLOW = 0x4000
_EVENT = struct.Struct("iIII")   # struct inotify_event: wd, mask, cookie, len (then the name)


def _libc_inotify():
    """(inotify_init1, inotify_add_watch) where the C library has them (Linux), else None."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        init, add = libc.inotify_init1, libc.inotify_add_watch
    except (OSError, AttributeError):
        return None
    init.argtypes = (ctypes.c_int,)
    add.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32)
    return init, add


_inotify = _libc_inotify()


def watch_queues(spool: Spool, queues: Iterable[str], reactor, callback) -> Any:
    """Call callback(queue) when files are renamed or linked into any of queues
    (inotify on Linux; one call per queue per read of the events, which are only
    counted, never turned into paths: a wakeup costs one read(2)). Returns an
    object to stop it with (`stop()`), or None where inotify is unavailable: the
    caller's periodic scan then finds everything. Removals wake nobody."""
    if _inotify is None:
        return None
    from twisted.internet.abstract import FileDescriptor

    init, add = _inotify
    fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        return None
    names: dict[int, str] = {}
    try:
        for q in queues:
            wd = add(fd, os.fsencode(spool.dir(q)), _IN_MOVED_TO | _IN_CREATE)
            if wd < 0:
                err = ctypes.get_errno()
                raise OSError(err, os.strerror(err), str(spool.dir(q)))
            names[wd] = q
    except BaseException:
        os.close(fd)
        raise

    class _Watch(FileDescriptor):
        def fileno(self) -> int:
            return fd

        def doRead(self):
            try:
                data = os.read(fd, 65536)
            except BlockingIOError:
                return None
            seen = set()
            pos = 0
            while pos + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                seen.add(names.get(wd) if not mask & _IN_Q_OVERFLOW else None)
                pos += _EVENT.size + length
            for q in (names.values() if None in seen else seen):   # lost events: look everywhere
                if q is not None:
                    callback(q)
            return None

        def stop(self) -> None:
            self.stopReading()
            os.close(fd)

    watch = _Watch(reactor)
    watch.startReading()
    return watch


@dataclass
class Handoff:
    """The queue manager's request to the MDA: deliver these local recipients of one
    spool file. Written durably into mda/, in a request file with the hand-offs of
    the other messages loaded with it (write_handoffs; the file is named by the
    first); the MDA answers each in mda-done/<handoff_id> with one HandoffResult per
    recipient, durably, and only then removes the request file. The queue manager applies the results as status
    records, then removes the answer. Each side can crash at any point: the
    request or the answer is still there, and the MDA's own delivery journal
    (keyed by the spool file's queue ID and the recipient index, not the
    hand-off, which is new for each attempt) prevents a second copy."""

    handoff_id: str
    queue_id: str
    spool_path: str                      # the spool file holding the message
    recipients: list[int]                # indices into the envelope's recipients

    def to_json(self) -> bytes:
        return json.dumps({"handoff_id": self.handoff_id, "queue_id": self.queue_id, "spool_path": self.spool_path,
                           "recipients": self.recipients}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Handoff":
        return cls(**json.loads(data))


@dataclass
class HandoffResult:
    rcpt: int                            # index into the envelope's recipients
    state: str                           # delivered, deferred or bounced
    status: str                          # enhanced status code, e.g. 2.0.0, 4.2.2, 5.1.1
    reason: str = ""


#: a hand-off ID: "<queue ID>.<attempt>" (it names the answer in mda-done/)
_HANDOFF_ID = re.compile(r"[0-9A-Za-z]{1,64}\.[0-9A-Za-z]{1,32}\Z")


def handoff_request(handoffs: list[Handoff]) -> bytes:
    """The content of one request file in mda/: one hand-off as it is, several as
    {"handoffs": [...]} (the file is named by the first)."""
    if len(handoffs) == 1:
        return handoffs[0].to_json()
    return b'{"handoffs":[' + b",".join(h.to_json() for h in handoffs) + b"]}"


def read_handoff_request(name: str, data: bytes) -> list[Handoff]:
    """The hand-offs of request file mda/<name>, checked: each names its answer in
    mda-done/ (a plain "<queue ID>.<attempt>", never a path), the first is the file's
    name. Raises ValueError (or TypeError, KeyError) for a file that does not parse."""
    d = json.loads(data)
    if not isinstance(d, dict):
        raise ValueError("not a hand-off")
    entries = d["handoffs"] if "handoffs" in d else [d]
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise ValueError("no hand-offs")
    handoffs = [Handoff(**e) for e in entries]
    if handoffs[0].handoff_id != name:
        raise ValueError("hand-off id mismatch")
    for h in handoffs:
        if (not isinstance(h.handoff_id, str) or not _HANDOFF_ID.match(h.handoff_id)
                or not isinstance(h.queue_id, str) or not isinstance(h.spool_path, str)
                or not isinstance(h.recipients, list)):
            raise ValueError("bad hand-off")
    return handoffs


def write_handoff(spool: Spool, handoff: Handoff) -> Path:
    return write_handoffs(spool, [handoff])


def write_handoffs(spool: Spool, handoffs: list[Handoff]) -> Path:
    """One request file in mda/ for several hand-offs (the messages the queue manager
    loaded together), durable on return: written under tmp/, fsync'd, renamed into
    mda/ (never over a file), mda/ fsync'd. (The removal of the temporary name needs
    no fsync: a crash at worst leaves a leftover in tmp/, which the next start cleans.)
    The MDA answers each hand-off in mda-done/ and removes the request once every one
    of them is answered durably."""
    root = str(spool.root)
    name = handoffs[0].handoff_id
    tmp, final = f"{root}/tmp/.handoff.{name}", f"{root}/mda/{name}"
    write_file_synced(tmp, [handoff_request(handoffs)])
    try:
        rename_no_replace(tmp, final)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    fsync_dir(spool.dir("mda"))
    return Path(final)


def write_handoff_results(spool: Spool, handoff_id: str, results: list[HandoffResult],
                          sync_dir: bool = True, sync_file: bool = True) -> Path:
    """With sync_dir=False the caller fsyncs mda-done/ and tmp/ before removing the
    request (group commit of several answers); with sync_file=False the answer file
    too (the MDA's consumer: one syncfs(2) for a batch)."""
    from .fsutil import write_durably
    data = json.dumps([dataclasses.asdict(r) for r in results], separators=(",", ":")).encode()
    return write_durably(spool.dir("mda-done"), handoff_id, [data], tmp_dir=spool.dir("tmp"), sync_dir=sync_dir,
                         sync_file=sync_file)


def write_handoff_answers(spool: Spool, name: str, answers: dict[str, list[HandoffResult]],
                          sync_dir: bool = True, sync_file: bool = True) -> Path:
    """mda-done/<name>: the answers to request file mda/<name>, by hand-off. One
    hand-off's (the request's only one, which names it) as write_handoff_results
    writes them; several as {"answers": {handoff_id: [results]}}. sync_dir and
    sync_file as for write_handoff_results."""
    if list(answers) == [name]:
        return write_handoff_results(spool, name, answers[name], sync_dir=sync_dir, sync_file=sync_file)
    from .fsutil import write_durably
    data = json.dumps({"answers": {hid: [dataclasses.asdict(r) for r in results] for hid, results in answers.items()}},
                      separators=(",", ":")).encode()
    return write_durably(spool.dir("mda-done"), name, [data], tmp_dir=spool.dir("tmp"), sync_dir=sync_dir,
                         sync_file=sync_file)


def read_handoff_answers(name: str, path: Path) -> dict[str, list[HandoffResult]]:
    """The answers in mda-done/<name> by hand-off ID (see write_handoff_answers).
    Raises OSError, or ValueError (TypeError, KeyError) for a file that does not parse."""
    d = json.loads(_read_small(path))
    if isinstance(d, list):
        return {name: [HandoffResult(**r) for r in d]}
    answers = d["answers"]
    if not isinstance(answers, dict) or not all(isinstance(h, str) and _HANDOFF_ID.match(h) for h in answers):
        raise ValueError("bad answers")
    return {hid: [HandoffResult(**r) for r in results] for hid, results in answers.items()}


def _read_small(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)   # not Path.read_bytes: no buffered file object
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
    finally:
        os.close(fd)
    return data


def read_handoff_results(path: Path) -> list[HandoffResult]:
    return [HandoffResult(**r) for r in json.loads(_read_small(path))]
