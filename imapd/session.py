"""imapd.session -- the selected mailbox as one client sees it.

Keeps this session's view: the sequence number <-> UID map, the messages (and so
the flags) the client was last told of, \\Recent, and the changes made by others
that it has not been told yet. RFC 3501 7.4.1 decides when they may be told:
EXISTS, RECENT and FETCH FLAGS at the end of any command (and during IDLE);
EXPUNGE (or VANISHED once QRESYNC is enabled, RFC 7162 3.2.10) only at the end of
a command that does not use sequence numbers (`CommandFlags`), so the numbers a
client sent in FETCH, STORE, SEARCH or COPY still mean what it meant. Until an
EXPUNGE is sent, the expunged message keeps its sequence number.

Once CONDSTORE is enabled every FETCH the server volunteers carries MODSEQ, and
a HIGHESTMODSEQ told is one up to which every change has been sent: while an
EXPUNGE or VANISHED is held back, one below it (`told_modseq`).

Each command declares its flags in one table (like Dovecot's COMMAND_FLAG_*):
`uses_seqs` (sequence numbers in its arguments or replies: no EXPUNGE may be sent
while it runs or at its end) and `breaks_seqs` (it may expunge itself: its own
expunges are sent as part of its reply).

SECURITY: trusts the storage layer; client sequence sets are bounded by the parser
and resolved with bisection over merged ranges, never expanded beyond the mailbox.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from common.storage import MailboxNotFound

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


class UidValidityChanged(MailboxNotFound):
    """The selected mailbox got a new UIDVALIDITY (its dovecot-uidlist was made anew):
    its UIDs now name other messages, so nothing the client knows of it holds, as
    when it is deleted."""


def merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, non-overlapping, non-adjacent (low, high) ranges."""
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def uid_ranges_text(ranges: list[tuple[int, int]]) -> str:
    return ",".join(str(lo) if lo == hi else f"{lo}:{hi}" for lo, hi in ranges)


def missing_ranges(ranges: list[tuple[int, int]], present: list[int]) -> list[tuple[int, int]]:
    """The parts of these (merged) UID ranges where no UID of `present` (sorted) is."""
    out = []
    for lo, hi in ranges:
        start = lo
        i = bisect.bisect_left(present, lo)
        while i < len(present) and present[i] <= hi:
            if present[i] > start:
                out.append((start, present[i] - 1))
            start = present[i] + 1
            i += 1
        if start <= hi:
            out.append((start, hi))
    return out


class SelectedMailbox:
    """The mailbox selected by SELECT or EXAMINE, as this session's client knows it."""

    def __init__(self, mailbox, readonly: bool):
        self.mailbox = mailbox
        self.readonly = readonly
        self.known: dict[int, object] = dict(mailbox._by_uid)
        self.uids: list[int] = sorted(self.known)
        # The storage view takes \Recent for this session (SELECT); EXAMINE has none.
        self.recent: set[int] = mailbox.recent
        self.pending_expunged: set[int] = set()
        self.pending_new: dict[int, object] = {}
        self.pending_flags: set[int] = set()
        self.keywords: set[str] = set(mailbox.keywords())
        self._keywords_shown = set(self.keywords)
        self._loaded: dict[int, LoadedMessage] = {}
        self._flag_bytes: dict[tuple, bytes] = {}
        self.condstore = False   # MODSEQ in every FETCH the server volunteers
        self.qresync = False     # VANISHED instead of EXPUNGE
        self.uidvalidity = mailbox.uidvalidity
        # The mailbox's highest mod-sequence at the last sync: every change up to it
        # has been taken in (and, but for expunges held back, told).
        self.synced_modseq = mailbox.highest_modseq
        # While expunges are held back: the value of synced_modseq before they were
        # taken in, below the mod-sequence of each of them.
        self.expunge_floor: int | None = None

    @property
    def name(self) -> str:
        return self.mailbox.name

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
        """`(\\Seen ...)` of a message; rendered once per distinct set of flags."""
        msg = self.known.get(uid)
        key = (msg.flags if msg is not None else frozenset(), uid in self.recent)
        got = self._flag_bytes.get(key)
        if got is None:
            got = paren(f.encode() for f in self.flags_of(uid))
            if len(self._flag_bytes) < 1024:
                self._flag_bytes[key] = got
        return got

    def modseq_of(self, uid: int) -> int:
        msg = self.known.get(uid)
        return msg.modseq if msg is not None else 0

    def flag_names(self) -> bytes:
        return paren(f.encode() for f in [*SYSTEM_FLAGS, *sorted(self.keywords)])

    def permanent_flags(self) -> bytes:
        if self.readonly:
            return b"()"
        return paren(f.encode() for f in [*SYSTEM_FLAGS, *sorted(self.keywords), "\\*"])

    def resolve(self, seqset: SequenceSet, uid_mode: bool) -> list[tuple[int, int]]:
        """[(seq, uid)] the set names, in ascending order. A sequence number beyond
        the view is BadSequence; UIDs that do not exist are simply absent."""
        uids = self.uids
        if not uids:
            if uid_mode:
                return []
            raise BadSequence("No messages")
        out: list[tuple[int, int]] = []
        if uid_mode:
            for lo, hi in merged(seqset.resolve(uids[-1])):
                i = bisect.bisect_left(uids, lo)
                j = bisect.bisect_right(uids, hi)
                out.extend(zip(range(i + 1, j + 1), uids[i:j]))
        else:
            n = len(uids)
            for lo, hi in merged(seqset.resolve(n)):
                if hi > n:
                    raise BadSequence("Invalid message sequence number")
                out.extend(zip(range(lo, hi + 1), uids[lo - 1:hi]))
        return out

    def vanished_response(self, since: int, uid_set: SequenceSet | None) -> bytes:
        """`* VANISHED (EARLIER) ...` for the UIDs of uid_set (all when None) that were
        expunged after mod-sequence `since` -- or, when the expunge history does not
        reach back that far, every UID of the set that is not here (RFC 7162 3.2.5.1,
        3.2.6); b"" when there are none."""
        top = max(self.uids[-1] if self.uids else 0, self.mailbox.uidnext - 1, 1)
        ranges = merged(uid_set.resolve(top)) if uid_set is not None else [(1, top)]
        gone = self.mailbox.vanished_since(since)
        if gone is None:
            vanished = missing_ranges(ranges, self.uids)
        else:
            vanished = merged([(u, u) for u in gone
                               if self.seq_of(u) is None and any(lo <= u <= hi for lo, hi in ranges)])
        if not vanished:
            return b""
        return b"* VANISHED (EARLIER) " + uid_ranges_text(vanished).encode() + b"\r\n"

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
        """Take in what the storage saw change since the last look. UidValidityChanged
        when the UIDs were renumbered."""
        before = self.synced_modseq
        changes = self.mailbox.sync()
        if self.mailbox.uidvalidity != self.uidvalidity:
            raise UidValidityChanged(f"{self.name}: UIDVALIDITY {self.uidvalidity} -> {self.mailbox.uidvalidity}")
        self.absorb(changes.new, changes.expunged, changes.flags)
        if self.pending_expunged and self.expunge_floor is None:
            self.expunge_floor = before
        self.synced_modseq = self.mailbox.highest_modseq

    def told_modseq(self) -> int:
        """A HIGHESTMODSEQ the client may resynchronise from: every change up to it has
        been sent, expunges included (RFC 7162 3.2.10: while a VANISHED is held back,
        a value below its mod-sequence)."""
        if self.pending_expunged and self.expunge_floor is not None:
            return self.expunge_floor
        return self.synced_modseq

    def absorb(self, new=(), expunged=(), flags=()) -> None:
        for uid in expunged:
            if uid in self.known:
                self.pending_expunged.add(uid)
            else:
                self.pending_new.pop(uid, None)
            self._loaded.pop(uid, None)
        for m in new:
            if m.uid not in self.known:
                self.pending_new[m.uid] = m
        for m in flags:
            if m.uid in self.known and m.uid not in self.pending_expunged:
                old = self.known[m.uid]
                self.known[m.uid] = m
                if old.flags != m.flags or old.modseq != m.modseq:
                    self.pending_flags.add(m.uid)
            elif m.uid in self.pending_new:
                self.pending_new[m.uid] = m

    def note_own_flags(self, messages) -> None:
        """Flags this session changed and is about to report itself."""
        for m in messages:
            if m.uid in self.known:
                self.known[m.uid] = m
                self.pending_flags.discard(m.uid)
                self.keywords.update(f for f in m.flags if not f.startswith("\\"))

    def updates(self, allow_expunge: bool) -> list[bytes]:
        """The untagged responses the client may be sent now."""
        out: list[bytes] = []
        if allow_expunge and self.pending_expunged:
            gone = self.pending_expunged
            if self.qresync:
                ranges = merged([(u, u) for u in gone if u in self.known])
                if ranges:
                    out.append(b"* VANISHED " + uid_ranges_text(ranges).encode() + b"\r\n")
            else:
                seqs = sorted((self.seq_of(u) for u in gone if u in self.known), reverse=True)
                out.extend(b"* %d EXPUNGE\r\n" % s for s in seqs if s is not None)
            self.uids = [u for u in self.uids if u not in gone]
            for uid in gone:
                self.known.pop(uid, None)
                self.recent.discard(uid)
                self.pending_flags.discard(uid)
            self.pending_expunged = set()
            self.expunge_floor = None
        for m in self.pending_new.values():
            self.keywords.update(f for f in m.flags if not f.startswith("\\"))
        for uid in self.pending_flags:
            m = self.known.get(uid)
            if m is not None:
                self.keywords.update(f for f in m.flags if not f.startswith("\\"))
        if self.keywords != self._keywords_shown:
            self._keywords_shown = set(self.keywords)
            out.append(b"* FLAGS " + self.flag_names() + b"\r\n")
            out.append(b"* OK [PERMANENTFLAGS " + self.permanent_flags() + b"] Flags permitted\r\n")
        if self.pending_new:
            last = self.uids[-1] if self.uids else 0
            for uid in sorted(self.pending_new):
                if uid <= last:
                    continue  # never reorder the view
                self.uids.append(uid)
                self.known[uid] = self.pending_new[uid]
                last = uid
            self.pending_new = {}
            out.append(b"* %d EXISTS\r\n" % len(self.uids))
            out.append(b"* %d RECENT\r\n" % len(self.recent))
        for uid in sorted(self.pending_flags):
            seq = self.seq_of(uid)
            if seq is None or uid not in self.known:
                continue
            out.append(self.fetch_flags_line(seq, uid))
        self.pending_flags.clear()
        return out

    def fetch_flags_line(self, seq: int, uid: int) -> bytes:
        """`* seq FETCH (UID uid FLAGS (...) [MODSEQ (n)])` for a flag change."""
        if self.condstore:
            return b"* %d FETCH (UID %d FLAGS %s MODSEQ (%d))\r\n" % (seq, uid, self.flags_response(uid),
                                                                     self.modseq_of(uid))
        return b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, self.flags_response(uid))

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
