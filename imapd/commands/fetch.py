"""imapd.commands.fetch -- FETCH and UID FETCH (RFC 3501 6.4.5, 7.4.2).

Every data item: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE,
BODY[section]<partial>, BODY.PEEK, RFC822, RFC822.HEADER, RFC822.TEXT, UID, and the
ALL / FAST / FULL macros. Fetching a body without .PEEK sets \\Seen (not in a
read-only mailbox) and reports the new FLAGS in the same response.

A message another session expunged but whose EXPUNGE this client has not been
sent yet cannot be read any more: it is left out and the reply is
NO [EXPUNGEISSUED], as Dovecot answers.

SECURITY: message content is hostile; `imapd.fetch` and `imapd.mime` bound the
work and never raise on content.
"""

from __future__ import annotations

from common.storage import StorageError

from .. import fetch as items
from ..parser import FetchAtt
from ..protocol import SELECTED, Done, command
from ..response import date_time, literal
from .selected import resolve

SETS_SEEN = {"BODY", "RFC822", "RFC822.TEXT"}


def _render(conn, sel, uid: int, att: FetchAtt) -> bytes:
    msg = sel.message(uid)
    name = att.name
    if name == "UID":
        return b"UID %d" % uid
    if name == "FLAGS":
        return b"FLAGS " + sel.flags_response(uid)
    if name == "INTERNALDATE":
        return b"INTERNALDATE " + date_time(msg.internaldate)
    if name == "RFC822.SIZE":
        return b"RFC822.SIZE %d" % msg.vsize
    loaded = sel.load(uid)
    if name == "ENVELOPE":
        return b"ENVELOPE " + items.envelope(loaded.tree)
    if name == "BODYSTRUCTURE":
        return b"BODYSTRUCTURE " + items.body_structure(loaded.tree, extensible=True)
    if name == "BODY" and att.section is None:
        return b"BODY " + items.body_structure(loaded.tree, extensible=False)
    if name == "RFC822":
        return b"RFC822 " + literal(loaded.data)
    if name == "RFC822.HEADER":
        return b"RFC822.HEADER " + literal(loaded.tree.header)
    if name == "RFC822.TEXT":
        return b"RFC822.TEXT " + literal(loaded.tree.body)
    # BODY[section]<partial> and BODY.PEEK[...]
    data = items.partial(items.section_bytes(loaded.tree, att.section), att.partial)
    label = b"BODY[" + str(att.section).encode() + b"]"
    if att.partial is not None:
        label += b"<%d>" % att.partial[0]
    return label + b" " + literal(data)


def _fetch(conn, tag, r, uid_mode: bool):
    r.sp()
    seqset = r.sequence_set()
    r.sp()
    atts = r.fetch_atts()
    r.end()
    sel = conn.selected
    pairs = resolve(conn, seqset, uid_mode)
    if uid_mode and not any(a.name == "UID" for a in atts):
        atts = [FetchAtt("UID"), *atts]
    wants_flags = any(a.name == "FLAGS" for a in atts)
    sets_seen = not sel.readonly and any(a.name in SETS_SEEN and (a.name != "BODY" or a.section is not None)
                                         for a in atts)
    seen_now: set[int] = set()
    if sets_seen:
        unseen = [uid for _seq, uid in pairs
                  if uid not in sel.pending_expunged and sel.message(uid) is not None
                  and "\\Seen" not in sel.message(uid).flags]
        if unseen:
            updated = sel.mailbox.store(unseen, ["\\Seen"], "add")
            sel.note_own_flags(updated)
            seen_now = {m.uid for m in updated}
    missing = False
    for seq, uid in pairs:
        if sel.message(uid) is None:
            missing = True
            continue
        try:
            parts = [_render(conn, sel, uid, att) for att in atts]
        except StorageError as e:
            conn.log.debug("fetch skipped UID {uid}: {error!r}", uid=uid, error=e)
            missing = True
            continue
        if uid in seen_now and not wants_flags:
            parts.append(b"FLAGS " + sel.flags_response(uid))
        conn.send(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
    if missing:
        return Done("Some messages were expunged", "EXPUNGEISSUED", status="NO")
    return Done("Fetch completed")


@command("FETCH", SELECTED, uses_seqs=True)
def fetch(conn, tag, r):
    return _fetch(conn, tag, r, uid_mode=False)


@command("UID FETCH", SELECTED)
def uid_fetch(conn, tag, r):
    return _fetch(conn, tag, r, uid_mode=True)
