"""imapd.commands.ext_sort -- SORT, THREAD and their UID forms (RFC 5256).

    SORT (criteria) charset search-program     -> * SORT 3 1 2
    THREAD algorithm charset search-program    -> * THREAD (1 2)(3)

The search program is the one of SEARCH (`imapd.commands.selected.matching`);
the ordering and threading are the pure functions of `imapd.sort` and
`imapd.thread`. Only the header of each message is read (at most HEADER_LIMIT
bytes), and the values are kept per selected mailbox (bounded) so that repeated
SORTs do not read the files again.

SECURITY: the criteria and algorithm are checked against fixed lists; charsets
other than UTF-8 and US-ASCII are refused with [BADCHARSET]; header content is
hostile and handled by `imapd.sort`.
"""

from __future__ import annotations

import weakref

from common.storage import StorageError

from .. import sort as sorting
from .. import thread as threading
from ..mime import parse_header_fields, split_header
from ..parser import ParseError
from ..protocol import SELECTED, Done, No, advertise, command
from ..search import CHARSETS, decoder_for
from .selected import matching

HEADER_LIMIT = 64 * 1024
HEADER_STEP = 4096
CACHE_LIMIT = 20000
_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _header_of(sel, uid: int) -> dict[str, bytes]:
    with sel.mailbox.open(uid) as f:
        data = f.read(HEADER_STEP)
        while len(data) < HEADER_LIMIT and b"\n\n" not in data and b"\n\r\n" not in data:
            more = f.read(HEADER_STEP)
            if not more:
                break
            data += more
    header, _body = split_header(data[:HEADER_LIMIT])
    first: dict[str, bytes] = {}
    for name, value, _raw in parse_header_fields(header):
        first.setdefault(name, value)
    return first


def sort_fields(conn, pairs) -> list[sorting.SortFields]:
    """SortFields of the (seq, uid) pairs; unreadable (expunged) messages are left out."""
    sel = conn.selected
    cache = _cache.setdefault(sel, {})
    out = []
    for seq, uid in pairs:
        f = cache.get(uid)
        if f is None:
            msg = sel.message(uid)
            if msg is None:
                continue
            try:
                header = _header_of(sel, uid)
            except StorageError as e:
                conn.log.debug("sort skipped UID {uid}: {error!r}", uid=uid, error=e)
                continue
            f = sorting.fields_of(0, uid, msg.internaldate, msg.vsize,
                                  lambda name, h=header: h.get(name.decode()))
            if len(cache) < CACHE_LIMIT:
                cache[uid] = f
        out.append(f if f.seq == seq else _with_seq(f, seq))
    return out


def _with_seq(f: sorting.SortFields, seq: int) -> sorting.SortFields:
    from dataclasses import replace
    return replace(f, seq=seq)


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
    items = sort_fields(conn, matching(conn, program))
    ordered = sorting.sort_messages(items, criteria)
    conn.send(b"* SORT" + b"".join(b" %d" % (f.uid if uid_mode else f.seq) for f in ordered) + b"\r\n")
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
