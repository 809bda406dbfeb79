"""imapd.commands.selected -- CHECK, CLOSE, UNSELECT, EXPUNGE, UID EXPUNGE, SEARCH and
UID SEARCH (RFC 3501 6.4, RFC 3691, RFC 4315).

SECURITY: the search program is bounded by the parser; only UTF-8 and US-ASCII
are accepted as CHARSET.
"""

from __future__ import annotations

from .. import esearch
from ..parser import ParseError
from ..protocol import SELECTED, Done, No, advertise, command
from ..search import CHARSETS, Candidate, Evaluator, decoder_for
from ..session import BadSequence


@command("CHECK", SELECTED)
def check(conn, tag, r):
    r.end()
    return Done("Check completed")


@command("CLOSE", SELECTED)
def close(conn, tag, r):
    r.end()
    sel = conn.selected
    if not sel.readonly:
        try:
            sel.mailbox.expunge()
        except Exception as e:  # noqa: BLE001 -- CLOSE still closes (RFC 3501 6.4.2)
            conn.log.warn("expunge on CLOSE failed: {error!r}", error=e, session=conn.settings.session_id)
    conn.select(None)
    return Done("Close completed")


@command("UNSELECT", SELECTED)
def unselect(conn, tag, r):
    r.end()
    conn.select(None)
    return Done("Unselect completed")


def _expunge(conn, uids):
    sel = conn.selected
    if sel.readonly:
        raise No("Mailbox is read-only", "READ-ONLY")
    gone = sel.mailbox.expunge(uids)
    sel.mark_expunged(gone)
    if sel.qresync:
        # RFC 7162 3.2.10: the mailbox's mod-sequence after the expunge; every change
        # up to it is sent before the tagged reply (protocol.finish).
        return Done("Expunge completed", f"HIGHESTMODSEQ {sel.mailbox.highest_modseq}")
    return Done("Expunge completed")


@command("EXPUNGE", SELECTED, breaks_seqs=True)
def expunge(conn, tag, r):
    r.end()
    return _expunge(conn, None)


@command("UID EXPUNGE", SELECTED, breaks_seqs=True)
def uid_expunge(conn, tag, r):
    r.sp()
    seqset = r.sequence_set()
    r.end()
    uids = [uid for _seq, uid in conn.selected.resolve(seqset, uid_mode=True)]
    return _expunge(conn, uids)


def resolve(conn, seqset, uid_mode: bool):
    try:
        return conn.selected.resolve(seqset, uid_mode)
    except BadSequence as e:
        raise ParseError(str(e)) from None


def _search(conn, tag, r, uid_mode: bool):
    r.sp()
    options = esearch.return_options(r)
    save = r.pos
    charset = "UTF-8"  # RFC 3501 says US-ASCII; UTF-8 is its superset and what 8-bit input means in practice
    word = r._take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))
    if word.upper() == b"CHARSET":
        r.sp()
        charset = r.astring().decode("ascii", "replace")
        r.sp()
    else:
        r.pos = save
    decode = decoder_for(charset)
    if decode is None:
        raise No("Unsupported charset", "BADCHARSET (" + " ".join(CHARSETS) + ")")
    program = r.search_program(decode)
    pairs = matching(conn, program)
    found = [uid if uid_mode else seq for seq, uid in pairs]
    modseq = result_modseq(conn, program, pairs)
    if options is not None:
        conn.send(esearch.response(tag, uid_mode, found, options, modseq))
        return Done("Search completed")
    tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
    conn.send(b"* SEARCH" + b"".join(b" %d" % n for n in found) + tail + b"\r\n")
    return Done("Search completed")


def uses_modseq(key) -> bool:
    """Whether a search program has a MODSEQ key (RFC 7162 3.1.5)."""
    if key.op == "MODSEQ":
        return True
    return any(uses_modseq(k) for k in key.args if hasattr(k, "op"))


def result_modseq(conn, program, pairs) -> int | None:
    """The highest mod-sequence of the matches when the program has a MODSEQ key (and
    so enables CONDSTORE); None otherwise or when nothing matched."""
    if not uses_modseq(program):
        return None
    conn.enable_condstore()
    if not pairs:
        return None
    sel = conn.selected
    return max(sel.modseq_of(uid) for _seq, uid in pairs)


# Keys that need no message content: evaluated first inside AND, so content is read
# only for the messages that pass them.
_CHEAP = frozenset({"ALL", "FLAG", "SEQ", "UID", "NEW", "OLD", "RECENT", "MODSEQ", "LARGER", "SMALLER",
                    "BEFORE", "ON", "SINCE"})


def _cheap_first(key):
    if key.op != "AND":
        return key if key.op not in ("NOT", "OR") else type(key)(key.op, tuple(_cheap_first(k) for k in key.args))
    args = tuple(_cheap_first(k) for k in key.args)
    return type(key)("AND", tuple(sorted(args, key=lambda k: k.op not in _CHEAP)))


def matching(conn, program) -> list[tuple[int, int]]:
    """(seq, uid) of the selected mailbox's messages the search program matches."""
    sel = conn.selected
    evaluator = Evaluator(sel.exists(), sel.uids[-1] if sel.uids else 0)
    program = _cheap_first(program)
    found = []
    recent = sel.recent
    for seq, uid in enumerate(list(sel.uids), 1):
        msg = sel.message(uid)
        if msg is None:
            continue
        candidate = Candidate(seq, uid, msg.flags, uid in recent, msg.internaldate,
                              size=lambda msg=msg: msg.vsize, load=lambda uid=uid: sel.load(uid),
                              modseq=msg.modseq)
        try:
            if evaluator.matches(program, candidate):
                found.append((seq, uid))
        except Exception as e:  # noqa: BLE001 -- an unreadable (expunged) message just does not match
            conn.log.debug("search skipped UID {uid}: {error!r}", uid=uid, error=e)
    return found


@command("SEARCH", SELECTED, uses_seqs=True)
def search(conn, tag, r):
    return _search(conn, tag, r, uid_mode=False)


@command("UID SEARCH", SELECTED)
def uid_search(conn, tag, r):
    return _search(conn, tag, r, uid_mode=True)


advertise("ESEARCH")
