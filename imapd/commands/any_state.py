"""imapd.commands.any_state -- CAPABILITY, NOOP, LOGOUT, ID, ENABLE (RFC 3501 6.1,
RFC 2971, RFC 5161; ENABLE CONDSTORE and QRESYNC, RFC 7162).

SECURITY: ID parameters from the client are parsed with bounds and only logged
shortened; nothing in our ID answer reveals a version.
"""

from __future__ import annotations

from ..parser import ParseError
from ..protocol import ANY, Done, State, command
from ..response import string

AUTHENTICATED = frozenset({State.AUTHENTICATED})  # RFC 5161: not in the selected state

MAX_ID_PAIRS = 30


@command("CAPABILITY", ANY)
def capability(conn, tag, r):
    r.end()
    conn.send(("* CAPABILITY " + " ".join(conn.capabilities()) + "\r\n").encode())
    return Done("Capability completed")


@command("NOOP", ANY)
def noop(conn, tag, r):
    r.end()
    return Done("NOOP completed")


@command("LOGOUT", ANY)
def logout(conn, tag, r):
    r.end()
    conn.logout()
    return Done("Logout completed")


@command("ID", ANY)
def id_(conn, tag, r):
    r.sp()
    if not r.maybe(b"NIL"):
        items = r.paren_list(r.nstring)
        if len(items) % 2 or len(items) > 2 * MAX_ID_PAIRS:
            raise ParseError("Invalid ID parameters")
        fields = {(k or b"").decode("utf-8", "replace")[:30]: (v or b"").decode("utf-8", "replace")[:80]
                  for k, v in zip(items[::2], items[1::2])}
        conn.log.info("client id {fields}", fields=fields, session=conn.settings.session_id)
    r.end()
    conn.send(b"* ID (" + string("name") + b" " + string("postroom") + b")\r\n")
    return Done("ID completed")


#: Extensions ENABLE can turn on (RFC 7162: QRESYNC implies CONDSTORE).
ENABLEABLE: frozenset[str] = frozenset({"CONDSTORE", "QRESYNC"})


@command("ENABLE", AUTHENTICATED)
def enable(conn, tag, r):
    names = []
    while not r.at_end():
        r.sp()
        names.append(r.atom().upper())
        if len(names) > 50:
            raise ParseError("Too many extensions")
    if not names:
        raise ParseError("Missing argument")
    newly = list(dict.fromkeys(n for n in names if n in ENABLEABLE and n not in conn.enabled))
    if newly:
        conn.enable_condstore()
        conn.enabled.update(newly)
    conn.send(("* ENABLED" + "".join(" " + n for n in newly) + "\r\n").encode())
    return Done("Enabled")
