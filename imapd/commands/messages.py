"""imapd.commands.messages -- APPEND, STORE, COPY, MOVE and their UID forms
(RFC 3501 6.3.11, 6.4.6-6.4.8, RFC 4315 UIDPLUS, RFC 6851 MOVE).

APPEND answers OK only after the storage has made the message durable (it
fsyncs file and directory before returning the UID; where syncfs(2) exists the
glue runs that one call off the event loop, shared by the sessions writing
meanwhile, and the OK waits for it -- so does COPY's). COPY and MOVE answer with
COPYUID; MOVE sends its EXPUNGEs as part of its reply. STORE takes CONDSTORE's
UNCHANGEDSINCE (RFC 7162 3.1.3): messages changed since are left alone and named
in MODIFIED; once CONDSTORE is enabled its FETCH answers carry MODSEQ.

SECURITY: flags are atoms checked by the parser; unknown system flags are
refused; \\Recent cannot be set by a client. Message data is stored as sent,
never interpreted here.
"""

from __future__ import annotations

from common.storage import MailboxNotFound, QuotaExceeded

from ..parser import ParseError
from ..protocol import AUTH, SELECTED, Done, No, advertise, command
from ..session import SYSTEM_FLAGS
from . import mailbox_arg, uid_set_text
from .selected import resolve

STORE_MODES = {"FLAGS": "replace", "+FLAGS": "add", "-FLAGS": "remove"}


def storable_flags(flags) -> list[str]:
    """Flags a client may set: system flags (\\Recent ignored) and keywords."""
    out = []
    for f in flags:
        if f.startswith("\\"):
            if f == "\\Recent" or f.upper() == "\\RECENT":
                continue
            if f not in SYSTEM_FLAGS:
                raise ParseError("Invalid system flag")
        out.append(f)
    return out


def check_quota(conn, add_bytes: int, add_count: int) -> None:
    """NO [OVERQUOTA] if adding this much would pass the user's quota rules (the
    Maildir++ maildirsize the MDA keeps is the usage)."""
    rules = getattr(conn.user, "quota", None)
    limits = rules() if callable(rules) else (None, None)
    max_bytes, max_count = limits
    if max_bytes is None and max_count is None:
        return
    used_bytes, used_count = conn.store.quota.usage(limits)
    if (max_bytes is not None and used_bytes + add_bytes > max_bytes) or \
            (max_count is not None and used_count + add_count > max_count):
        raise No("Quota exceeded", "OVERQUOTA",
                 detail=f"quota: {used_bytes}+{add_bytes} of {max_bytes} bytes, {used_count}+{add_count} of {max_count}")


def _append_message(r) -> tuple[bytes, list[str], float | None]:
    """[flag-list SP] [date-time SP] literal"""
    flags: list[str] = []
    internaldate = None
    if r.peek() == 0x28:
        flags = storable_flags(r.flag_list())
        r.sp()
    if r.peek() == 0x22:
        internaldate = r.date_time().timestamp()
        r.sp()
    data = r.literal()
    if not data:
        raise No("Cannot save an empty message", "CANNOT")
    return data, flags, internaldate


@command("APPEND", AUTH)
def append(conn, tag, r):
    r.sp()
    name = mailbox_arg(conn, r)
    r.sp()
    messages = [_append_message(r)]
    while not r.at_end():  # MULTIAPPEND (RFC 3502): all are saved, or none
        r.sp()
        messages.append(_append_message(r))
    check_quota(conn, sum(len(m[0]) for m in messages), len(messages))
    sel = conn.selected
    sync = not conn.settings.defer_sync
    try:
        if sel is not None and sel.name == name and not sel.readonly:
            # The selected mailbox: the next sync shows them here, \Recent (RFC 3501 2.3.2).
            uids = sel.mailbox.append_many(messages, sync)
            uidvalidity = sel.mailbox.uidvalidity
            path = sel.mailbox.path
        else:
            uidvalidity, uids = conn.store.append_messages(name, messages, sync)
            path = None if sync else conn.store.mailbox_path(name)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "TRYCREATE") from None
    except QuotaExceeded:
        raise No("Quota exceeded", "OVERQUOTA") from None
    done = Done("Append completed", f"APPENDUID {uidvalidity} {uid_set_text(uids)}")
    return done if sync else conn.durable_after(tag, "APPEND", path, done)


advertise("MULTIAPPEND")


def _store(conn, tag, r, uid_mode: bool):
    r.sp()
    seqset = r.sequence_set()
    r.sp()
    unchanged_since = None
    if r.peek() == 0x28:  # (UNCHANGEDSINCE n), RFC 7162 3.1.3
        r.expect(b"(")
        if r.atom().upper() != "UNCHANGEDSINCE":
            raise ParseError("Invalid store modifier")
        r.sp()
        unchanged_since = r.modseq(nonzero=False)
        r.expect(b")")
        r.sp()
    item = r.atom().upper()
    silent = item.endswith(".SILENT")
    mode = STORE_MODES.get(item[:-7] if silent else item)
    if mode is None:
        raise ParseError("Invalid STORE item")
    r.sp()
    flags = storable_flags(r.flags_arg())
    r.end()
    sel = conn.selected
    pairs = resolve(conn, seqset, uid_mode)
    if unchanged_since is not None:
        conn.enable_condstore()
    if sel.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    uids = [uid for _seq, uid in pairs if uid not in sel.pending_expunged]
    failed: set[int] = set()
    changed: set[int] = set()
    surprising: set[int] = set()
    if uids:
        before = {uid: sel.message(uid) for uid in uids}
        updated, failed_uids = sel.mailbox.store_if_unchanged(uids, flags, mode, unchanged_since)
        failed = set(failed_uids)
        sel.note_own_flags(updated)
        changed = {m.uid for m in updated if m.modseq != before[m.uid].modseq}
        surprising = {m.uid for m in updated if _unexpected(before[m.uid].flags, m.flags, flags, mode)}
    for seq, uid in pairs:
        if sel.message(uid) is None or uid in failed:
            continue
        # Once CONDSTORE is on, STORE's FETCH responses carry UID and MODSEQ (RFC 7162 3.1).
        uid_item = b"UID %d " % uid if uid_mode or sel.condstore else b""
        modseq = b" MODSEQ (%d)" % sel.modseq_of(uid) if sel.condstore else b""
        if not silent or uid in surprising:
            # .SILENT leaves out the client's own change, never another session's
            # (note_own_flags took it off the pending updates)
            conn.send(b"* %d FETCH (%sFLAGS %s%s)\r\n" % (seq, uid_item, sel.flags_response(uid), modseq))
        elif sel.condstore and uid in changed:
            # .SILENT leaves out FLAGS, not the new mod-sequence (RFC 7162 3.1.3)
            conn.send(b"* %d FETCH (%sMODSEQ (%d))\r\n" % (seq, uid_item, sel.modseq_of(uid)))
    if failed:
        numbers = sorted(failed) if uid_mode else sorted(seq for seq, uid in pairs if uid in failed)
        return Done("Conditional STORE failed", f"MODIFIED {uid_set_text(numbers)}")
    return Done("Store completed")


def _unexpected(told, now, flags, mode: str) -> bool:
    """Whether a message's flags after a STORE differ from what the client expects from
    the flags it was told and its own change (someone else changed them too, or a
    keyword could not be stored)."""
    have = {f.lower() for f in told}
    wanted = {f.lower() for f in flags}
    expected = have | wanted if mode == "add" else have - wanted if mode == "remove" else wanted
    return expected != {f.lower() for f in now}


@command("STORE", SELECTED, uses_seqs=True)
def store(conn, tag, r):
    return _store(conn, tag, r, uid_mode=False)


@command("UID STORE", SELECTED)
def uid_store(conn, tag, r):
    return _store(conn, tag, r, uid_mode=True)


def _copy_or_move(conn, tag, r, uid_mode: bool, move: bool):
    r.sp()
    seqset = r.sequence_set()
    r.sp()
    dest = mailbox_arg(conn, r)
    r.end()
    sel = conn.selected
    pairs = resolve(conn, seqset, uid_mode)
    if move and sel.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    if not conn.store.mailbox_exists(dest):
        raise No("Mailbox does not exist", "TRYCREATE")
    uids = [uid for _seq, uid in pairs]
    if not move:
        messages = [sel.message(uid) for uid in uids]
        check_quota(conn, sum(m.size for m in messages if m is not None), len(uids))
    sync = move or not conn.settings.defer_sync
    try:
        if not uids:
            mapping = []
        elif move:
            mapping = sel.mailbox.move(uids, dest)
        else:
            mapping = sel.mailbox.copy(uids, dest, sync)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "TRYCREATE") from None
    except QuotaExceeded:
        raise No("Quota exceeded", "OVERQUOTA") from None
    code = None
    if mapping:
        uidvalidity = conn.store.mailbox_state(dest).uidvalidity
        code = f"COPYUID {uidvalidity} {uid_set_text([s for s, _ in mapping])} {uid_set_text([d for _, d in mapping])}"
    if move:
        if code:
            conn.send(f"* OK [{code}] Moved\r\n".encode())
        sel.mark_expunged([s for s, _ in mapping])
        return Done("Move completed")
    done = Done("Copy completed", code)
    if sync or not mapping:
        return done
    return conn.durable_after(tag, "UID COPY" if uid_mode else "COPY", conn.store.mailbox_path(dest), done)


@command("COPY", SELECTED, uses_seqs=True)
def copy(conn, tag, r):
    return _copy_or_move(conn, tag, r, uid_mode=False, move=False)


@command("UID COPY", SELECTED)
def uid_copy(conn, tag, r):
    return _copy_or_move(conn, tag, r, uid_mode=True, move=False)


@command("MOVE", SELECTED, breaks_seqs=True)
def move(conn, tag, r):
    return _copy_or_move(conn, tag, r, uid_mode=False, move=True)


@command("UID MOVE", SELECTED, breaks_seqs=True)
def uid_move(conn, tag, r):
    return _copy_or_move(conn, tag, r, uid_mode=True, move=True)
