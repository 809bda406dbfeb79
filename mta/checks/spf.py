"""mta.checks.spf -- SPF (RFC 7208) for the MAIL FROM and the HELO identities.

`check_spf` checks the MAIL FROM identity (postmaster@HELO when MAIL FROM is empty,
RFC 7208 2.4) and, when MAIL FROM is not empty and HELO is a domain name, the HELO
identity as well (2.3), each on its own. The MAIL FROM result is the one policy and
DMARC use; the HELO result (`SpfResult.helo_result`) is reported next to it
(smtp.helo in Authentication-Results).

The evaluation is pyspf's, run in the resolver's thread pool. pyspf looks up DNS
through its module-level `spf.DNSLookup`; this module replaces that hook once with a
function that, inside a check started here, asks our `common.dns.Resolver` (its name
servers and port), and outside one falls back to pyspf's own lookup. A DNS time-out
or SERVFAIL becomes ``temperror``.

SECURITY: the client address, HELO name and sender come from the client, and the
SPF records from the sender's DNS: both are untrusted. pyspf enforces RFC 7208's
limits (10 DNS mechanisms, 2 void lookups) and we bound the total time (`querytime`).
The domain put into results is sanitised by `authresults` before it reaches a header.
"""

from __future__ import annotations

import threading
import re
from dataclasses import dataclass, replace

import spf
from twisted.internet.defer import Deferred

from common.dns import DnsTemporaryError, NoAnswer, NXDomain, Resolver

RESULTS = ("pass", "fail", "softfail", "neutral", "none", "permerror", "temperror")
MAX_TOTAL_SECONDS = 20  # RFC 7208 section 4.6.4: at least 20 seconds for the whole check

_current = threading.local()
_pyspf_lookup = spf.DNSLookup


@dataclass(frozen=True)
class SpfResult:
    """The outcome of one SPF check."""

    result: str         # one of RESULTS
    identity: str       # "mailfrom" or "helo"
    domain: str         # the domain checked (of MAIL FROM, or the HELO name)
    explanation: str    # pyspf's text, for the log
    helo_result: "SpfResult | None" = None  # the HELO identity's own check, when made apart


_HELO_DOMAIN = re.compile(r"(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z0-9-]{1,63}")


def _dns_lookup(name, qtype, strict=True, timeout=None):
    """pyspf's DNS hook: ((name, type), value) pairs, as pyspf's dnspython driver gives."""
    resolver: Resolver | None = getattr(_current, "resolver", None)
    if resolver is None:
        return _pyspf_lookup(name, qtype, strict, timeout)
    try:
        rows = resolver.query_sync(name, qtype)
    except (NXDomain, NoAnswer):
        return []
    except DnsTemporaryError as e:
        raise spf.TempError(f"DNS {e}") from None
    out = []
    for rdata in rows:
        if qtype in ("A", "AAAA"):
            out.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            out.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            out.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            out.append(((name, qtype), rdata.strings))
    return out


spf.DNSLookup = _dns_lookup


def _domain_of(sender: str, helo: str) -> tuple[str, str]:
    if sender:
        return "mailfrom", sender.rpartition("@")[2].lower()
    return "helo", helo.lower()


def check_spf_sync(resolver: Resolver, client_ip: str, helo: str, sender: str, receiver: str) -> SpfResult:
    """Blocking SPF check of both identities; call inside resolver.in_thread."""
    result = _check_sync(resolver, client_ip, helo, sender, receiver)
    helo_domain = helo.lower().rstrip(".")
    if sender and _HELO_DOMAIN.fullmatch(helo_domain):
        result = replace(result, helo_result=_check_sync(resolver, client_ip, helo, "", receiver))
    return result


def _check_sync(resolver: Resolver, client_ip: str, helo: str, sender: str, receiver: str) -> SpfResult:
    """One identity: sender's domain, or the HELO name when sender is empty."""
    identity, domain = _domain_of(sender, helo)
    if not domain:
        return SpfResult("none", identity, domain, "no domain to check")
    _current.resolver = resolver
    try:
        query = spf.query(i=client_ip, s=sender, h=helo, receiver=receiver, querytime=MAX_TOTAL_SECONDS)
        result, _code, explanation = query.check()
    except (ValueError, UnicodeError) as e:  # an address or name pyspf cannot even parse
        result, explanation = "permerror", f"{type(e).__name__}: {e}"
    finally:
        _current.resolver = None
    if result not in RESULTS:  # pragma: no cover - defensive: pyspf's results are fixed
        result = "permerror"
    return SpfResult(result, identity, domain, str(explanation))


def check_spf(resolver: Resolver, client_ip: str, helo: str, sender: str, receiver: str) -> Deferred:
    """SPF for sender (or for helo when sender is empty), with the HELO identity's own
    result in helo_result when sender is not empty: Deferred[SpfResult]."""
    return resolver.in_thread(check_spf_sync, resolver, client_ip, helo, sender, receiver)
