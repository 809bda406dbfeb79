"""imapd.esearch -- ESEARCH (RFC 4731): SEARCH RETURN (MIN MAX ALL COUNT).

`return_options` reads the optional `RETURN (...)` that may open a SEARCH or UID
SEARCH; `response` writes the `* ESEARCH (TAG "t") [UID] ...` answer. No I/O.

    RETURN ()          means RETURN (ALL)
    no match           only COUNT 0 is given (MIN, MAX and ALL are left out)
    ALL                a compact sequence set (1:3,7)

SECURITY: the options come from the client: only the four known names are
accepted, each at most once, in a list bounded by the parser.
"""

from __future__ import annotations

from .parser import ParseError, Reader
from .response import string

OPTIONS = ("MIN", "MAX", "ALL", "COUNT")


def return_options(r: Reader) -> frozenset[str] | None:
    """The RETURN options at the reader's position (consumed with the space after
    them), or None when the search has none."""
    if not r.maybe(b"RETURN "):
        return None
    names = [n.upper() for n in r.paren_list(r.atom)]
    if any(n not in OPTIONS for n in names):
        raise ParseError("Unknown search return option")
    if len(set(names)) != len(names):
        raise ParseError("Search return option given twice")
    r.sp()
    return frozenset(names) or frozenset({"ALL"})


def response(tag: bytes, uid_mode: bool, found: list[int], options: frozenset[str],
             modseq: int | None = None) -> bytes:
    """The untagged ESEARCH for these (ascending) numbers; `modseq` is the highest
    mod-sequence of the matches when the search had a MODSEQ key (RFC 7162 3.1.5)."""
    from .commands import uid_set_text  # imapd.commands imports the protocol, which imports us
    out = [b"* ESEARCH (TAG " + string(tag) + b")"]
    if uid_mode:
        out.append(b"UID")
    if found:
        if "MIN" in options:
            out.append(b"MIN %d" % found[0])
        if "MAX" in options:
            out.append(b"MAX %d" % found[-1])
    if "COUNT" in options:
        out.append(b"COUNT %d" % len(found))
    if found and "ALL" in options:
        out.append(b"ALL " + uid_set_text(found).encode())
    if modseq is not None:
        out.append(b"MODSEQ %d" % modseq)
    return b" ".join(out) + b"\r\n"
