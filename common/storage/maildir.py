"""common.storage.maildir -- Maildir++ mail stores, laid out as Dovecot does: folders,
subscriptions, special use, delivery and quota.

    <root>/cur new tmp             INBOX
    <root>/.Name.Sub/cur new tmp   folder "Name.Sub" (name in modified UTF-7)
    <mailbox>/dovecot-uidlist      UIDs (see uidlist.py), dovecot-keywords (keywords.py)
    <mailbox>/postroom-index*      postroom's index (index.py)
    <root>/subscriptions           one subscribed name per line
    <root>/maildirsize             Maildir++ quota (quota.py)

Delivery is lock-free (tmp/, fsync, rename into new/, fsync new/). Opened mailboxes
are views (mailbox.py) over the state a process shares (index.py): UIDs are given
under the dovecot-uidlist dotlock, flags live in the file names and change by
rename, expunge unlinks the file.

SECURITY: everything here acts on a user's maildir, which the user can change
behind our back. Folder names are validated (names.py) so they map to direct
children of the root; folder and cur/new/tmp directories must be real directories
(lstat), files are opened with O_NOFOLLOW, and delivery works relative to directory
descriptors opened with O_NOFOLLOW so a swapped-in symlink cannot redirect a write.
The files' contents are not trusted (uidlist, keywords and quota files are parsed
strictly).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..fsutil import fsync_dir, is_no_space, write_durably
from .errors import (InvalidMailboxName, MailboxExists, MailboxNotFound, NoSpace, QuotaExceeded,
                     StorageError)
from .lock import DotLock, FileLock
from .names import INBOX, SEPARATOR, folder_dirname, name_from_dirname, validate_mailbox_name
from .index import _read_control, crlf_size as _crlf_size, flag_letters as _flag_letters, split_name as _split_name
from .quota import MaildirSize

SUBSCRIPTIONS = "subscriptions"
SPECIAL_USE = "postroom-special-use"
POP3_LOCK = "postroom-pop3.lock"

_HOST = socket.gethostname().split(".")[0].replace("/", "\\057").replace(":", "\\072") or "localhost"
_counter = itertools.count(1)
_UNIQUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,199}")


def _wrap_os_error(exc: OSError, what: str) -> StorageError:
    if is_no_space(exc):
        return NoSpace(f"{what}: {exc}")
    return StorageError(f"{what}: {exc}")


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


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _is_maildir(path: Path) -> bool:
    """A folder, neither it nor its cur/ a symbolic link."""
    return _is_real_dir(path) and _is_real_dir(os.path.join(path, "cur"))


class MailStore:
    """One user's maildir: the folders, subscriptions, delivery and quota."""

    def __init__(self, root: Path, *, owner: tuple[int, int] | None = None, create: bool = True):
        self.root = Path(root)
        self.owner = owner
        self.quota = MaildirSize(self.root, owner)
        self._special_cache: tuple[tuple, dict[str, str]] | None = None  # (file signature, table)
        self._special_path = os.path.join(self.root, SPECIAL_USE)
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
        return self._folder_path(self._validate(name))

    def _folder_path(self, name: str) -> Path:
        """The folder of a validated name."""
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
        return _is_maildir(path)

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

    def special_use(self, existing: set[str] | None = None) -> dict[str, str]:
        """{mailbox: "\\Sent", ...} for the folders that exist (those of `existing`,
        a list_mailboxes() the caller has just made, when given)."""
        table = self._special_use_table()
        if existing is not None:
            return {n: u for n, u in table.items() if n in existing}
        return {n: u for n, u in table.items() if self.mailbox_exists(n)}

    def _special_use_table(self) -> dict[str, str]:
        """The special-use file, parsed (again only when the file was replaced)."""
        try:
            st = os.stat(self._special_path, follow_symlinks=False)
            sig = (st.st_ino, st.st_size, st.st_mtime_ns)
        except FileNotFoundError:
            return {}  # none written yet (the usual case)
        except OSError:
            sig = None
        if sig is not None and self._special_cache is not None and self._special_cache[0] == sig:
            return dict(self._special_cache[1])
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
        self._special_cache = (got[1], dict(table))
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

    def open_mailbox(self, name: str, readonly: bool = False, claim_recent: bool | None = None):
        """A synced view of the mailbox (common.storage.mailbox.Mailbox). A writable
        view takes \\Recent unless claim_recent=False (POP3)."""
        from .mailbox import Mailbox
        name = self._validate(name)
        if not self.mailbox_exists(name):
            raise MailboxNotFound(name)
        box = Mailbox(self, name, self.mailbox_path(name), readonly, claim_recent)
        try:
            box.sync()
        except BaseException:
            box.close()
            raise
        return box

    def append_messages(self, name: str, messages, sync: bool = True) -> tuple[int, list[int]]:
        """APPEND to a mailbox that is not open here: (uidvalidity, UIDs) once the
        (data, flags, internaldate) messages are durable (sync=False: see
        mailbox.save_messages). Takes no \\Recent."""
        from .mailbox import save_messages
        state = self.mailbox_state(name)
        return state.uidvalidity, save_messages(self, state, messages, sync)

    def mailbox_state(self, name: str):
        """The mailbox's shared state (common.storage.index.MailboxState), caught up
        with the maildir without moving anything: for STATUS and LIST-STATUS."""
        from .index import state_for
        name = self._validate(name)
        path = self._folder_path(name)
        if not _is_maildir(path):
            raise MailboxNotFound(name)
        state = state_for(self, name, path)
        state.refresh(move_new=False)
        if state.views == 0:
            state.close_files()  # reopened at the next use: STATUS of many folders holds none open
        return state

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
