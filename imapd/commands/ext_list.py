"""imapd.commands.ext_list -- LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819).

    LIST (SUBSCRIBED RECURSIVEMATCH) "" (INBOX "Work.*") RETURN (CHILDREN STATUS (MESSAGES SIZE))

Selection options: SUBSCRIBED (subscribed names only, including ones that no
longer exist, marked \\NonExistent), SPECIAL-USE (RFC 6154), REMOTE (no remote
mailboxes here: no effect), RECURSIVEMATCH (with SUBSCRIBED: parents that match
the pattern and have subscribed children are listed with CHILDINFO). Return
options: SUBSCRIBED, CHILDREN (always given anyway), SPECIAL-USE (idem) and
STATUS, which sends a `* STATUS` after each selectable mailbox's LIST line.
Several patterns are allowed. A command in the basic RFC 3501 form is answered
by `imapd.commands.mailboxes.list_` unchanged.

SECURITY: options are checked against fixed lists; patterns are decoded and
compiled by the base LIST's helpers (bounded length); STATUS goes through the
base STATUS code, so names are validated by the storage as there.
"""

from __future__ import annotations

from common.storage import MailboxNotFound, StorageError, decode_mutf7

from ..parser import ParseError
from ..protocol import AUTH, Done, No, advertise, command
from . import mailboxes, wire_name
from .mailboxes import INBOX, SEP, pattern_regex, status_items, status_response

SELECT_OPTIONS = ("SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE")
RETURN_OPTIONS = ("SUBSCRIBED", "CHILDREN", "SPECIAL-USE", "STATUS")
MAX_PATTERNS = 100


def _text(conn, raw: bytes) -> str:
    try:
        text = decode_mutf7(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise No("Invalid mailbox name", "CANNOT") from None
    if any(ord(c) < 0x20 for c in text):
        raise ParseError("Invalid mailbox pattern")
    return text


def _return_option(r):
    name = r.atom().upper()
    if name not in RETURN_OPTIONS:
        raise ParseError("Unknown LIST return option")
    if name == "STATUS":
        r.sp()
        return (name, status_items(r))
    return (name, None)


def parse_extended(r):
    """(select options, reference, patterns, return options, status items), or None
    when the command is in the basic form."""
    select: set[str] | None = None
    if r.peek() == 0x28:
        select = {x.upper() for x in r.paren_list(r.atom)}
        if select - set(SELECT_OPTIONS):
            raise ParseError("Unknown LIST selection option")
        if "RECURSIVEMATCH" in select and not select - {"RECURSIVEMATCH", "REMOTE"}:
            raise ParseError("RECURSIVEMATCH needs another selection option")
        r.sp()
    ref = r.astring()
    r.sp()
    pattern_list = r.peek() == 0x28
    if pattern_list:
        patterns = r.paren_list(r.list_mailbox, allow_empty=False)
        if len(patterns) > MAX_PATTERNS:
            raise ParseError("Too many patterns")
    else:
        patterns = [r.list_mailbox()]
    returns: dict[str, list | None] | None = None
    if not r.at_end():
        r.sp()
        r.expect(b"RETURN")
        r.sp()
        returns = dict(r.paren_list(lambda: _return_option(r)))
    r.end()
    if select is None and returns is None and not pattern_list:
        return None
    return select or set(), ref, patterns, returns or {}


@command("LIST", AUTH)
def list_extended(conn, tag, r):
    start = r.pos
    r.sp()
    parsed = parse_extended(r)
    if parsed is None:
        r.pos = start
        return mailboxes.list_(conn, tag, r)
    select, ref_raw, patterns_raw, returns = parsed
    ref = _text(conn, ref_raw)
    regexes = [pattern_regex(ref + _text(conn, p)) for p in patterns_raw]

    def matches(name: str) -> bool:
        return any(rx.match(name) for rx in regexes)

    existing = set(conn.store.list_mailboxes()) | {INBOX}
    subscribed = set(conn.store.subscriptions())
    special = conn.store.special_use(existing)
    levels: set[str] = set(existing)           # names plus their parent levels
    for n in existing:
        parts = n.split(SEP)
        levels.update(SEP.join(parts[:i]) for i in range(1, len(parts)))
    parents = {n.rsplit(SEP, 1)[0] for n in levels if SEP in n}

    # name -> CHILDINFO reasons (empty when the name itself was selected)
    chosen: dict[str, tuple[str, ...]] = {}
    if "SUBSCRIBED" in select:
        for n in subscribed:
            if matches(n):
                chosen[n] = ()
        if "RECURSIVEMATCH" in select:
            for n in subscribed:
                parts = n.split(SEP)
                for i in range(1, len(parts)):
                    parent = SEP.join(parts[:i])
                    if parent not in chosen and matches(parent):
                        chosen[parent] = ("SUBSCRIBED",)
    elif "SPECIAL-USE" in select:
        chosen = {n: () for n in existing if n in special and matches(n)}
    else:
        chosen = {n: () for n in levels if matches(n)}
    if "SPECIAL-USE" in select and "SUBSCRIBED" in select:
        chosen = {n: why for n, why in chosen.items() if n in special or why}

    show_subscribed = "SUBSCRIBED" in select or "SUBSCRIBED" in returns
    status = returns.get("STATUS")
    for name in sorted(chosen, key=lambda n: (n != INBOX, n)):
        attrs = []
        if name not in levels:
            attrs.append("\\NonExistent")
        elif name not in existing:
            attrs.append("\\Noselect")
        attrs.append("\\HasChildren" if name in parents else "\\HasNoChildren")
        if show_subscribed and name in subscribed:
            attrs.append("\\Subscribed")
        if name in special:
            attrs.append(special[name])
        line = b"* LIST (" + " ".join(attrs).encode() + b') "." ' + wire_name(name)
        if chosen[name]:
            line += b' ("CHILDINFO" (' + b" ".join(b'"%s"' % w.encode() for w in chosen[name]) + b"))"
        conn.send(line + b"\r\n")
        if status and name in existing:
            try:
                conn.send(status_response(conn, name, status))
            except (No, MailboxNotFound, StorageError) as e:  # RFC 5819: not fatal for the LIST
                conn.log.info("LIST-STATUS skipped {name}: {error}", name=name, error=str(e),
                              session=conn.settings.session_id)
    return Done("List completed")


advertise("LIST-EXTENDED", "LIST-STATUS")
