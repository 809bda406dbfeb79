"""imapd.commands.ext_sort -- SORT, THREAD and their UID forms (RFC 5256).

    SORT (criteria) charset search-program     -> * SORT 3 1 2
    THREAD algorithm charset search-program    -> * THREAD (1 2)(3)

The search program is the one of SEARCH (`imapd.commands.selected.matching`);
the ordering and threading are the pure functions of `imapd.sort` and
`imapd.thread`. The header fields come from `imapd.summary` (the mailbox's cache,
else the header alone is read), and are also kept per selected mailbox (bounded)
so that repeated SORTs do not even look them up again.

SECURITY: the criteria and algorithm are checked against fixed lists; charsets
other than UTF-8 and US-ASCII are refused with [BADCHARSET]; header content is
hostile and handled by `imapd.sort`.
"""

from __future__ import annotations

import weakref

from common.storage import StorageError

from .. import sort as sorting
from .. import summary
from .. import thread as threading
from ..parser import ParseError
from ..protocol import SELECTED, Done, No, advertise, command
from ..search import CHARSETS, decoder_for
from .selected import matching, result_modseq

CACHE_LIMIT = 20000
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def sort_fields(conn, pairs, wanted=sorting.FIELD_GROUPS) -> list[sorting.SortFields]:
    """SortFields of the (seq, uid) pairs; unreadable (expunged) messages are left
    out. The few header values needed are kept per selected mailbox (bounded)."""
    sel = conn.selected
    cache = _cache.setdefault(sel, {})
    out = []
    for seq, uid in pairs:
        header = cache.get(uid)
        msg = sel.message(uid)
        if msg is None:
            continue
        if header is None:
            try:
                header = summary.header_fields(sel, uid)
            except StorageError as e:
                conn.log.debug("sort skipped UID {uid}: {error!r}", uid=uid, error=e)
                continue
            if len(cache) < CACHE_LIMIT:
                cache[uid] = header
        out.append(sorting.fields_of(seq, uid, msg.internaldate, msg.vsize, header.get, wanted))
    return out


def _charset_and_program(r):
    r.sp()
    charset = r.astring().decode("ascii", "replace")
    decode = decoder_for(charset)
    if decode is None:
        raise No("Unsupported charset", "BADCHARSET (" + " ".join(CHARSETS) + ")")
    r.sp()
    return r.search_program(decode)


def _sort(conn, tag, r, uid_mode: bool):
    r.sp()
    criteria = sorting.parse_criteria(r)
    program = _charset_and_program(r)
    pairs = matching(conn, program)
    items = sort_fields(conn, pairs, {key for key, _reverse in criteria})
    ordered = sorting.sort_messages(items, criteria)
    modseq = result_modseq(conn, program, pairs)
    tail = b" (MODSEQ %d)" % modseq if modseq is not None else b""
    conn.send(b"* SORT" + b"".join(b" %d" % (f.uid if uid_mode else f.seq) for f in ordered) + tail + b"\r\n")
    return Done("Sort completed")


def _thread(conn, tag, r, uid_mode: bool):
    r.sp()
    algorithm = r.atom().upper()
    if algorithm not in threading.ALGORITHMS:
        raise ParseError("Unknown threading algorithm")
    program = _charset_and_program(r)
    items = sort_fields(conn, matching(conn, program))
    roots = threading.thread(algorithm, items)
    conn.send(b"* THREAD" + (b" " if roots else b"") + threading.render(roots, uid=uid_mode) + b"\r\n")
    return Done("Thread completed")


@command("SORT", SELECTED, uses_seqs=True)
def sort(conn, tag, r):
    return _sort(conn, tag, r, uid_mode=False)


@command("UID SORT", SELECTED)
def uid_sort(conn, tag, r):
    return _sort(conn, tag, r, uid_mode=True)


@command("THREAD", SELECTED, uses_seqs=True)
def thread(conn, tag, r):
    return _thread(conn, tag, r, uid_mode=False)


@command("UID THREAD", SELECTED)
def uid_thread(conn, tag, r):
    return _thread(conn, tag, r, uid_mode=True)


advertise("SORT", "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES")
