"""imapd.commands.fetch -- FETCH and UID FETCH (RFC 3501 6.4.5, 7.4.2; RFC 7162).

Every data item: FLAGS, INTERNALDATE, RFC822.SIZE, ENVELOPE, BODY, BODYSTRUCTURE,
BODY[section]<partial>, BODY.PEEK, RFC822, RFC822.HEADER, RFC822.TEXT, UID, MODSEQ,
and the ALL / FAST / FULL macros; the modifiers CHANGEDSINCE and (UID FETCH with
QRESYNC) VANISHED. Fetching a body without .PEEK sets \\Seen (not in a read-only
mailbox) and reports the new FLAGS in the same response. A fetch of only UID,
FLAGS and MODSEQ is answered from the session's view without touching a file.

A message another session expunged but whose EXPUNGE this client has not been
sent yet cannot be read any more: it is left out and the reply is
NO [EXPUNGEISSUED], as Dovecot answers.

SECURITY: message content is hostile; `imapd.fetch` and `imapd.mime` bound the
work and never raise on content.
"""

from __future__ import annotations

from common.storage import StorageError

from .. import fetch as items
from .. import summary
from ..parser import FetchAtt, ParseError
from ..protocol import SELECTED, Done, advertise, command
from ..response import date_time, literal
from .selected import resolve

SETS_SEEN = {"BODY", "RFC822", "RFC822.TEXT"}


def _renderer(sel, att: FetchAtt):
    """The function (uid, msg) -> bytes that renders `att` of a message: chosen once
    per command, not once per message and item."""
    name = att.name
    if name == "UID":
        return lambda uid, msg: b"UID %d" % uid
    if name == "FLAGS":
        flags = sel.flags_response
        return lambda uid, msg: b"FLAGS " + flags(uid)
    if name == "MODSEQ":
        return lambda uid, msg: b"MODSEQ (%d)" % msg.modseq
    if name == "INTERNALDATE":
        return lambda uid, msg: b"INTERNALDATE " + date_time(msg.internaldate)
    if name == "RFC822.SIZE":
        return lambda uid, msg: b"RFC822.SIZE %d" % msg.vsize
    # Envelope and structure come from the mailbox's cache when it has them.
    if name == "ENVELOPE":
        return summary.renderer(sel, name, b"ENVELOPE ",
                                lambda uid: items.envelope(summary.header_fields(sel, uid)))
    if name == "BODYSTRUCTURE":
        return summary.renderer(sel, name, b"BODYSTRUCTURE ",
                                lambda uid: items.body_structure(summary.structure(sel, uid), extensible=True))
    if name == "BODY" and att.section is None:
        return summary.renderer(sel, name, b"BODY ",
                                lambda uid: items.body_structure(summary.structure(sel, uid), extensible=False))
    return lambda uid, msg: _render_content(sel, uid, att)


def _render_content(sel, uid: int, att: FetchAtt) -> bytes:
    """Items of the message's octets: BODY[section]<partial>, RFC822, RFC822.HEADER, RFC822.TEXT."""
    name = att.name
    section = att.section
    if name == "RFC822.HEADER" or (section is not None and not section.part
                                   and section.text in ("HEADER", "HEADER.FIELDS", "HEADER.FIELDS.NOT")):
        # the top-level header alone: not the body, no MIME parse
        top = summary.top_header(sel, uid)
        if name == "RFC822.HEADER":
            return b"RFC822.HEADER " + literal(top.header)
        whole = top.header if section.text == "HEADER" else \
            top.header_fields(section.fields, negate=section.text == "HEADER.FIELDS.NOT")
    else:
        loaded = sel.load(uid)
        if name == "RFC822":
            return b"RFC822 " + literal(loaded.data)
        if name == "RFC822.TEXT":
            return b"RFC822.TEXT " + literal(loaded.header_and_body()[1])
        # BODY[section]<partial> and BODY.PEEK[...]
        if not section.part and not section.text:
            whole = loaded.data  # BODY[]: the whole message, no MIME parse needed
        elif not section.part and section.text == "TEXT":
            whole = loaded.header_and_body()[1]  # no MIME parse needed
        else:
            whole = items.section_bytes(loaded.tree, section)
    data = items.partial(whole, att.partial)
    label = b"BODY[" + str(att.section).encode() + b"]"
    if att.partial is not None:
        label += b"<%d>" % att.partial[0]
    return label + b" " + literal(data)


def _modifiers(conn, r, uid_mode: bool) -> tuple[int | None, bool]:
    """[SP "(" fetch-modifier *(SP fetch-modifier) ")"]: CHANGEDSINCE n and, on UID
    FETCH with QRESYNC enabled, VANISHED (RFC 7162 3.1.4, 3.2.6)."""
    changed_since = None
    vanished = False
    if r.at_end():
        return changed_since, vanished
    r.sp()

    def modifier():
        nonlocal changed_since, vanished
        name = r.atom().upper()
        if name == "CHANGEDSINCE" and changed_since is None:
            r.sp()
            changed_since = r.modseq(nonzero=False)
        elif name == "VANISHED" and not vanished and uid_mode and "QRESYNC" in conn.enabled:
            vanished = True
        else:
            raise ParseError("Invalid fetch modifier")
        return name

    r.paren_list(modifier, allow_empty=False)
    if vanished and changed_since is None:
        raise ParseError("VANISHED needs CHANGEDSINCE")
    return changed_since, vanished


#: Items answered from the session's view alone (no message file is read).
_VIEW_ITEMS = frozenset({"UID", "FLAGS", "MODSEQ"})


def _fetch(conn, tag, r, uid_mode: bool):
    r.sp()
    seqset = r.sequence_set()
    r.sp()
    atts = r.fetch_atts()
    changed_since, vanished = _modifiers(conn, r, uid_mode)
    r.end()
    sel = conn.selected
    pairs = resolve(conn, seqset, uid_mode)
    names = {a.name for a in atts}
    if uid_mode and "UID" not in names:
        atts = [FetchAtt("UID"), *atts]
        names.add("UID")
    if changed_since is not None or "MODSEQ" in names:
        conn.enable_condstore()
    if changed_since is not None:
        if "MODSEQ" not in names:
            atts = [*atts, FetchAtt("MODSEQ")]
            names.add("MODSEQ")
        if vanished:
            conn.send(sel.vanished_response(changed_since, seqset))
        pairs = [(seq, uid) for seq, uid in pairs if sel.modseq_of(uid) > changed_since]
    if names <= _VIEW_ITEMS:
        conn.send(b"".join(_view_lines(sel, pairs, atts)))
        return Done("Fetch completed")
    wants_flags = "FLAGS" in names
    sets_seen = not sel.readonly and not names.isdisjoint(SETS_SEEN) and \
        any(a.name in SETS_SEEN and (a.name != "BODY" or a.section is not None) for a in atts)
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
    renderers = [_renderer(sel, att) for att in atts]
    known = sel.known
    out = []
    for seq, uid in pairs:
        msg = known.get(uid)
        if msg is None:
            missing = True
            continue
        try:
            parts = [render(uid, msg) for render in renderers]
        except StorageError as e:
            conn.log.debug("fetch skipped UID {uid}: {error!r}", uid=uid, error=e)
            missing = True
            continue
        if uid in seen_now:
            if not wants_flags:
                parts.append(b"FLAGS " + sel.flags_response(uid))
            # an implicit \Seen once CONDSTORE is on: UID and MODSEQ too (RFC 7162 3.1)
            if sel.condstore and "MODSEQ" not in names:
                parts.append(b"MODSEQ (%d)" % sel.modseq_of(uid))
            if sel.condstore and "UID" not in names:
                parts.insert(0, b"UID %d" % uid)
        out.append(b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n")
    if out:
        conn.send(b"".join(out))
    if missing:
        return Done("Some messages were expunged", "EXPUNGEISSUED", status="NO")
    return Done("Fetch completed")


def _view_lines(sel, pairs, atts):
    """FETCH responses of UID / FLAGS / MODSEQ only (a client's flag resync of a
    whole mailbox): no file is touched, each distinct flag set is rendered once."""
    names = [a.name for a in atts]
    known = sel.known
    flags = sel.flags_response
    if names == ["UID", "FLAGS"]:
        for seq, uid in pairs:
            if uid in known:
                yield b"* %d FETCH (UID %d FLAGS %s)\r\n" % (seq, uid, flags(uid))
        return
    for seq, uid in pairs:
        msg = known.get(uid)
        if msg is None:
            continue
        parts = [b"UID %d" % uid if n == "UID" else b"FLAGS " + flags(uid) if n == "FLAGS"
                 else b"MODSEQ (%d)" % msg.modseq for n in names]
        yield b"* %d FETCH (" % seq + b" ".join(parts) + b")\r\n"


@command("FETCH", SELECTED, uses_seqs=True)
def fetch(conn, tag, r):
    return _fetch(conn, tag, r, uid_mode=False)


@command("UID FETCH", SELECTED)
def uid_fetch(conn, tag, r):
    return _fetch(conn, tag, r, uid_mode=True)


advertise("CONDSTORE", "QRESYNC")
