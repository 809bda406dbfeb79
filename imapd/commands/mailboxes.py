"""imapd.commands.mailboxes -- SELECT, EXAMINE, CREATE, DELETE, RENAME, SUBSCRIBE,
UNSUBSCRIBE, LIST, LSUB, STATUS, NAMESPACE (RFC 3501 6.3, RFC 2342, RFC 3348
CHILDREN, RFC 6154 SPECIAL-USE).

One personal namespace with no prefix and "." as the hierarchy separator, as
Dovecot's Maildir++ layout has it. RENAME of INBOX moves its messages to the new
name and leaves INBOX empty (RFC 3501 6.3.5); the storage layer does that.

SECURITY: every name is decoded and validated (`decode_name`) before the storage
sees it; failures answer generically, details go to the log.
"""

from __future__ import annotations

import re

from common.storage import MailboxExists, MailboxNotFound, decode_mutf7

from ..parser import ParseError
from ..protocol import AUTH, Done, No, advertise, command
from ..session import SelectedMailbox
from . import decode_name, mailbox_arg, wire_name

INBOX = "INBOX"
SEP = "."


def _select_params(conn, r) -> tuple[bool, tuple | None]:
    """[SP "(" select-param *(SP select-param) ")"]: CONDSTORE, and QRESYNC (uidvalidity
    modseq [known-uids [seq-match-data]]) once QRESYNC is enabled (RFC 7162 3.2.5)."""
    condstore = False
    qresync = None
    if r.at_end():
        return condstore, qresync
    r.sp()

    def param():
        nonlocal condstore, qresync
        name = r.atom().upper()
        if name == "CONDSTORE":
            condstore = True
        elif name == "QRESYNC":
            if "QRESYNC" not in conn.enabled:
                raise ParseError("QRESYNC is not enabled")
            r.sp()
            r.expect(b"(")
            uidvalidity = r.number(nonzero=True)
            r.sp()
            modseq = r.modseq()
            known = None
            if r.maybe(b" "):
                if r.peek() != 0x28:
                    known = r.sequence_set()
                    if not r.maybe(b" "):
                        r.expect(b")")
                        qresync = (uidvalidity, modseq, known)
                        return name
                # seq-match-data: a hint that only narrows VANISHED; not needed here
                r.expect(b"(")
                r.sequence_set()
                r.sp()
                r.sequence_set()
                r.expect(b")")
            r.expect(b")")
            qresync = (uidvalidity, modseq, known)
        else:
            raise ParseError("Unknown select parameter")
        return name

    r.paren_list(param, allow_empty=False)
    return condstore, qresync


def _open_selected(conn, tag, r, readonly: bool):
    r.sp()
    name = mailbox_arg(conn, r)
    condstore, qresync = _select_params(conn, r)
    r.end()
    if conn.selected is not None and "QRESYNC" in conn.enabled:
        conn.send(b"* OK [CLOSED] Previous mailbox closed\r\n")  # RFC 7162 3.2.11
    conn.select(None)  # a failed SELECT leaves no mailbox selected (RFC 3501 6.3.1)
    if condstore:
        conn.enable_condstore()
    try:
        box = conn.store.open_mailbox(name, readonly=readonly)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "NONEXISTENT") from None
    sel = SelectedMailbox(box, readonly)
    conn.select(sel)
    conn.send(b"* FLAGS " + sel.flag_names() + b"\r\n")
    conn.send(b"* %d EXISTS\r\n" % sel.exists())
    conn.send(b"* %d RECENT\r\n" % len(sel.recent))
    for seq, m in enumerate(box.messages, 1):
        if "\\Seen" not in m.flags:
            conn.send(b"* OK [UNSEEN %d] First unseen\r\n" % seq)
            break
    conn.send(b"* OK [PERMANENTFLAGS " + sel.permanent_flags() + b"] Flags permitted\r\n")
    conn.send(b"* OK [UIDVALIDITY %d] UIDs valid\r\n" % box.uidvalidity)
    conn.send(b"* OK [UIDNEXT %d] Predicted next UID\r\n" % box.uidnext)
    conn.send(b"* OK [HIGHESTMODSEQ %d] Highest mailbox mod-sequence\r\n" % box.highest_modseq)
    if qresync is not None and qresync[0] == box.uidvalidity:
        _resync(conn, sel, qresync[1], qresync[2])
    return Done("Select completed" if not readonly else "Examine completed",
                "READ-ONLY" if readonly else "READ-WRITE")


def _resync(conn, sel, modseq: int, known) -> None:
    """QRESYNC (RFC 7162 3.2.5.1): what vanished since `modseq` (of the UIDs the client
    knows), then the messages changed since."""
    conn.send(sel.vanished_response(modseq, known))
    for seq, uid in enumerate(sel.uids, 1):
        if sel.modseq_of(uid) > modseq:
            conn.send(sel.fetch_flags_line(seq, uid))


@command("SELECT", AUTH)
def select(conn, tag, r):
    return _open_selected(conn, tag, r, readonly=False)


@command("EXAMINE", AUTH)
def examine(conn, tag, r):
    return _open_selected(conn, tag, r, readonly=True)


@command("CREATE", AUTH)
def create(conn, tag, r):
    r.sp()
    raw = r.astring()
    r.end()
    if raw.endswith(SEP.encode()) and len(raw) > 1:
        raw = raw[:-1]  # "a.b." asks for a name that will have children: create "a.b"
    name = decode_name(conn, raw)
    if name == INBOX:
        raise No("INBOX always exists", "ALREADYEXISTS")
    try:
        conn.store.create_mailbox(name)
    except MailboxExists:
        raise No("Mailbox already exists", "ALREADYEXISTS") from None
    return Done("Create completed")


@command("DELETE", AUTH)
def delete(conn, tag, r):
    name = _one_name(conn, r)
    if name == INBOX:
        raise No("INBOX cannot be deleted", "CANNOT")
    if conn.selected is not None and conn.selected.name == name:
        raise No("Mailbox is selected", "INUSE")
    try:
        conn.store.delete_mailbox(name)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "NONEXISTENT") from None
    return Done("Delete completed")


@command("RENAME", AUTH)
def rename(conn, tag, r):
    r.sp()
    old = mailbox_arg(conn, r)
    r.sp()
    new = mailbox_arg(conn, r)
    r.end()
    if new == INBOX:
        raise No("Cannot rename to INBOX", "ALREADYEXISTS")
    if old == new:
        raise No("Names are the same", "ALREADYEXISTS")
    if old != INBOX and (new + SEP).startswith(old + SEP):
        raise No("Cannot rename a mailbox into itself", "CANNOT")
    if conn.selected is not None and (conn.selected.name == old or conn.selected.name.startswith(old + SEP)) and old != INBOX:
        raise No("Mailbox is selected", "INUSE")
    try:
        conn.store.rename_mailbox(old, new)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "NONEXISTENT") from None
    except MailboxExists:
        raise No("Target mailbox already exists", "ALREADYEXISTS") from None
    return Done("Rename completed")


def _one_name(conn, r) -> str:
    r.sp()
    name = mailbox_arg(conn, r)
    r.end()
    return name


@command("SUBSCRIBE", AUTH)
def subscribe(conn, tag, r):
    conn.store.subscribe(_one_name(conn, r))
    return Done("Subscribe completed")


@command("UNSUBSCRIBE", AUTH)
def unsubscribe(conn, tag, r):
    conn.store.unsubscribe(_one_name(conn, r))
    return Done("Unsubscribe completed")


@command("NAMESPACE", AUTH)
def namespace(conn, tag, r):
    r.end()
    conn.send(b'* NAMESPACE (("" ".")) NIL NIL\r\n')
    return Done("Namespace completed")


# ------------------------------------------------------------------ LIST / LSUB

def pattern_regex(pattern: str) -> re.Pattern:
    """A LIST pattern: `*` matches anything, `%` anything but the separator. A leading
    INBOX matches case-insensitively."""
    if pattern[:5].upper() == INBOX and (len(pattern) == 5 or pattern[5] in SEP + "*%"):
        pattern = INBOX + pattern[5:]
    out = []
    for ch in pattern[:1000]:
        if ch == "*":
            out.append(".*")
        elif ch == "%":
            out.append("[^.]*")
        else:
            out.append(re.escape(ch))
    return re.compile("".join(out) + r"\Z", re.S)


def _list_args(conn, r) -> tuple[str, str] | None:
    r.sp()
    ref = r.astring()
    r.sp()
    pattern = r.list_mailbox()
    r.end()
    try:
        ref_text = decode_mutf7(ref.decode("ascii"))
        pattern_text = decode_mutf7(pattern.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise No("Invalid mailbox name", "CANNOT") from None
    if any(ord(c) < 0x20 for c in ref_text + pattern_text):
        raise ParseError("Invalid mailbox pattern")
    return ref_text, pattern_text


def _with_parents(names) -> dict[str, bool]:
    """{name: exists} with every parent level of the names (parents may not exist)."""
    table: dict[str, bool] = {n: True for n in names}
    for n in list(table):
        parts = n.split(SEP)
        for i in range(1, len(parts)):
            table.setdefault(SEP.join(parts[:i]), False)
    return table


def _sorted(names):
    return sorted(names, key=lambda n: (n != INBOX, n))


@command("LIST", AUTH)
def list_(conn, tag, r):
    ref, pattern = _list_args(conn, r)
    if pattern == "":
        conn.send(b'* LIST (\\Noselect) "." ""\r\n')
        return Done("List completed")
    full = ref + pattern if not ref or ref.endswith(SEP) or not pattern else ref + pattern
    regex = pattern_regex(full)
    names = set(conn.store.list_mailboxes())
    names.add(INBOX)
    table = _with_parents(names)
    special = conn.store.special_use(names)
    children = {n.rsplit(SEP, 1)[0] for n in table if SEP in n}
    for name in _sorted(table):
        if not regex.match(name):
            continue
        attrs = []
        if not table[name]:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in children else "\\HasNoChildren")
        if name in special:
            attrs.append(special[name])
        conn.send(b"* LIST (" + " ".join(attrs).encode() + b') "." ' + wire_name(name) + b"\r\n")
    return Done("List completed")


@command("LSUB", AUTH)
def lsub(conn, tag, r):
    ref, pattern = _list_args(conn, r)
    if pattern == "":
        conn.send(b'* LSUB (\\Noselect) "." ""\r\n')
        return Done("Lsub completed")
    regex = pattern_regex(ref + pattern)
    subscribed = set(conn.store.subscriptions())
    shown: dict[str, bool] = {n: True for n in subscribed if regex.match(n)}
    if "%" in pattern:
        # A parent level the pattern matches, not itself subscribed but with subscribed
        # children, is listed \Noselect (RFC 3501 6.3.9).
        for n in subscribed:
            parts = n.split(SEP)
            for i in range(1, len(parts)):
                parent = SEP.join(parts[:i])
                if parent not in shown and regex.match(parent):
                    shown[parent] = False
    for name in _sorted(shown):
        attrs = "" if shown[name] else "\\Noselect"
        conn.send(b"* LSUB (" + attrs.encode() + b') "." ' + wire_name(name) + b"\r\n")
    return Done("Lsub completed")


# ------------------------------------------------------------------ STATUS

STATUS_ITEMS = ("MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "SIZE", "APPENDLIMIT", "HIGHESTMODSEQ")


def status_items(r) -> list[str]:
    items = [x.upper() for x in r.paren_list(r.atom, allow_empty=False)]
    for item in items:
        if item not in STATUS_ITEMS:
            raise ParseError("Invalid status item")
    return items


@command("STATUS", AUTH)
def status(conn, tag, r):
    r.sp()
    raw = r.astring()
    name = decode_name(conn, raw)
    r.sp()
    items = status_items(r)
    r.end()
    conn.send(status_response(conn, name, items))
    return Done("Status completed")


def status_response(conn, name: str, items: list[str]) -> bytes:
    """`* STATUS name (...)` for these items (MailboxNotFound answered NONEXISTENT).
    Counted from the mailbox's shared state: nothing is moved or taken (\\Recent)."""
    if "HIGHESTMODSEQ" in items:
        conn.enable_condstore()  # RFC 7162 3.1: a CONDSTORE enabling command
    try:
        state = conn.store.mailbox_state(name)
    except MailboxNotFound:
        raise No("Mailbox does not exist", "NONEXISTENT") from None
    selected_here = conn.selected is not None and conn.selected.name == name
    values = {
        "MESSAGES": lambda: len(state.by_uid),
        "RECENT": lambda: len(conn.selected.recent) if selected_here else state.recent_count(),
        "UIDNEXT": lambda: state.next_uid,
        "UIDVALIDITY": lambda: state.uidvalidity,
        "UNSEEN": state.unseen_count,
        "SIZE": state.total_vsize,                                      # RFC 8438
        "APPENDLIMIT": lambda: conn.settings.limits.max_literal,        # RFC 7889
        "HIGHESTMODSEQ": lambda: state.highest_modseq,                  # RFC 7162
    }
    body = " ".join(f"{item} {values[item]()}" for item in items)
    return b"* STATUS " + wire_name(name) + b" (" + body.encode() + b")\r\n"


advertise("STATUS=SIZE")
