"""common.config.mta_checks -- the `checks:` and `dns:` sections of mta.yaml.

`checks:` says what the receiving MTA does with SPF, DKIM, DMARC and DNS blocklist
results for mail from outside (see docs/checks.md). `dns:` is the one resolver the
whole MTA uses (checks and the queue manager's MX lookups): its name servers, port
and timeout.

Every action is one of:

- ``record``: only write the result into the Authentication-Results header;
- ``reject``: refuse permanently (550 5.7.x);
- ``defer``: refuse temporarily (451 4.x.x) so the sender tries again later.

A DNS failure (time-out, SERVFAIL) defaults to ``defer``: a failed lookup never
means acceptance by default and never a permanent refusal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .core import doc
from .loader import Duration

Action = Literal["record", "reject", "defer"]


@dataclass(frozen=True)
class DnsConfig:
    """The resolver every DNS lookup of the MTA goes through."""

    nameservers: tuple[str, ...] = doc("IP addresses of the recursive name servers to ask; empty: those in /etc/resolv.conf", default=())
    port: int = doc("UDP and TCP port of those name servers", default=53)
    timeout: Duration = doc("how long one lookup may take in total before it is a temporary failure", default=Duration(5))
    threads: int = doc("upper bound on lookups running at the same time", default=10)

    def __post_init__(self):
        import ipaddress

        for ns in self.nameservers:
            try:
                ipaddress.ip_address(ns)
            except ValueError:
                raise ValueError(f"nameservers: {ns!r} is not an IP address") from None
        if not 0 < self.port < 65536:
            raise ValueError("port must be from 1 to 65535")
        if self.timeout <= 0:
            raise ValueError("timeout must be more than 0")
        if not 1 <= self.threads <= 100:
            raise ValueError("threads must be from 1 to 100")


@dataclass(frozen=True)
class SpfPolicy:
    """SPF (RFC 7208) for the MAIL FROM identity (postmaster@HELO when MAIL FROM is empty)
    and the HELO identity; the actions apply to the MAIL FROM identity's result."""

    enabled: bool = doc("check SPF at MAIL FROM (the MAIL FROM and HELO identities)", default=True)
    fail: Action = doc("action when the domain says the client may not send for it (-all)", default="record")
    softfail: Action = doc("action for softfail (~all)", default="record")
    neutral: Action = doc("action for neutral (?all)", default="record")
    none: Action = doc("action when the domain publishes no SPF record", default="record")
    permerror: Action = doc("action when the domain's SPF record is broken", default="record")
    temperror: Action = doc("action when DNS failed during the check", default="defer")


@dataclass(frozen=True)
class DkimPolicy:
    """DKIM signature verification (RFC 6376) at end of data."""

    enabled: bool = doc("verify DKIM signatures", default=True)
    max_signatures: int = doc("verify at most this many signatures per message; the rest are ignored", default=5)
    min_key_bits: int = doc("RSA keys shorter than this do not verify", default=1024)
    temperror: Action = doc("action when DNS failed while fetching a key and DMARC did not pass anyway", default="defer")

    def __post_init__(self):
        if not 1 <= self.max_signatures <= 50:
            raise ValueError("max_signatures must be from 1 to 50")


@dataclass(frozen=True)
class DmarcPolicy:
    """DMARC (RFC 7489) at end of data, on the SPF and DKIM results."""

    enabled: bool = doc("evaluate DMARC", default=True)
    reject: Literal["reject", "quarantine", "record"] = doc("what to do with a message that fails DMARC when the domain says p=reject", default="reject")
    quarantine: Literal["reject", "quarantine", "record"] = doc("what to do when the domain says p=quarantine: quarantine accepts and marks the message", default="quarantine")
    temperror: Action = doc("action when DNS failed while looking up the DMARC record", default="defer")
    quarantine_header: str = doc("header added to quarantined messages (value: dmarc) so a Sieve rule can file them", default="X-Postroom-Quarantine")
    public_suffix_list: Path | None = doc("public suffix list for organizational domains; default: /usr/share/publicsuffix/public_suffix_list.dat if present, else the copy shipped with the publicsuffixlist package", default=None)


@dataclass(frozen=True)
class DnsblPolicy:
    """DNS blocklists (RFC 5782) of client IP addresses."""

    zones: tuple[str, ...] = doc("blocklist zones to ask, e.g. zen.spamhaus.org; empty: none", default=())
    stage: Literal["connect", "rcpt"] = doc("refuse at connect (554 before the greeting) or at each RCPT", default="connect")
    temperror: Literal["defer", "record"] = doc("when a blocklist does not answer: defer (451 4.4.3) or go on as if unlisted", default="defer")

    def __post_init__(self):
        object.__setattr__(self, "zones", tuple(z.lower().strip(".") for z in self.zones))


@dataclass(frozen=True)
class ChecksConfig:
    """Checks on mail arriving from outside (not on submission or trusted networks)."""

    authserv_id: str | None = doc("the name in our Authentication-Results headers; headers with this name that arrive from outside are removed; default: the hostname", default=None)
    spf: SpfPolicy = field(default_factory=SpfPolicy)
    dkim: DkimPolicy = field(default_factory=DkimPolicy)
    dmarc: DmarcPolicy = field(default_factory=DmarcPolicy)
    dnsbl: DnsblPolicy = field(default_factory=DnsblPolicy)
