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
    found = [uid if uid_mode else seq for seq, uid in matching(conn, program)]
    if options is not None:
        conn.send(esearch.response(tag, uid_mode, found, options))
        return Done("Search completed")
    conn.send(b"* SEARCH" + b"".join(b" %d" % n for n in found) + b"\r\n")
    return Done("Search completed")


def matching(conn, program) -> list[tuple[int, int]]:
    """(seq, uid) of the selected mailbox's messages the search program matches."""
    sel = conn.selected
    evaluator = Evaluator(sel.exists(), sel.uids[-1] if sel.uids else 0)
    found = []
    for seq, uid in enumerate(list(sel.uids), 1):
        msg = sel.message(uid)
        if msg is None:
            continue
        candidate = Candidate(seq, uid, msg.flags, uid in sel.recent, msg.internaldate,
                              size=lambda msg=msg: msg.vsize, load=lambda uid=uid: sel.load(uid))
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
