"""mta.checks.dnsbl -- DNS blocklists of client addresses (RFC 5782).

The client's address is reversed (IPv4 octets, IPv6 nibbles) under each configured
zone and looked up as an A record; all zones are asked at once. An answer in
127.0.0.0/8 means listed, except 127.255.255.0/24, which lists such as Spamhaus use
to say "I will not answer you" (for example through a public resolver): that is
not a listing, it is a failure of the lookup.

`lookup(resolver, ip, zones) -> Deferred[str | None]`: the first zone, in the
configured order, that lists ip; None if none does. Raises DnsTemporaryError when a
zone could not be asked and no zone lists ip.

SECURITY: the client address comes from the connection (or a trusted PROXY
header), never from what the client says.
"""

from __future__ import annotations

import ipaddress

from twisted.internet.defer import DeferredList, inlineCallbacks

from common.dns import DnsTemporaryError, NoAnswer, NXDomain, Resolver, plain_ip, reverse_name

_LISTED = ipaddress.ip_network("127.0.0.0/8")
_REFUSED = ipaddress.ip_network("127.255.255.0/24")


@inlineCallbacks
def _ask(resolver: Resolver, ip: str, zone: str):
    try:
        rows = yield resolver.query(reverse_name(ip, zone), "A")
    except (NXDomain, NoAnswer):
        return False
    answers = [ipaddress.ip_address(r.address) for r in rows]
    if any(a in _REFUSED for a in answers):
        raise DnsTemporaryError(f"{zone} refused to answer ({', '.join(map(str, answers))})")
    return any(a in _LISTED for a in answers)


@inlineCallbacks
def lookup(resolver: Resolver, ip: str, zones: tuple[str, ...]):
    address = plain_ip(ip)
    if address is None or not zones:
        return None
    outcomes = yield DeferredList([_ask(resolver, str(address), zone) for zone in zones], consumeErrors=True)
    failures = []
    for zone, (ok, value) in zip(zones, outcomes):
        if ok and value:
            return zone
        if not ok:
            failures.append(value)
    if failures:
        error = failures[0].value
        if isinstance(error, DnsTemporaryError):
            raise error
        failures[0].raiseException()
    return None
