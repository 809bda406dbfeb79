"""common.storage.maildir -- Maildir++ mail stores and mailboxes, laid out as Dovecot does.

    <root>/cur new tmp             INBOX
    <root>/.Name.Sub/cur new tmp   folder "Name.Sub" (name in modified UTF-7)
    <mailbox>/dovecot-uidlist      UIDs (see uidlist.py), dovecot-keywords (keywords.py)
    <root>/subscriptions           one subscribed name per line
    <root>/maildirsize             Maildir++ quota (quota.py)

Delivery is lock-free (tmp/, fsync, rename into new/, fsync new/). UIDs are given
under the dovecot-uidlist dotlock, which every reader skips. Flags live in the file
names and change by rename: a rename that fails because another process renamed the
file first is retried against the file's new name, so no flag is lost. Expunge
unlinks the file; other sessions see it gone at their next sync.

SECURITY: everything here acts on a user's maildir, which the user can change
behind our back. Folder names are validated (names.py) so they map to direct
children of the root; folder and cur/new/tmp directories must be real directories
(lstat), files are opened with O_NOFOLLOW, and delivery works relative to directory
descriptors opened with O_NOFOLLOW so a swapped-in symlink cannot redirect a write.
The files' contents are not trusted (uidlist, keywords and quota files are parsed
strictly).
"""

from __future__ import annotations

import errno
import itertools
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..fsutil import fsync_dir, is_no_space, write_durably
from . import keywords as kwfile
from . import uidlist as uidfile
from .errors import (InvalidMailboxName, MailboxExists, MailboxNotFound, NoSpace, QuotaExceeded,
                     StorageError)
from .lock import DotLock, FileLock
from .names import INBOX, SEPARATOR, folder_dirname, name_from_dirname, validate_mailbox_name
from .quota import MaildirSize, message_size

UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
SUBSCRIPTIONS = "subscriptions"
SPECIAL_USE = "postroom-special-use"
POP3_LOCK = "postroom-pop3.lock"

SYSTEM_FLAGS = {"D": "\\Draft", "F": "\\Flagged", "R": "\\Answered", "S": "\\Seen", "T": "\\Deleted"}
FLAG_LETTERS = {v: k for k, v in SYSTEM_FLAGS.items()}
_LETTER_BY_LOWER = {v.lower(): k for k, v in SYSTEM_FLAGS.items()}
#: Largest control file (uidlist, keywords, subscriptions) we read.
CONTROL_READ_LIMIT = 64 << 20
#: A directory unchanged for this long is trusted to show any later change in its mtime.
SETTLE_SECONDS = 2.0
#: How many times a flag change or expunge chases a file renamed by someone else.
RENAME_RETRIES = 8

_HOST = socket.gethostname().split(".")[0].replace("/", "\\057").replace(":", "\\072") or "localhost"
_counter = itertools.count(1)
_UNIQUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")
_VSIZE_RE = re.compile(r",W=(\d+)")


def _wrap_os_error(exc: OSError, what: str) -> StorageError:
    if is_no_space(exc):
        return NoSpace(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


def _split_name(filename: str) -> tuple[str, str]:
    """'base:2,FS' -> ('base', 'FS'); names without ':2,' have no flags."""
    base, sep, info = filename.partition(":")
    if sep and info.startswith("2,"):
        return base, info[2:]
    return base, ""


def _sort_key(base: str) -> tuple[int, str]:
    head = base.split(".", 1)[0]
    return (int(head) if head.isdigit() and len(head) < 19 else 0, base)


def _crlf_size(data: bytes) -> int:
    """Size with every bare LF counted as CRLF (what IMAP and POP3 send)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def new_unique() -> str:
    """The unique part of a maildir name, as the maildir rules and Dovecot make it:
    time.MusecPpidQcounter.host. A caller that must know a delivery's name before
    writing it (exactly-once) takes one here and passes it to MailStore.deliver."""
    now = time.time()
    sec = int(now)
    usec = int((now - sec) * 1_000_000)
    return f"{sec}.M{usec}P{os.getpid()}Q{next(_counter)}.{_HOST}"


def _new_base(size: int, vsize: int, unique: str | None = None) -> str:
    return f"{unique or new_unique()},S={size},W={vsize}"


#: tmp/ files older than this are leftovers of a crashed write (the maildir rules' 36 hours)
STALE_TMP_SECONDS = 36 * 3600
#: when delivery last swept each tmp/ folder in this process (at most once an hour)
_tmp_swept: dict[str, float] = {}


class Message:
    """One message as of the last sync. Replaced (not changed) when its flags change."""

    __slots__ = ("uid", "filename", "sub", "_dir", "flags", "recent", "_size", "_internaldate", "_vsize",
                 "pop3_uidl")

    def __init__(self, uid: int, filename: str, mailbox_dir: str, sub: str, flags: frozenset[str],
                 recent: bool = False, pop3_uidl: str | None = None):
        self.uid = uid
        self.filename = filename
        self.sub = sub  # "cur" or "new"
        self._dir = mailbox_dir
        self.flags = flags
        self.recent = recent
        self.pop3_uidl = pop3_uidl
        self._size: int | None = None
        self._internaldate: float | None = None
        self._vsize: int | None = None

    @property
    def path(self) -> Path:
        return Path(self._dir, self.sub, self.filename)

    @property
    def fspath(self) -> str:
        return os.path.join(self._dir, self.sub, self.filename)

    @property
    def basename(self) -> str:
        return _split_name(self.filename)[0]

    @property
    def size(self) -> int:
        """Physical size: ",S=" from the name, else from stat."""
        if self._size is None:
            self._size = message_size(os.path.join(self._dir, self.sub), self.filename)
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
                    with _open_nofollow(self.fspath) as f:
                        self._vsize = _crlf_size(f.read())
                except OSError:
                    self._vsize = self.size
        return self._vsize

    @property
    def internaldate(self) -> float:
        """When the message arrived: the file's mtime, as Dovecot uses it."""
        if self._internaldate is None:
            try:
                self._internaldate = os.lstat(self.fspath).st_mtime
            except OSError:
                self._internaldate = 0.0
        return self._internaldate

    def __repr__(self) -> str:
        return f"<Message uid={self.uid} {self.filename!r}>"


@dataclass
class Changes:
    new: list[Message] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    flags: list[Message] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.expunged or self.flags)


def _open_nofollow(path: Path | str) -> BinaryIO:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    return open(fd, "rb")


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _read_control(path: Path) -> tuple[bytes, tuple] | None:
    """A control file's bytes and a signature that changes when the file is replaced."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with open(fd, "rb") as f:
        st = os.fstat(f.fileno())
        return f.read(CONTROL_READ_LIMIT), (st.st_ino, st.st_size, st.st_mtime_ns)


def _signature(path: Path) -> tuple | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


class MailStore:
    """One user's maildir: the folders, subscriptions, delivery and quota."""

    def __init__(self, root: Path, *, owner: tuple[int, int] | None = None, create: bool = True):
        self.root = Path(root)
        self.owner = owner
        self.quota = MaildirSize(self.root, owner)
        if not _is_real_dir(self.root / "cur"):
            if not create:
                raise MailboxNotFound(f"no maildir at {self.root}")
            self._make_maildir(self.root, folder=False)

    # --- layout -----------------------------------------------------------------------

    def _chown(self, path: Path | str, dir_fd: int | None = None) -> None:
        if self.owner is not None:
            os.chown(path, *self.owner, dir_fd=dir_fd, follow_symlinks=False)

    def _mkdir(self, path: Path) -> None:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            if not _is_real_dir(path):
                raise StorageError(f"{path} exists and is not a directory", temporary=False) from None
            return
        self._chown(path)

    def _make_maildir(self, path: Path, folder: bool) -> None:
        try:
            if not folder:
                path.mkdir(mode=0o700, parents=True, exist_ok=True)
                if self.owner is not None:
                    self._chown(path)
            else:
                self._mkdir(path)
            for sub in ("tmp", "new", "cur"):
                self._mkdir(path / sub)
            if folder:
                marker = path / "maildirfolder"
                if not marker.exists():
                    os.close(os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))
                    self._chown(marker)
            fsync_dir(path)
            fsync_dir(path.parent)
        except OSError as e:
            raise _wrap_os_error(e, f"creating {path}") from e

    @staticmethod
    def _validate(name: str) -> str:
        try:
            return validate_mailbox_name(name)
        except ValueError as e:
            raise InvalidMailboxName(f"{name!r}: {e}") from None

    def mailbox_path(self, name: str) -> Path:
        name = self._validate(name)
        return self.root if name == INBOX else self.root / folder_dirname(name)

    def list_mailboxes(self) -> list[str]:
        names = [INBOX]
        try:
            entries = list(os.scandir(self.root))
        except OSError as e:
            raise _wrap_os_error(e, "listing folders") from e
        for entry in entries:
            name = name_from_dirname(entry.name)
            if name is not None and entry.is_dir(follow_symlinks=False):
                names.append(name)
        return sorted(names, key=lambda n: (n != INBOX, n))

    def mailbox_exists(self, name: str) -> bool:
        try:
            path = self.mailbox_path(name)
        except InvalidMailboxName:
            return False
        return _is_real_dir(path) and _is_real_dir(path / "cur")

    def create_mailbox(self, name: str) -> None:
        name = self._validate(name)
        if name == INBOX or self.mailbox_exists(name):
            raise MailboxExists(name)
        self._make_maildir(self.mailbox_path(name), folder=True)

    def delete_mailbox(self, name: str) -> None:
        """Delete one folder (RFC 3501: its children stay). INBOX cannot be deleted."""
        name = self._validate(name)
        if name == INBOX:
            raise StorageError("INBOX cannot be deleted", temporary=False)
        path = self.mailbox_path(name)
        if not self.mailbox_exists(name):
            raise MailboxNotFound(name)
        # Rename out of sight first (a name no valid folder can have), then remove.
        trash = self.root / f"..postroom-deleted.{os.getpid()}.{next(_counter)}"
        try:
            os.rename(path, trash)
            fsync_dir(self.root)
            shutil.rmtree(trash, ignore_errors=True)
        except OSError as e:
            raise _wrap_os_error(e, f"deleting {name}") from e
        self._edit_special_use(lambda table: table.pop(name, None))

    def rename_mailbox(self, old: str, new: str) -> None:
        """RFC 3501 RENAME: children move too; renaming INBOX moves its messages into a
        new folder and leaves INBOX empty."""
        old, new = self._validate(old), self._validate(new)
        if not self.mailbox_exists(old):
            raise MailboxNotFound(old)
        if new == INBOX or self.mailbox_exists(new):
            raise MailboxExists(new)
        if new.startswith(old + SEPARATOR):
            raise InvalidMailboxName("cannot rename a mailbox into its own child")
        if old == INBOX:
            self._rename_inbox(new)
            return
        moves = [(old, new)]
        prefix = old + SEPARATOR
        for name in self.list_mailboxes():
            if name.startswith(prefix):
                target = new + name[len(old):]
                self._validate(target)
                if self.mailbox_exists(target):
                    raise MailboxExists(target)
                moves.append((name, target))
        try:
            for src, dst in moves:
                os.rename(self.mailbox_path(src), self.mailbox_path(dst))
            fsync_dir(self.root)
        except OSError as e:
            raise _wrap_os_error(e, f"renaming {old}") from e

        def follow(table: dict[str, str]) -> None:
            for src, dst in moves:
                if src in table:
                    table[dst] = table.pop(src)
        self._edit_special_use(follow)

    def _rename_inbox(self, new: str) -> None:
        self.create_mailbox(new)
        dest = self.mailbox_path(new)
        try:
            for sub in ("new", "cur"):
                for filename in os.listdir(self.root / sub):
                    if not filename.startswith("."):
                        try:
                            os.rename(self.root / sub / filename, dest / sub / filename)
                        except FileNotFoundError:
                            pass
                fsync_dir(dest / sub)
                fsync_dir(self.root / sub)
        except OSError as e:
            raise _wrap_os_error(e, "renaming INBOX") from e

    # --- subscriptions and special use ------------------------------------------------

    def subscriptions(self) -> list[str]:
        got = _read_control(self.root / SUBSCRIPTIONS)
        if got is None:
            return []
        lines = got[0].decode("utf-8", "replace").split("\n")
        names: list[str] = []
        if lines and lines[0].startswith("V\t"):
            # Dovecot 2.3's version 2 format: header, blank line, tab-separated levels.
            body = [line.replace("\t", SEPARATOR) for line in lines[2:]]
            decode = False
        else:
            body, decode = lines, True
        from .names import decode_mutf7
        for line in body:
            line = line.strip("\r")
            if not line:
                continue
            try:
                name = validate_mailbox_name(decode_mutf7(line) if decode else line)
            except ValueError:
                continue
            if name not in names:
                names.append(name)
        return names

    def _write_subscriptions(self, names: list[str]) -> None:
        from .names import encode_mutf7
        data = "".join(encode_mutf7(n) + "\n" for n in names).encode("ascii")
        with DotLock(self.root / SUBSCRIPTIONS, owner=self.owner):
            write_durably(self.root, SUBSCRIPTIONS, [data], tmp_dir=self.root / "tmp")
            self._chown(self.root / SUBSCRIPTIONS)

    def subscribe(self, name: str) -> None:
        name = self._validate(name)
        names = self.subscriptions()
        if name not in names:
            self._write_subscriptions(names + [name])

    def unsubscribe(self, name: str) -> None:
        name = self._validate(name)
        names = self.subscriptions()
        if name in names:
            self._write_subscriptions([n for n in names if n != name])

    def special_use(self) -> dict[str, str]:
        """{mailbox: "\\Sent", ...} for the folders that exist."""
        return {n: u for n, u in self._special_use_table().items() if self.mailbox_exists(n)}

    def _special_use_table(self) -> dict[str, str]:
        got = _read_control(self.root / SPECIAL_USE)
        table: dict[str, str] = {}
        if got is None:
            return table
        for line in got[0].decode("utf-8", "replace").split("\n"):
            name, _, use = line.partition("\t")
            try:
                name = validate_mailbox_name(name)
            except ValueError:
                continue
            if use.startswith("\\") and use[1:].isalpha():
                table[name] = use
        return table

    def _edit_special_use(self, edit) -> None:
        got = _read_control(self.root / SPECIAL_USE)
        if got is None:
            return
        table = self._special_use_table()
        edit(table)
        data = "".join(f"{n}\t{u}\n" for n, u in table.items()).encode("utf-8")
        write_durably(self.root, SPECIAL_USE, [data], tmp_dir=self.root / "tmp")

    def ensure_default_mailboxes(self, defaults: dict[str, str]) -> None:
        """Create and subscribe each {name: "\\Drafts"} folder that is missing, and record
        its special use. Folders the user already has keep their own special use."""
        table = self.special_use()
        changed = False
        for name, use in defaults.items():
            name = self._validate(name)
            if not self.mailbox_exists(name):
                self._make_maildir(self.mailbox_path(name), folder=True)
                self.subscribe(name)
            if use and name not in table and use not in table.values():
                table[name] = use
                changed = True
        if changed or not (self.root / SPECIAL_USE).exists():
            data = "".join(f"{n}\t{u}\n" for n, u in table.items()).encode("utf-8")
            write_durably(self.root, SPECIAL_USE, [data], tmp_dir=self.root / "tmp")
            self._chown(self.root / SPECIAL_USE)

    # --- mailboxes --------------------------------------------------------------------

    def open_mailbox(self, name: str, readonly: bool = False) -> "Mailbox":
        name = self._validate(name)
        if not self.mailbox_exists(name):
            raise MailboxNotFound(name)
        box = Mailbox(self, name, self.mailbox_path(name), readonly)
        box.sync()
        return box

    # --- delivery ---------------------------------------------------------------------

    def deliver(self, message: bytes, mailbox: str = INBOX, *, flags: Iterable[str] = (), create: bool = False,
                quota: tuple[int | None, int | None] | None = None, quota_temporary: bool = False,
                unique: str | None = None, sync_dir: bool = True, sync_file: bool = True,
                before_rename: Callable[[], object] | None = None) -> str:
        """Lock-free maildir delivery; returns the file name once it is durable.

        tmp/ under a name of its own, fsync, rename into new/ (or cur/ with flags),
        fsync the directory. `unique` (from `new_unique()`, chosen and recorded by the
        caller beforehand) fixes the final name, so a retry can look for it with
        `delivered()`; the tmp/ name is always fresh, so a write killed half way never
        blocks the next one (its leftover is swept after 36 hours).
        With sync_dir=False the directory is not fsync'd, with sync_file=False the
        file is not: the caller must make them durable (fsync `delivery_dir(mailbox,
        name)` and the file, or syncfs(2) the filesystem) before telling anyone the
        message is safe (group commit of several deliveries). before_rename, if
        given, is called between the write and the rename (tests kill the process
        there)."""
        name = INBOX if mailbox == INBOX else self._validate(mailbox)
        if unique is not None and not _UNIQUE_RE.fullmatch(unique):
            raise StorageError(f"bad unique delivery name {unique!r}", temporary=False)
        # INBOX is the maildir itself, made with the store (a missing part of it
        # fails the write below, temporarily).
        if name != INBOX and not self.mailbox_exists(name):
            if not create:
                raise MailboxNotFound(name)
            try:
                self.create_mailbox(name)
            except MailboxExists:
                pass
        size = len(message)
        if quota is not None:
            bytes_used, count_used = self.quota.usage(quota)
            if MaildirSize.over(quota, bytes_used, count_used, max(size, 1)):
                raise QuotaExceeded(f"over quota: {bytes_used}+{size} bytes, {count_used} messages",
                                    temporary=quota_temporary)
        vsize = _crlf_size(message)
        base = _new_base(size, vsize, unique)
        letters = _flag_letters(flags)
        subdir, final = ("cur", f"{base}:2,{letters}") if letters else ("new", base)
        try:
            self._write_into(self.root if name == INBOX else self.mailbox_path(name), _new_base(size, vsize), final,
                             subdir, message, sync_dir=sync_dir, sync_file=sync_file, before_rename=before_rename)
        except OSError as e:
            raise _wrap_os_error(e, f"delivering to {name}") from e
        if quota is not None or self.quota.path.exists():
            self.quota.add(size, 1)
        return final

    def delivery_dir(self, mailbox: str, name: str) -> Path:
        """The folder (new/ or cur/) that deliver() put the file name into."""
        box = self.root if mailbox == INBOX else self.mailbox_path(mailbox)
        return box / ("cur" if ":2," in name else "new")

    def _open_box(self, mbox_path: Path) -> tuple[int, int]:
        """Descriptors of the root and of the folder mbox_path (the same for INBOX),
        each opened with O_NOFOLLOW relative to its parent: a symlink swapped in for
        the maildir or a folder fails (ELOOP/ENOTDIR) instead of being followed."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        root_fd = os.open(self.root, flags)
        if mbox_path == self.root:
            return root_fd, root_fd
        try:
            if mbox_path.parent != self.root:
                raise StorageError(f"{mbox_path} is not a folder of {self.root}", temporary=False)
            return root_fd, os.open(mbox_path.name, flags, dir_fd=root_fd)
        except BaseException:
            os.close(root_fd)
            raise

    def _write_into(self, mbox_path: Path, tmp_name: str, final: str, subdir: str, data: bytes,
                    mtime: float | None = None, sync_dir: bool = True, sync_file: bool = True,
                    before_rename: Callable[[], object] | None = None) -> None:
        """Write data into mbox_path/subdir/final via tmp/tmp_name, using descriptors
        opened without following symlinks from the maildir root down. Durable on
        return unless the caller took over the fsyncs (sync_file, sync_dir)."""
        flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
        root_fd, box_fd = self._open_box(mbox_path)
        fds = {root_fd, box_fd}
        try:
            tmp_fd = os.open("tmp", flags, dir_fd=box_fd)
            fds.add(tmp_fd)
            dst_fd = os.open(subdir, flags, dir_fd=box_fd)
            fds.add(dst_fd)
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600, dir_fd=tmp_fd)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if self.owner is not None:
                    os.fchown(fd, *self.owner)
                if mtime is not None:
                    os.utime(fd, (mtime, mtime))
                if sync_file:
                    os.fsync(fd)
                if before_rename is not None:
                    before_rename()
                os.rename(tmp_name, final, src_dir_fd=tmp_fd, dst_dir_fd=dst_fd)
            except BaseException:
                try:
                    os.unlink(tmp_name, dir_fd=tmp_fd)
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)
            if sync_dir:
                os.fsync(dst_fd)
            # Leftovers of writes killed half way (their names are never reused).
            key = f"{mbox_path}"
            now = time.time()
            if now - _tmp_swept.get(key, 0.0) > 3600:
                _tmp_swept[key] = now
                for entry in os.scandir(tmp_fd):
                    try:
                        if now - entry.stat(follow_symlinks=False).st_mtime > STALE_TMP_SECONDS:
                            os.unlink(entry.name, dir_fd=tmp_fd)
                    except OSError:
                        pass
        finally:
            for f in fds:
                os.close(f)

    def delivered(self, unique: str, mailbox: str = INBOX) -> bool:
        """Whether a message delivered with this `unique` is in the mailbox (new/ or
        cur/, whatever flags it has now)."""
        try:
            root_fd, box_fd = self._open_box(self.mailbox_path(mailbox))
        except FileNotFoundError:
            return False
        except OSError as e:
            raise _wrap_os_error(e, f"looking into {mailbox}") from e
        try:
            for sub in ("new", "cur"):
                try:
                    sub_fd = os.open(sub, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=box_fd)
                except FileNotFoundError:
                    continue
                try:
                    names = os.listdir(sub_fd)
                finally:
                    os.close(sub_fd)
                for filename in names:
                    base = _split_name(filename)[0]
                    if base == unique or base.startswith(unique + ","):
                        return True
            return False
        except OSError as e:
            raise _wrap_os_error(e, f"looking into {mailbox}") from e
        finally:
            os.close(box_fd)
            if root_fd != box_fd:
                os.close(root_fd)

    def quota_usage(self) -> tuple[int, int]:
        return self.quota.usage()

    def pop3_lock(self) -> FileLock:
        """The exclusive POP3 maildrop lock (RFC 1939); MailboxInUse if held.

        An flock, so it vanishes with its process; IMAP and delivery ignore it."""
        return FileLock(self.root / POP3_LOCK, self.owner)


def _flag_letters(flags: Iterable[str], keyword_index: dict[str, int] | None = None) -> str:
    letters = set()
    by_lower = {k.lower(): i for k, i in (keyword_index or {}).items()}
    for flag in flags:
        letter = _LETTER_BY_LOWER.get(flag.lower())
        if letter:
            letters.add(letter)
        elif flag.lower() in by_lower:
            letters.add(kwfile.letter(by_lower[flag.lower()]))
    return "".join(sorted(letters))


_KEYWORD_LETTERS = frozenset("abcdefghijklmnopqrstuvwxyz")


class Mailbox:
    """One open mailbox: the message list as of the last sync(), and the operations
    IMAP and POP3 need. Not thread-safe; one per session."""

    def __init__(self, store: MailStore, name: str, path: Path, readonly: bool = False):
        self.mailstore = store
        self.name = name
        self.path = path
        self._dir = str(path)
        self.readonly = readonly
        self.messages: list[Message] = []
        self._by_uid: dict[int, Message] = {}
        self._pos: dict[int, int] = {}
        self._uidlist: uidfile.UidList | None = None
        self._uidlist_sig: tuple | None = None
        self._keywords: list[str | None] = []
        self._keywords_sig: tuple | None = None
        self._missing: set[int] = set()
        self.uidvalidity = 0
        self.uidnext = 1
        self.closed = False
        self._settled_stamp: tuple | None = None

    # --- control files ----------------------------------------------------------------

    def _lock(self) -> DotLock:
        return DotLock(self.path / UIDLIST, owner=self.mailstore.owner)

    def _load_uidlist(self, force: bool = False) -> uidfile.UidList | None:
        """The uidlist (re-read only when the file changed). None when missing; a broken
        file is None under the lock (force) and the previous view otherwise."""
        path = self.path / UIDLIST
        if not force and self._uidlist is not None and _signature(path) == self._uidlist_sig:
            return self._uidlist
        got = _read_control(path)
        if got is None:
            return None
        data, sig = got
        try:
            ul = uidfile.parse(data)
        except uidfile.UidListError:
            return None if force else self._uidlist
        if self._uidlist is not None and ul.uidvalidity != self._uidlist.uidvalidity:
            # UIDVALIDITY changed under us (the file was rebuilt): every UID we knew is gone.
            self._by_uid.clear()
        self._uidlist, self._uidlist_sig = ul, sig
        return ul

    def _write_uidlist(self, ul: uidfile.UidList) -> None:
        write_durably(self.path, UIDLIST, [ul.format()], tmp_dir=self.path / "tmp")
        self.mailstore._chown(self.path / UIDLIST)
        self._uidlist, self._uidlist_sig = ul, _signature(self.path / UIDLIST)

    def _fresh_uidlist(self) -> uidfile.UidList:
        previous = self._uidlist.uidvalidity if self._uidlist else 0
        return uidfile.UidList(max(int(time.time()), previous + 1))

    def _load_keywords(self, force: bool = False) -> list[str | None]:
        path = self.path / KEYWORDS
        if not force and _signature(path) == self._keywords_sig:
            return self._keywords
        got = _read_control(path)
        if got is None:
            self._keywords, self._keywords_sig = [], None
        else:
            self._keywords, self._keywords_sig = kwfile.parse(got[0]), got[1]
        return self._keywords

    def _ensure_keywords(self, names: Iterable[str]) -> dict[str, int]:
        """Index of each keyword, adding new ones to dovecot-keywords (under its own
        dotlock, as Dovecot does). Keywords beyond the 26 letters are not stored."""
        wanted = [n for n in names if not n.startswith("\\")]
        for n in wanted:
            if not kwfile.valid_keyword(n):
                raise StorageError(f"invalid keyword {n!r}", temporary=False)

        def lookup(table: list[str | None]) -> tuple[dict[str, int], list[str]]:
            by_lower = {k.lower(): i for i, k in enumerate(table) if k}
            found = {n: by_lower[n.lower()] for n in wanted if n.lower() in by_lower}
            return found, [n for n in wanted if n not in found]

        found, missing = lookup(self._load_keywords())
        if not missing:
            return found
        with DotLock(self.path / KEYWORDS, owner=self.mailstore.owner):
            table = list(self._load_keywords(force=True))
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
                self.mailstore._chown(self.path / KEYWORDS)
        found, _ = lookup(self._load_keywords(force=True))
        return found

    def _flags_of(self, letters: str) -> frozenset[str]:
        flags = []
        reloaded = False
        for ch in letters:
            if ch in SYSTEM_FLAGS:
                flags.append(SYSTEM_FLAGS[ch])
            elif ch in _KEYWORD_LETTERS:
                i = kwfile.index_of(ch)
                table = self._keywords
                if (i >= len(table) or table[i] is None) and not reloaded:
                    table = self._load_keywords()
                    reloaded = True
                if i < len(table) and table[i]:
                    flags.append(table[i])
        return frozenset(flags)

    # --- scanning ---------------------------------------------------------------------

    def _scan(self, move: bool) -> tuple[dict[str, tuple[str, str]], set[str]]:
        """base name -> (subdir, file name); and the bases this call moved from new/.

        new/ is read before cur/, so a file another process moves between them is seen."""
        names: dict[str, tuple[str, str]] = {}
        moved: set[str] = set()
        new_dir, cur_dir = self.path / "new", self.path / "cur"
        try:
            for filename in os.listdir(new_dir):
                if filename.startswith("."):
                    continue
                base, letters = _split_name(filename)
                if move:
                    try:
                        os.rename(new_dir / filename, cur_dir / f"{base}:2,{letters}")
                        moved.add(base)
                    except FileNotFoundError:
                        pass  # moved by someone else: the cur/ scan below finds it
                else:
                    names[base] = ("new", filename)
            for filename in os.listdir(cur_dir):
                if not filename.startswith("."):
                    names[_split_name(filename)[0]] = ("cur", filename)
        except FileNotFoundError:
            raise MailboxNotFound(self.name) from None
        except OSError as e:
            raise _wrap_os_error(e, f"scanning {self.name}") from e
        return names, moved

    def _dir_stamp(self) -> tuple | None:
        try:
            new, cur = os.stat(os.path.join(self._dir, "new")), os.stat(os.path.join(self._dir, "cur"))
        except OSError:
            return None
        return (new.st_ino, new.st_mtime_ns, cur.st_ino, cur.st_mtime_ns, new.st_nlink, cur.st_nlink,
                _signature(self.path / UIDLIST))

    def _find(self, base: str) -> tuple[str, str] | None:
        """Where the file with this base name is now (after someone renamed it)."""
        for sub in ("cur", "new"):
            try:
                for filename in os.listdir(self.path / sub):
                    if filename == base or filename.startswith(base + ":"):
                        return sub, filename
            except OSError:
                continue
        return None

    def sync(self) -> Changes:
        """Catch up with the maildir: new messages get UIDs (under the uidlist dotlock),
        vanished ones are reported expunged, renamed ones as flag changes."""
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)
        stamp = self._dir_stamp()
        if stamp is not None and stamp == self._settled_stamp:
            return Changes()  # nothing in new/, cur/ or the uidlist changed since a settled scan
        names, moved = self._scan(move=not self.readonly)
        # Directory times have a coarse clock tick: a scan only proves "nothing changed"
        # for a later sync when the directories were last changed well before it began.
        settled = stamp is not None and not moved and time.time() - max(stamp[1], stamp[3]) / 1e9 > SETTLE_SECONDS
        self._settled_stamp = stamp if settled else None
        ul = self._load_uidlist()
        if ul is not None:
            missing = [b for b, r in ul.records.items() if b not in names and r.uid not in self._missing]
            if missing:
                # A file renamed while we listed may have been missed: look once more.
                again, _ = self._scan(move=False)
                for base, where in again.items():
                    names.setdefault(base, where)
                self._missing.update(ul.records[b].uid for b in missing if b not in names)
        if ul is None or any(b not in ul.records for b in names):
            try:
                with self._lock():
                    ul = self._load_uidlist(force=True)
                    dirty = ul is None
                    if ul is None:
                        ul = self._fresh_uidlist()
                        self._by_uid.clear()
                        self._missing.clear()
                    unknown = sorted((b for b in names if b not in ul.records), key=_sort_key)
                    if unknown or dirty:
                        for base in unknown:
                            ul.assign(base)
                        for base in [b for b, r in ul.records.items() if r.uid in self._missing and b not in names]:
                            del ul.records[base]
                        self._write_uidlist(ul)
            except OSError as e:
                raise _wrap_os_error(e, f"writing the uidlist of {self.name}") from e
        self.uidvalidity, self.uidnext = ul.uidvalidity, ul.next_uid

        changes = Changes()
        by_uid: dict[int, Message] = {}
        for base, (sub, filename) in names.items():
            rec = ul.records.get(base)
            if rec is None:
                continue
            uid = rec.uid
            old = self._by_uid.get(uid)
            if old is not None and old.filename == filename and old.sub == sub:
                by_uid[uid] = old
                continue
            msg = Message(uid, filename, self._dir, sub, self._flags_of(_split_name(filename)[1]),
                          recent=(base in moved) if old is None else old.recent, pop3_uidl=rec.ext("P"))
            if rec.extensions:
                # Dovecot records the CRLF size as W<n>: saves reading files without ",W=".
                vsize = rec.ext("W")
                if vsize and vsize.isdigit() and ",W=" not in base:
                    msg._vsize = int(vsize)
            if old is None:
                changes.new.append(msg)
            elif old.flags != msg.flags:
                changes.flags.append(msg)
            by_uid[uid] = msg
        changes.expunged = sorted(uid for uid in self._by_uid if uid not in by_uid)
        changes.new.sort(key=lambda m: m.uid)
        changes.flags.sort(key=lambda m: m.uid)
        self._set_messages(by_uid)
        return changes

    def _set_messages(self, by_uid: dict[int, Message]) -> None:
        self._by_uid = by_uid
        self.messages = [by_uid[u] for u in sorted(by_uid)]
        self._pos = {m.uid: i for i, m in enumerate(self.messages)}

    def _replace(self, msg: Message) -> None:
        self._by_uid[msg.uid] = msg
        self.messages[self._pos[msg.uid]] = msg

    def _drop(self, uids: Iterable[int]) -> None:
        gone = set(uids)
        if gone:
            self._missing |= gone
            self._set_messages({u: m for u, m in self._by_uid.items() if u not in gone})

    # --- reading ----------------------------------------------------------------------

    def by_uid(self, uid: int) -> Message | None:
        return self._by_uid.get(uid)

    def open(self, uid: int) -> BinaryIO:
        msg = self._by_uid.get(uid)
        if msg is None:
            raise MessageExpunged(f"no message with UID {uid}")
        try:
            return _open_nofollow(msg.fspath)
        except FileNotFoundError:
            found = self._find(msg.basename)
            if found is None:
                raise MessageExpunged(f"UID {uid} was expunged") from None
            return _open_nofollow(os.path.join(self._dir, *found))
        except OSError as e:
            raise _wrap_os_error(e, f"reading UID {uid}") from e

    def read(self, uid: int) -> bytes:
        with self.open(uid) as f:
            return f.read()

    def watch_paths(self) -> list[Path]:
        return [self.path / "new", self.path / "cur"]

    # --- changing ---------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise StorageError(f"{self.name} is open read-only", temporary=False)
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)

    def _rename_flags(self, msg: Message, compute) -> Message | None:
        """Rename msg's file to the flags compute(old letters) gives; chase renames by
        others so their changes are kept. None when the message is gone."""
        sub, filename = msg.sub, msg.filename
        for _ in range(RENAME_RETRIES):
            base, letters = _split_name(filename)
            new_filename = f"{base}:2,{compute(letters)}"
            if new_filename == filename and sub == "cur":
                break
            try:
                os.rename(os.path.join(self._dir, sub, filename), os.path.join(self._dir, "cur", new_filename))
            except FileNotFoundError:
                found = self._find(base)
                if found is None:
                    return None
                sub, filename = found
                continue
            sub, filename = "cur", new_filename
            break
        else:
            raise StorageError(f"UID {msg.uid}: flags changed too often by others, try again")
        if filename == msg.filename and sub == msg.sub:
            return msg
        new = Message(msg.uid, filename, self._dir, sub, self._flags_of(_split_name(filename)[1]),
                      msg.recent, msg.pop3_uidl)
        self._replace(new)
        return new

    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str = "add") -> list[Message]:
        """Add, remove or replace flags; returns the messages as they are now (those
        still there). \\Recent is not a stored flag and is ignored."""
        self._writable()
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad store mode {mode!r}")
        flags = [f for f in flags if f.lower() != "\\recent"]
        for f in flags:
            if f.startswith("\\") and f.lower() not in _LETTER_BY_LOWER:
                raise StorageError(f"unknown system flag {f!r}", temporary=False)
        index = self._ensure_keywords(flags) if mode != "remove" else \
            {k: i for i, k in enumerate(self._load_keywords()) if k}
        if mode == "remove":
            lower = {f.lower() for f in flags}
            index = {k: i for k, i in index.items() if k.lower() in lower}
        want = set(_flag_letters(flags, index))

        def compute(letters: str) -> str:
            have = set(letters)
            if mode == "add":
                result = have | want
            elif mode == "remove":
                result = have - want
            else:
                result = {c for c in have if c not in SYSTEM_FLAGS and c not in _KEYWORD_LETTERS} | want
            return "".join(sorted(result))

        done = []
        try:
            for uid in sorted(set(uids)):
                msg = self._by_uid.get(uid)
                if msg is not None:
                    new = self._rename_flags(msg, compute)
                    if new is not None:
                        done.append(new)
        except OSError as e:
            raise _wrap_os_error(e, f"storing flags in {self.name}") from e
        return done

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those in uids when given)."""
        self._writable()
        limit = None if uids is None else set(uids)
        targets = [m for m in self.messages if "\\Deleted" in m.flags and (limit is None or m.uid in limit)]
        return self._remove(targets, need_deleted=True)

    def _remove(self, targets: list[Message], need_deleted: bool) -> list[int]:
        removed: list[int] = []
        freed = 0
        try:
            for msg in targets:
                sub, filename = msg.sub, msg.filename
                for _ in range(RENAME_RETRIES):
                    try:
                        os.unlink(os.path.join(self._dir, sub, filename))
                    except FileNotFoundError:
                        found = self._find(msg.basename)
                        if found is None:
                            removed.append(msg.uid)  # expunged by someone else meanwhile
                            break
                        sub, filename = found
                        if need_deleted and "T" not in _split_name(filename)[1]:
                            break  # someone took \Deleted off meanwhile
                        continue
                    removed.append(msg.uid)
                    freed += msg.size
                    break
            if removed:
                fsync_dir(self.path / "cur")
        except OSError as e:
            raise _wrap_os_error(e, f"expunging in {self.name}") from e
        finally:
            gone = {m.basename for m in targets if m.uid in set(removed)}
            self._drop(removed)
            if freed:
                self.mailstore.quota.add(-freed, -len(removed))
        self._prune_uidlist(gone)
        return removed

    def _prune_uidlist(self, bases: set[str]) -> None:
        """Drop expunged messages from dovecot-uidlist, as Dovecot does, so other
        sessions need not look twice for them. Best effort: if the lock is busy the
        records stay until the next rewrite, which is harmless."""
        if not bases:
            return
        from .errors import LockTimeout
        try:
            with DotLock(self.path / UIDLIST, owner=self.mailstore.owner, timeout=1.0):
                ul = self._load_uidlist(force=True)
                if ul is None or not bases & ul.records.keys():
                    return
                for base in bases & ul.records.keys():
                    del ul.records[base]
                self._write_uidlist(ul)
        except (LockTimeout, OSError):
            pass

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
        """Save a message (IMAP APPEND); returns its UID. Durable when it returns."""
        return self.append_many([(data, flags, internaldate)])[0]

    def append_many(self, messages: Iterable[tuple[bytes, Iterable[str], float | None]]) -> list[int]:
        """Save (data, flags, internaldate) messages together (IMAP MULTIAPPEND): all
        get their UIDs in one uidlist update under the lock, or none is kept.
        Returns their UIDs in order; durable when it returns."""
        self._writable()
        messages = [(data, list(flags), internaldate) for data, flags, internaldate in messages]
        index = self._ensure_keywords([f for _data, flags, _date in messages for f in flags])
        files: list[tuple[Path, str]] = []
        try:
            from ..fsutil import write_file_synced
            for data, flags, internaldate in messages:
                base = _new_base(len(data), _crlf_size(data))
                tmp = self.path / "tmp" / base
                files.append((tmp, f"{base}:2,{_flag_letters(flags, index)}"))
                write_file_synced(tmp, [data])
                if self.mailstore.owner is not None:
                    self.mailstore._chown(tmp)
                if internaldate is not None:
                    os.utime(tmp, (internaldate, internaldate), follow_symlinks=False)
            uids = self._commit_files(files)
        except BaseException as e:
            for tmp, final in files:
                for leftover in (tmp, self.path / "cur" / final):
                    try:
                        os.unlink(leftover)
                    except OSError:
                        pass
            if isinstance(e, OSError):
                raise _wrap_os_error(e, f"appending to {self.name}") from e
            raise
        self.mailstore.quota.add(sum(len(data) for data, _f, _d in messages), len(messages))
        return uids

    def _commit_files(self, files: list[tuple[Path, str]]) -> list[int]:
        """Rename finished files (in tmp/) into cur/ and give them UIDs, in order."""
        with self._lock():
            for tmp, final in files:
                os.rename(tmp, self.path / "cur" / final)
            fsync_dir(self.path / "cur")
            ul = self._load_uidlist(force=True)
            if ul is None:
                ul = self._fresh_uidlist()
            uids = [ul.assign(_split_name(final)[0]) for _, final in files]
            self._write_uidlist(ul)
            self.uidnext = ul.next_uid
        return uids

    def copy(self, uids: Iterable[int], dest: str) -> list[tuple[int, int]]:
        """Copy messages (hard links where possible) with their flags; returns
        (source UID, destination UID) pairs for UIDPLUS."""
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)
        dest = self.mailstore._validate(dest)
        if not self.mailstore.mailbox_exists(dest):
            raise MailboxNotFound(dest)
        target = Mailbox(self.mailstore, dest, self.mailstore.mailbox_path(dest))
        msgs = [self._by_uid[u] for u in sorted(set(uids)) if u in self._by_uid]
        if not msgs:
            return []
        staged: list[tuple[Path, str]] = []
        sources: list[int] = []
        total = 0
        try:
            index = target._ensure_keywords({f for m in msgs for f in m.flags})
            for msg in msgs:
                base = _new_base(msg.size, msg.vsize)
                tmp = target.path / "tmp" / base
                if not self._link_or_copy(msg, tmp):
                    continue
                staged.append((tmp, f"{base}:2,{_flag_letters(msg.flags, index)}"))
                sources.append(msg.uid)
                total += msg.size
            dest_uids = target._commit_files(staged) if staged else []
        except OSError as e:
            for tmp, _ in staged:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise _wrap_os_error(e, f"copying to {dest}") from e
        if staged:
            self.mailstore.quota.add(total, len(staged))
        return list(zip(sources, dest_uids))

    def _link_or_copy(self, msg: Message, tmp: Path) -> bool:
        """Put msg's content at tmp; False when the message is gone."""
        for _ in range(RENAME_RETRIES):
            found = (msg.sub, msg.filename)
            try:
                try:
                    os.link(self.path / found[0] / found[1], tmp, follow_symlinks=False)
                    return True
                except FileNotFoundError:
                    found = self._find(msg.basename)
                    if found is None:
                        return False
                    os.link(self.path / found[0] / found[1], tmp, follow_symlinks=False)
                    return True
            except OSError as e:
                if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                    if isinstance(e, FileNotFoundError):
                        continue
                    raise
            # No hard links here: copy the bytes, durably, keeping the arrival time.
            with self.open(msg.uid) as f:
                data = f.read()
            from ..fsutil import write_file_synced
            write_file_synced(tmp, [data])
            os.utime(tmp, (msg.internaldate, msg.internaldate), follow_symlinks=False)
            if self.mailstore.owner is not None:
                self.mailstore._chown(tmp)
            return True
        return False

    def move(self, uids: Iterable[int], dest: str) -> list[tuple[int, int]]:
        """Copy then remove the originals (RFC 6851 MOVE); the moved source UIDs are
        gone from .messages when this returns."""
        self._writable()
        pairs = self.copy(uids, dest)
        moved = {src for src, _ in pairs}
        self._remove([m for m in self.messages if m.uid in moved], need_deleted=False)
        return pairs

    def close(self) -> None:
        self.closed = True
        self.messages = []
        self._by_uid = {}
        self._pos = {}


class MessageExpunged(StorageError):
    """The message was expunged (by another session) since the last sync."""

    temporary = False
