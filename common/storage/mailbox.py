"""common.storage.mailbox -- one session's view of a mailbox: the messages as of its
last sync, and the operations IMAP and POP3 need (flags, expunge, append, copy, move).

Every view of a mailbox in a process shares one `common.storage.index.MailboxState`;
a view keeps its own message table and learns at `sync()` what changed since its
last look from the state's journal, so other sessions' changes reach it as new
messages, flag changes and expunges, and a sync costs the size of the change.

\\Recent (RFC 3501 2.3.2) belongs to one session: a view opened with claim_recent
(an IMAP SELECT) takes the messages no session has taken yet, at open and at each
sync; EXAMINE, STATUS and POP3 take none.

Appended and copied messages are durable (file fsync'd, directory fsync'd, UID
recorded in dovecot-uidlist and fsync'd) before their UIDs are returned.

SECURITY: as common.storage.maildir: files are opened with O_NOFOLLOW; names come
from the directory listing, never from clients.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from ..fsutil import HAVE_SYNCFS, write_file_synced
from .errors import MailboxNotFound, StorageError
from .index import (KEYWORD_LETTERS, LETTER_BY_LOWER, RENAME_RETRIES, SYSTEM_FLAGS, Message,
                    MailboxState, crlf_size, flag_letters, open_nofollow, release_state, state_for)


class MessageExpunged(StorageError):
    """The message was expunged (by another session) since the last sync."""

    temporary = False


@dataclass
class Changes:
    new: list[Message] = field(default_factory=list)
    expunged: list[int] = field(default_factory=list)
    flags: list[Message] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.new or self.expunged or self.flags)


class Mailbox:
    """One open mailbox as one session sees it. Not thread-safe; one per session."""

    def __init__(self, store, name: str, path: Path, readonly: bool = False, claim_recent: bool | None = None):
        self.mailstore = store
        self.name = name
        self.path = Path(path)
        self._dir = str(path)
        self.readonly = readonly
        self.claims_recent = (not readonly) if claim_recent is None else claim_recent
        self._claimed: list[int] = []  # claimed while appending, for the next sync
        self.state: MailboxState = state_for(store, name, self.path)
        self.state.views += 1
        self._by_uid: dict[int, Message] = {}
        self._version = -1
        self._list: list[Message] | None = []
        self.recent: set[int] = set()
        self.closed = False
        self._uidvalidity = 0  # of the UIDs in this view (the state's may be newer)

    # --- what the mailbox is ------------------------------------------------------------

    @property
    def uidvalidity(self) -> int:
        return self.state.uidvalidity

    @property
    def uidnext(self) -> int:
        return self.state.next_uid

    @property
    def highest_modseq(self) -> int:
        return self.state.highest_modseq

    @property
    def messages(self) -> list[Message]:
        """The messages as of the last sync, in UID order."""
        if self._list is None:
            self._list = [self._by_uid[u] for u in sorted(self._by_uid)]
        return self._list

    def by_uid(self, uid: int) -> Message | None:
        return self._by_uid.get(uid)

    def keywords(self) -> list[str]:
        """Every keyword defined for the mailbox (dovecot-keywords)."""
        return [k for k in self.state.load_keywords() if k]

    def cached(self, uid: int, kind: int) -> bytes | None:
        """What was kept in postroom-cache for this message (untrusted bytes). Nothing
        while the view has not caught up with a new UIDVALIDITY (its UIDs are old)."""
        if self._uidvalidity != self.state.uidvalidity:
            return None
        return self.state.cache_get(uid, kind)

    def keep(self, uid: int, kind: int, data: bytes) -> None:
        """Keep a value derived from the message's content (never changes for a UID)."""
        if self._uidvalidity == self.state.uidvalidity:
            self.state.cache_put(uid, kind, data)

    def vanished_since(self, modseq: int) -> list[int] | None:
        """UIDs expunged after `modseq` (QRESYNC), or None when the history does not
        reach back that far."""
        return self.state.vanished_since(modseq)

    # --- syncing ------------------------------------------------------------------------

    def sync(self) -> Changes:
        """Catch up with the maildir and other sessions: new messages (taking
        \\Recent when this view claims it), expunges, flag changes."""
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)
        state = self.state
        state.refresh(move_new=not self.readonly)
        # Claimed before this view catches up: the claim may learn of messages another
        # process added meanwhile, and they must be in this view to be its \Recent.
        claimed = state.claim_recent() if self.claims_recent and state.first_recent_uid < state.next_uid else []
        if self._claimed:
            claimed, self._claimed = self._claimed + claimed, []
        changes = self._catch_up()
        self._uidvalidity = state.uidvalidity
        self.recent.update(u for u in claimed if u in self._by_uid)
        return changes

    def _catch_up(self) -> Changes:
        state = self.state
        changes = Changes()
        if self._version == state.version:
            return changes
        entries = state.changes_since(self._version) if self._version >= 0 else None
        mine = self._by_uid
        current = state.by_uid
        if not mine and entries is None:
            # A fresh view: everything is new (no per-message comparison).
            changes.new = state.messages()
            self._by_uid = dict(current)
            self._list = None
            self._version = state.version
            return changes
        if entries is None:
            touched = set(mine) | set(current)
        else:
            touched = {uid for _kind, uid in entries}
        for uid in sorted(touched):
            now = current.get(uid)
            had = mine.get(uid)
            if now is None:
                if had is not None:
                    changes.expunged.append(uid)
                    del mine[uid]
            elif had is None:
                changes.new.append(now)
                mine[uid] = now
            elif had is not now:
                mine[uid] = now
                if had.flags != now.flags or had.modseq != now.modseq:
                    changes.flags.append(now)
        if changes.new or changes.expunged:
            self._list = None
        elif changes.flags and self._list is not None:
            self._list = None
        for uid in changes.expunged:
            self.recent.discard(uid)
        self._version = state.version
        return changes

    def _drop(self, uids: Iterable[int]) -> None:
        for uid in uids:
            if self._by_uid.pop(uid, None) is not None:
                self._list = None
            self.recent.discard(uid)

    # --- reading ------------------------------------------------------------------------

    def open(self, uid: int) -> BinaryIO:
        msg = self._by_uid.get(uid)
        if msg is None:
            raise MessageExpunged(f"no message with UID {uid}")
        try:
            return open_nofollow(msg.fspath)
        except FileNotFoundError:
            found = self.state.find(msg.basename)
            if found is None:
                raise MessageExpunged(f"UID {uid} was expunged") from None
            return open_nofollow(os.path.join(self._dir, *found))
        except OSError as e:
            raise _wrap(e, f"reading UID {uid}") from e

    def read(self, uid: int) -> bytes:
        with self.open(uid) as f:
            return f.read()

    def watch_paths(self) -> list[Path]:
        return [self.path / "new", self.path / "cur"]

    # --- changing -----------------------------------------------------------------------

    def _writable(self) -> None:
        if self.readonly:
            raise StorageError(f"{self.name} is open read-only", temporary=False)
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)

    def store(self, uids: Iterable[int], flags: Iterable[str], mode: str = "add") -> list[Message]:
        """Add, remove or replace flags; returns the messages as they are now (those
        still there). \\Recent is not a stored flag and is ignored."""
        return self.store_if_unchanged(uids, flags, mode, None)[0]

    def store_if_unchanged(self, uids: Iterable[int], flags: Iterable[str], mode: str,
                           unchanged_since: int | None) -> tuple[list[Message], list[int]]:
        """store() for the messages whose modification sequence is at most
        `unchanged_since` (RFC 7162 UNCHANGEDSINCE; None: all). Returns (messages as
        they are now, UIDs that failed the test)."""
        self._writable()
        if mode not in ("add", "remove", "replace"):
            raise ValueError(f"bad store mode {mode!r}")
        flags = [f for f in flags if f.lower() != "\\recent"]
        for f in flags:
            if f.startswith("\\") and f.lower() not in LETTER_BY_LOWER:
                raise StorageError(f"unknown system flag {f!r}", temporary=False)
        state = self.state
        if mode == "remove":
            lower = {f.lower() for f in flags}
            index = {k: i for i, k in enumerate(state.load_keywords()) if k and k.lower() in lower}
        else:
            index = state.ensure_keywords(flags)
        want = set(flag_letters(flags, index))

        def compute(letters: str) -> str:
            have = set(letters)
            if mode == "add":
                result = have | want
            elif mode == "remove":
                result = have - want
            else:
                result = {c for c in have if c not in SYSTEM_FLAGS and c not in KEYWORD_LETTERS} | want
            return "".join(sorted(result))

        mine = [u for u in uids if u in self._by_uid]
        try:
            done, failed = state.store_flags(mine, compute, unchanged_since)
        except OSError as e:
            raise _wrap(e, f"storing flags in {self.name}") from e
        for msg in done:
            if msg.uid in self._by_uid:
                self._by_uid[msg.uid] = msg
        self._list = None
        return done, failed

    def expunge(self, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those in uids when given)."""
        self._writable()
        limit = None if uids is None else set(uids)
        targets = [m.uid for m in self.messages if "\\Deleted" in m.flags and (limit is None or m.uid in limit)]
        return self._remove(targets, need_deleted=True)

    def _remove(self, uids: list[int], need_deleted: bool) -> list[int]:
        if not uids:
            return []
        try:
            removed, freed = self.state.remove(uids, need_deleted)
        except OSError as e:
            raise _wrap(e, f"expunging in {self.name}") from e
        self._drop(removed)
        if removed:
            self.mailstore.quota.add(-freed, -len(removed))
        return removed

    def append(self, data: bytes, flags: Iterable[str] = (), internaldate: float | None = None) -> int:
        """Save a message (IMAP APPEND); returns its UID. Durable when it returns."""
        return self.append_many([(data, flags, internaldate)])[0]

    def append_many(self, messages: Iterable[tuple[bytes, Iterable[str], float | None]],
                    sync: bool = True) -> list[int]:
        """Save (data, flags, internaldate) messages together (IMAP MULTIAPPEND): all
        get their UIDs in one uidlist update, or none is kept. Returns their UIDs in
        order; durable when it returns (with sync=False: see save_messages)."""
        self._writable()
        # A view that takes \Recent claims its own new messages as it commits them
        # (one lock instead of a second at the next sync).
        return save_messages(self.mailstore, self.state, messages, sync,
                             self._claimed if self.claims_recent else None)

    def copy(self, uids: Iterable[int], dest: str, sync: bool = True) -> list[tuple[int, int]]:
        """Copy messages (hard links where possible) with their flags; returns
        (source UID, destination UID) pairs for UIDPLUS. Durable when it returns
        (with sync=False: see save_messages)."""
        if self.closed:
            raise StorageError("mailbox is closed", temporary=False)
        from .maildir import _new_base
        store = self.mailstore
        dest = store._validate(dest)
        if not store.mailbox_exists(dest):
            raise MailboxNotFound(dest)
        target = state_for(store, dest, store.mailbox_path(dest))
        msgs = [self._by_uid[u] for u in sorted(set(uids)) if u in self._by_uid]
        if not msgs:
            return []
        staged: list[tuple[Path, str, float]] = []
        sources: list[int] = []
        total = 0
        try:
            index = target.ensure_keywords({f for m in msgs for f in m.flags})
            for msg in msgs:
                base = _new_base(msg.size, msg.vsize)
                tmp = target.path / "tmp" / base
                if not self._link_or_copy(msg, tmp):
                    continue
                staged.append((tmp, f"{base}:2,{flag_letters(msg.flags, index)}", msg.internaldate))
                sources.append(msg.uid)
                total += msg.size
            dest_uids = target.commit_files(staged, sync) if staged else []
        except OSError as e:
            for tmp, _, _ in staged:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise _wrap(e, f"copying to {dest}") from e
        if staged:
            store.quota.add(total, len(staged))
        return list(zip(sources, dest_uids))

    def _link_or_copy(self, msg: Message, tmp: Path) -> bool:
        """Put msg's content at tmp; False when the message is gone."""
        for _ in range(RENAME_RETRIES):
            where = (msg.sub, msg.filename)
            try:
                try:
                    os.link(self.path / where[0] / where[1], tmp, follow_symlinks=False)
                    return True
                except FileNotFoundError:
                    found = self.state.find(msg.basename)
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
        self._remove([src for src, _ in pairs], need_deleted=False)
        return pairs

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            release_state(self.state)
        self._by_uid = {}
        self._list = []


def save_messages(store, state: MailboxState, messages, sync: bool = True,
                  claim: list[int] | None = None) -> list[int]:
    """Write (data, flags, internaldate) messages into the mailbox: each file fsync'd
    in tmp/, then all renamed into cur/ and given UIDs together (MailboxState.
    commit_files), or none is kept. Returns their UIDs; durable when it returns.

    sync=False, where syncfs(2) exists (common.fsutil.HAVE_SYNCFS), leaves the one
    syncfs of the mailbox's filesystem to the caller, who may tell nobody that the
    messages are saved before it returned (imapd runs it in a thread, shared by the
    sessions appending meanwhile). Other sessions may see the UIDs before: should
    the machine (not the process) crash in between, such a message may be gone
    and its UID given again. Elsewhere sync=False changes nothing."""
    from .maildir import _new_base
    messages = [(data, list(flags), internaldate) for data, flags, internaldate in messages]
    index = state.ensure_keywords([f for _data, flags, _date in messages for f in flags])
    files: list[tuple[str, str, float]] = []
    tmp_dir = os.path.join(state._dir, "tmp")
    try:
        for data, flags, internaldate in messages:
            base = _new_base(len(data), crlf_size(data))
            tmp = os.path.join(tmp_dir, base)
            # commit_files makes it durable (with everything else, in one syncfs)
            write_file_synced(tmp, [data], sync=not HAVE_SYNCFS)
            if store.owner is not None:
                store._chown(tmp)
            if internaldate is not None:
                os.utime(tmp, (internaldate, internaldate), follow_symlinks=False)
            files.append((tmp, f"{base}:2,{flag_letters(flags, index)}", os.lstat(tmp).st_mtime))
        uids = state.commit_files(files, sync, claim)
    except BaseException as e:
        for tmp, final, _ in files:
            for leftover in (tmp, os.path.join(state._cur_dir, final)):
                try:
                    os.unlink(leftover)
                except OSError:
                    pass
        if isinstance(e, OSError):
            raise _wrap(e, f"appending to {state.name}") from e
        raise
    store.quota.add(sum(len(data) for data, _f, _d in messages), len(messages))
    return uids


def _wrap(exc: OSError, what: str) -> StorageError:
    from .maildir import _wrap_os_error
    return _wrap_os_error(exc, what)


__all__ = ["Mailbox", "Message", "Changes", "MessageExpunged", "save_messages"]
