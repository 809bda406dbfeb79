"""mta.policy -- who may send what to whom: relaying and recipient checks.

Answers, for one session, "may this sender be used?" and "does this recipient
exist, and may it be reached from here?", at MAIL and RCPT time, so an unknown
recipient is refused with 550 5.1.1 during the session and no bounce is ever sent
to a forged sender (no backscatter).

Recipients in a local domain are resolved at once: aliases (mta.aliases), then
users (common.users.UserDB), then `user+detail` subaddressing, then the domain's
catch-all. An SRS address of ours (mta.srs) resolves to the sender it stands for,
so a bounce to it is forwarded back; a forged or expired one is refused 550 5.1.1. Relay domains are accepted as they are. Anything else is relaying and
is refused with 554 5.7.1 unless the client authenticated or comes from a
trusted network (empty by default; loopback is not trusted unless listed).

SECURITY: addresses come from the network; they are only compared and looked up,
never used as paths. Expansion is bounded (mta.aliases.MAX_DEPTH, MAX_TARGETS).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from common.errors import PermanentError

from .aliases import MAX_DEPTH, MAX_TARGETS, Aliases

NO_SUCH_USER = PermanentError(550, "5.1.1", "No such user here")
RELAY_DENIED = PermanentError(554, "5.7.1", "Relay access denied")
SENDER_NOT_OWNED = PermanentError(553, "5.7.1", "Sender address not owned by the authenticated user")


@dataclass(frozen=True)
class Target:
    """Where one envelope recipient goes after alias and subaddress handling."""

    address: str                 # the final address (a local user's name, or remote)
    mailbox: str | None = None   # the user database name for local delivery
    folder: str | None = None    # the +detail of a subaddress


class RecipientPolicy:
    """Recipient resolution and relay rules for the receiving side."""

    def __init__(self, core, recipients_cfg, users, aliases: Aliases, srs=None):
        self.srs = srs              # mta.srs.Srs: bounces to our SRS addresses go back (queue.srs)
        self.local_domains = frozenset(core.local_domains)
        self.first_local = core.local_domains[0] if core.local_domains else core.hostname.lower()
        self.cfg = recipients_cfg
        self.relay_domains = frozenset(recipients_cfg.relay_domains)
        self.trusted = tuple(ipaddress.ip_network(n, strict=False) for n in recipients_cfg.trusted_networks)
        self.users = users
        self.aliases = aliases

    # -- relaying

    def trusted_client(self, client_ip: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(client_ip)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.trusted)

    def check_recipient(self, address: str, client_ip: str, auth_user: str | None) -> list[Target]:
        """The targets of a RCPT, or raises a MailError (550 5.1.1, 554 5.7.1)."""
        if self.srs is not None and self.srs.handles(address):
            targets = self.resolve(address)     # forged or expired: None
            if not targets:
                raise NO_SUCH_USER
            return targets
        domain = self._domain(address)
        if domain in self.local_domains:
            targets = self.resolve(address)
            if not targets:
                raise NO_SUCH_USER
            return targets
        if domain in self.relay_domains or auth_user is not None or self.trusted_client(client_ip):
            return [Target(address)]
        raise RELAY_DENIED

    def check_sender(self, sender: str, auth_user: str | None, must_be_own: bool) -> None:
        """Raises SENDER_NOT_OWNED when the listener requires the user's own address."""
        if not must_be_own or auth_user is None:
            return
        if sender and (sender.lower() == auth_user.lower()
                       or any(t.mailbox == auth_user.lower() for t in self.resolve(sender) or ())):
            return
        raise SENDER_NOT_OWNED

    # -- resolution

    def _domain(self, address: str) -> str:
        local, at, domain = address.rpartition("@")
        return domain.lower().rstrip(".") if at else self.first_local

    def resolve(self, address: str) -> list[Target] | None:
        """The targets of address: [Target(address)] for a non-local domain, the
        expansion for a local one, None for an unknown local recipient (or an SRS
        address of ours that is forged or expired; a valid one gives where it points)."""
        if self.srs is not None and self.srs.handles(address):
            original = self.srs.reverse(address)
            return None if original is None else self.resolve(original)
        out: list[Target] = []
        if not self._resolve(address, 0, set(), out):
            return None
        seen: set[Target] = set()
        return [t for t in out if not (t in seen or seen.add(t))]

    def _resolve(self, address: str, depth: int, active: set[str], out: list[Target]) -> bool:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, self.first_local
        domain = domain.lower().rstrip(".")
        if domain not in self.local_domains:
            out.append(Target(address))
            return True
        key = f"{local.lower()}@{domain}"
        if len(out) >= MAX_TARGETS:
            return True
        if key not in active and depth < MAX_DEPTH:
            targets = self.aliases.lookup(local, domain)
            if targets is None and self.cfg.subaddress_separator and self.cfg.subaddress_separator in local:
                targets = self.aliases.lookup(local.split(self.cfg.subaddress_separator, 1)[0], domain)
            if targets is not None:
                active.add(key)
                found = False
                for t in targets:
                    full = t if "@" in t else f"{t}@{domain}"
                    found = self._resolve(full, depth + 1, active, out) or found
                active.discard(key)
                return found
        user = self._user(local, domain)
        if user is not None:
            out.append(user)
            return True
        catch_all = self.cfg.catch_all.get(domain)
        if catch_all and depth == 0:
            return self._resolve(catch_all, depth + 1, active | {key}, out)
        return False

    def _user(self, local: str, domain: str) -> Target | None:
        record = self.users.lookup(f"{local}@{domain}") or self.users.lookup(local)
        if record is not None:
            return Target(record.name, record.name, None)
        sep = self.cfg.subaddress_separator
        if sep and sep in local:
            base, detail = local.split(sep, 1)
            record = self.users.lookup(f"{base}@{domain}") or self.users.lookup(base)
            if record is not None and base:
                return Target(record.name, record.name, detail or None)
        return None
