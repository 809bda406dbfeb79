"""imapd.session -- the selected mailbox as one client sees it.

Keeps this session's view: the sequence number <-> UID map, the flags the client
was last told, \\Recent, and the changes made by others that it has not been told
yet. RFC 3501 7.4.1 decides when they may be told: EXISTS, RECENT and FETCH FLAGS
at the end of any command (and during IDLE); EXPUNGE only at the end of a command
that does not use sequence numbers (`CommandFlags`), so the numbers a client sent
in FETCH, STORE, SEARCH or COPY still mean what it meant. Until an EXPUNGE is sent,
the expunged message keeps its sequence number.

Each command declares its flags in one table (like Dovecot's COMMAND_FLAG_*):
`uses_seqs` (sequence numbers in its arguments or replies: no EXPUNGE may be sent
while it runs or at its end) and `breaks_seqs` (it may expunge itself: its own
expunges are sent as part of its reply).

SECURITY: trusts the storage layer; client sequence sets are bounded by the parser
and resolved with bisection, never expanded beyond the mailbox size.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from .fetch import LoadedMessage
from .parser import SequenceSet
from .response import paren

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
#: Parsed messages kept per session (a FETCH of several items reads each message once):
#: at most this many, and beyond the newest one at most this many bytes.
LOADED_CACHE = 8
LOADED_CACHE_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class CommandFlags:
    """How a command relates to sequence numbers (decides when EXPUNGE may be sent)."""
    uses_seqs: bool = False
    breaks_seqs: bool = False


class BadSequence(Exception):
    """A sequence number the client cannot know: answered with BAD."""


class SelectedMailbox:
    """The mailbox selected by SELECT or EXAMINE, as this session's client knows it."""

    def __init__(self, mailbox, readonly: bool):
        self.mailbox = mailbox
        self.readonly = readonly
        messages = sorted(mailbox.messages, key=lambda m: m.uid)
        self.uids: list[int] = [m.uid for m in messages]
        self.known: dict[int, object] = {m.uid: m for m in messages}
        self.shown_flags: dict[int, frozenset] = {m.uid: m.flags for m in messages}
        self.recent: set[int] = set() if readonly else {m.uid for m in messages if m.recent}
        self.pending_expunged: set[int] = set()
        self.pending_new: list = []
        self.pending_flags: set[int] = set()
        self.keywords: set[str] = self._keywords_of(messages)
        self._keywords_shown = set(self.keywords)
        self._loaded: dict[int, LoadedMessage] = {}

    @property
    def name(self) -> str:
        return self.mailbox.name

    @staticmethod
    def _keywords_of(messages) -> set[str]:
        out: set[str] = set()
        for m in messages:
            out.update(f for f in m.flags if not f.startswith("\\"))
        return out

    # ---- the client's view

    def exists(self) -> int:
        return len(self.uids)

    def seq_of(self, uid: int) -> int | None:
        i = bisect.bisect_left(self.uids, uid)
        return i + 1 if i < len(self.uids) and self.uids[i] == uid else None

    def flags_of(self, uid: int) -> list[str]:
        msg = self.known.get(uid)
        have = msg.flags if msg is not None else frozenset()
        flags = [f for f in SYSTEM_FLAGS if f in have] + sorted(f for f in have if not f.startswith("\\"))
        if uid in self.recent:
            flags.append("\\Recent")
        return flags

    def flags_response(self, uid: int) -> bytes:
        return paren(f.encode() for f in self.flags_of(uid))

    def flag_names(self) -> bytes:
        return paren(f.encode() for f in [*SYSTEM_FLAGS, *sorted(self.keywords)])

    def permanent_flags(self) -> bytes:
        if self.readonly:
            return b"()"
        return paren(f.encode() for f in [*SYSTEM_FLAGS, *sorted(self.keywords), "\\*"])

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[tuple[int, int]]:
        """[(seq, uid)] the set names, in ascending order. A sequence number beyond
        the view is BadSequence; UIDs that do not exist are simply absent."""
        if not self.uids:
            if uid_mode:
                return []
            raise BadSequence("No messages")
        out: dict[int, int] = {}
        if uid_mode:
            for lo, hi in seqset.resolve(self.uids[-1]):
                i = bisect.bisect_left(self.uids, lo)
                j = bisect.bisect_right(self.uids, hi)
                for k in range(i, j):
                    out[k + 1] = self.uids[k]
        else:
            n = len(self.uids)
            for lo, hi in seqset.resolve(n):
                if hi > n:
                    raise BadSequence("Invalid message sequence number")
                for k in range(lo, hi + 1):
                    out[k] = self.uids[k - 1]
        return sorted(out.items())

    def message(self, uid: int):
        return self.known.get(uid)

    def load(self, uid: int) -> LoadedMessage:
        """The message's octets (CRLF) and MIME tree; a few are cached."""
        got = self._loaded.get(uid)
        if got is None:
            got = LoadedMessage(self.mailbox.read(uid))
            self._loaded[uid] = got
            total = sum(m.size for m in self._loaded.values())
            while len(self._loaded) > 1 and (len(self._loaded) > LOADED_CACHE or total > LOADED_CACHE_BYTES):
                oldest = next(iter(self._loaded))
                total -= self._loaded.pop(oldest).size
        return got

    # ---- changes

    def refresh(self) -> None:
        """Take in what the storage saw change since the last look."""
        changes = self.mailbox.sync()
        self.absorb(changes.new, changes.expunged, changes.flags)

    def absorb(self, new=(), expunged=(), flags=()) -> None:
        new_uids = {m.uid for m in self.pending_new}
        for uid in expunged:
            if uid in self.known:
                self.pending_expunged.add(uid)
            elif uid in new_uids:
                self.pending_new = [m for m in self.pending_new if m.uid != uid]
            self._loaded.pop(uid, None)
        for m in new:
            if m.uid in self.known or m.uid in new_uids:
                continue
            self.pending_new.append(m)
            new_uids.add(m.uid)
            if m.recent and not self.readonly:
                self.recent.add(m.uid)
        for m in flags:
            if m.uid in self.known and m.uid not in self.pending_expunged:
                self.known[m.uid] = m
                if m.flags != self.shown_flags.get(m.uid):
                    self.pending_flags.add(m.uid)
            elif m.uid in new_uids:
                self.pending_new = [m if x.uid == m.uid else x for x in self.pending_new]

    def note_own_flags(self, messages) -> None:
        """Flags this session changed and is about to report itself."""
        for m in messages:
            if m.uid in self.known:
                self.known[m.uid] = m
                self.shown_flags[m.uid] = m.flags
                self.pending_flags.discard(m.uid)
                self._note_keywords(m.flags)

    def _note_keywords(self, flags) -> None:
        self.keywords.update(f for f in flags if not f.startswith("\\"))

    def updates(self, allow_expunge: bool) -> list[bytes]:
        """The untagged responses the client may be sent now."""
        out: list[bytes] = []
        if allow_expunge and self.pending_expunged:
            for i in range(len(self.uids) - 1, -1, -1):
                uid = self.uids[i]
                if uid in self.pending_expunged:
                    out.append(b"* %d EXPUNGE\r\n" % (i + 1))
                    del self.uids[i]
                    self.known.pop(uid, None)
                    self.shown_flags.pop(uid, None)
                    self.recent.discard(uid)
                    self.pending_flags.discard(uid)
            self.pending_expunged.clear()
        for m in self.pending_new:
            self._note_keywords(m.flags)
        for uid in self.pending_flags:
            m = self.known.get(uid)
            if m is not None:
                self._note_keywords(m.flags)
        if self.keywords != self._keywords_shown:
            self._keywords_shown = set(self.keywords)
            out.append(b"* FLAGS " + self.flag_names() + b"\r\n")
            out.append(b"* OK [PERMANENTFLAGS " + self.permanent_flags() + b"] Flags permitted\r\n")
        if self.pending_new:
            for m in sorted(self.pending_new, key=lambda m: m.uid):
                if self.uids and m.uid <= self.uids[-1]:
                    continue  # never reorder the view
                self.uids.append(m.uid)
                self.known[m.uid] = m
                self.shown_flags[m.uid] = m.flags
            self.pending_new = []
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        for uid in sorted(self.pending_flags):
            seq = self.seq_of(uid)
            m = self.known.get(uid)
            if seq is None or m is None:
                continue
            self.shown_flags[uid] = m.flags
            out.append(b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, self.flags_response(uid)))
        self.pending_flags.clear()
        return out

    def mark_expunged(self, uids) -> None:
        """Messages this session expunged (EXPUNGE, MOVE): reported at the command's end."""
        for uid in uids:
            if uid in self.known:
                self.pending_expunged.add(uid)
            self._loaded.pop(uid, None)

    def close(self) -> None:
        try:
            self.mailbox.close()
        except Exception:
            pass
