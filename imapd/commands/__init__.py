"""imapd.commands -- one module per group of IMAP commands, and what they share.

Each module registers its handlers with `imapd.protocol.command`, naming the states
a command is allowed in and its sequence-number flags (`imapd.session.CommandFlags`).
A handler reads its arguments from an `imapd.parser.Reader`, acts through
`common.storage`, sends untagged responses with `conn.send` and returns a `Done`
(or raises `No` / `Bad` / `ParseError`).

SECURITY: mailbox names from the client are decoded from modified UTF-7 and
validated by `common.storage` before use; a refused name gets a generic answer and
the reason goes to the log.
"""

from __future__ import annotations

from common.storage import InvalidMailboxName, decode_mutf7, encode_mutf7, validate_mailbox_name

from ..parser import Reader
from ..protocol import No
from ..response import astring


def decode_name(conn, raw: bytes, what: str = "mailbox") -> str:
    """A client's mailbox name (modified UTF-7 on the wire) as a checked Unicode name."""
    try:
        text = raw.decode("ascii")
        name = validate_mailbox_name(decode_mutf7(text))
    except (UnicodeDecodeError, ValueError, InvalidMailboxName) as e:
        conn.log.info("refused {what} name {name!r}: {reason}", what=what, name=raw[:200], reason=str(e),
                      session=conn.settings.session_id, user=conn.username)
        raise No("Invalid mailbox name", "CANNOT") from None
    return name


def mailbox_arg(conn, r: Reader) -> str:
    return decode_name(conn, r.astring())


def wire_name(name: str) -> bytes:
    """A Unicode mailbox name as the client sees it (modified UTF-7, quoted if needed)."""
    return astring(encode_mutf7(name))


def uid_set_text(uids) -> str:
    """Sorted numbers as a compact set: 1:3,7,9:10 (order kept for COPYUID pairs)."""
    out: list[str] = []
    run: list[int] = []
    for n in uids:
        if run and n == run[-1] + 1:
            run.append(n)
            continue
        if run:
            out.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}")
        run = [n]
    if run:
        out.append(str(run[0]) if len(run) == 1 else f"{run[0]}:{run[-1]}")
    return ",".join(out)
