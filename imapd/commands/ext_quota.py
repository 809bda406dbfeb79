"""imapd.commands.ext_quota -- GETQUOTA, GETQUOTAROOT and SETQUOTA (RFC 9208).

Every mailbox of the user is under the one quota root "" (`imapd.quota`): usage
from the Maildir++ `maildirsize` the MDA keeps, limits from the user's quota
rules. SETQUOTA is refused: limits are set by the administrator in the users
file, so QUOTASET is not advertised.

SECURITY: mailbox names are validated by `decode_name`; a root other than ""
gets NO [NONEXISTENT]; no path or number from the file system reaches the client
beyond the usage itself.
"""

from __future__ import annotations

from .. import quota
from ..protocol import AUTH, Done, No, advertise, command
from . import mailbox_arg, wire_name


def user_resources(conn) -> list[tuple[str, int, int]]:
    rules = getattr(conn.user, "quota", None)
    limits = rules() if callable(rules) else (None, None)
    if limits == (None, None):
        return []
    return quota.resources(limits, conn.store.quota.usage(limits))


@command("GETQUOTAROOT", AUTH)
def getquotaroot(conn, tag, r):
    r.sp()
    name = mailbox_arg(conn, r)
    r.end()
    if not conn.store.mailbox_exists(name):
        raise No("Mailbox does not exist", "NONEXISTENT")
    conn.send(quota.quotaroot_response(wire_name(name), [quota.ROOT]))
    conn.send(quota.quota_response(quota.ROOT, user_resources(conn)))
    return Done("Getquotaroot completed")


@command("GETQUOTA", AUTH)
def getquota(conn, tag, r):
    r.sp()
    root = r.astring().decode("utf-8", "replace")
    r.end()
    if root != quota.ROOT:
        raise No("No such quota root", "NONEXISTENT")
    conn.send(quota.quota_response(quota.ROOT, user_resources(conn)))
    return Done("Getquota completed")


@command("SETQUOTA", AUTH)
def setquota(conn, tag, r):
    r.sp()
    r.astring()
    r.sp()
    r.paren_list(lambda: _resource_limit(r))
    r.end()
    raise No("Quota limits are set by the administrator", "NOPERM")


def _resource_limit(r) -> str:
    name = r.atom()
    r.sp()
    r.number()
    return name


advertise("QUOTA", "QUOTA=RES-STORAGE", "QUOTA=RES-MESSAGE")
