"""common.config.mta_queue -- the queue manager's section of mta.yaml (``queue:``).

Retry schedule, lifetimes, concurrency, the transport map, relay credentials, the
outbound TLS policy, DKIM signing keys, the postmaster for double bounces, and
postroom-sendmail's rules. See docs/queue.md for the whole picture.
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .core import doc
from .loader import Duration

TlsLevel = Literal["none", "may", "encrypt", "verify"]

# smtp:[host]:port, smtp:host[:port], smtp:, local:  (parsed in mta/queue/routing.py)
_TRANSPORT = re.compile(r"(?:smtp:(?:\[[^\]\s]+\](?::\d{1,5})?|[^\[\]:\s]+(?::\d{1,5})?)?|local:)", re.I)


@dataclass(frozen=True)
class DkimKey:
    """One signing key: mail whose sender is in `domain` is signed with it."""

    domain: str = doc("the d= domain; mail from this domain (and its subdomains) is signed")
    selector: str = doc("the s= selector; the public key is at SELECTOR._domainkey.DOMAIN")
    key: Path = doc("PEM private key written by postroom-dkim keygen (readable only by the MTA user)")
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = doc("rsa-sha256 or ed25519-sha256 (the key's type)", default="rsa-sha256")
    headers: tuple[str, ...] = doc(
        "header fields to sign (default: the usual set, oversigned against additions)", default=())

    def __post_init__(self):
        object.__setattr__(self, "domain", self.domain.lower().rstrip("."))


@dataclass(frozen=True)
class SmtpTimeouts:
    """RFC 5321 section 4.5.3.2 timeouts of the outbound client."""

    connect: Duration = doc("TCP connection to one address", default=Duration(30))
    greeting: Duration = doc("the 220 greeting", default=Duration(300))
    command: Duration = doc("EHLO, STARTTLS, AUTH, MAIL, RCPT, QUIT replies", default=Duration(300))
    data_init: Duration = doc("the 354 reply to DATA", default=Duration(120))
    data_block: Duration = doc("sending each block of message data", default=Duration(180))
    data_done: Duration = doc("the reply after the final dot (or the last BDAT)", default=Duration(600))


@dataclass(frozen=True)
class SrsConfig:
    """The Sender Rewriting Scheme for mail that aliases forward to remote addresses."""

    domain: str | None = doc(
        "domain of rewritten senders (SRS0=...@DOMAIN); its MX must point to this server, "
        "which accepts bounces to it. Unset: SRS is off", default=None)
    secret_file: Path | None = doc(
        "secrets, one per line: the first signs, every one verifies (add a new first line to rotate); "
        "must belong to the MTA's user with mode 0600", default=None)
    max_age: Duration = doc("a bounce to an SRS address older than this is refused (whole days)",
                            default=Duration(21 * 86400))

    def __post_init__(self):
        if self.domain is not None:
            object.__setattr__(self, "domain", self.domain.lower().rstrip("."))
            if self.secret_file is None:
                raise ValueError("srs: a domain needs a secret_file")
        if self.max_age < 86400:
            raise ValueError("srs: max_age is at least 1d")


@dataclass(frozen=True)
class QueueConfig:
    retry_first: Duration = doc("first retry of a deferred recipient after this long", default=Duration(300))
    retry_max: Duration = doc("the retry interval doubles up to this", default=Duration(4 * 3600))
    max_lifetime: Duration = doc("after this long in the queue the remaining recipients bounce", default=Duration(5 * 86400))
    bounce_lifetime: Duration = doc("lifetime of bounces (null sender); dropped with a log line after it", default=Duration(5 * 86400))
    delay_warning: Duration = doc("send an RFC 3464 delay notice once a message waited this long; 0 = never", default=Duration(4 * 3600))
    scan_interval: Duration = doc("how often deferred/ is scanned for messages due for a retry (fresh mail needs no scan)", default=Duration(10))
    max_connections: int = doc("outbound SMTP connections in total", default=100)
    max_per_destination: int = doc("outbound SMTP connections per destination (domain or relay host)", default=20)
    max_active: int = doc("messages held in memory by the scheduler at once", default=2000)
    destination_backoff: Duration = doc(
        "a destination where no host answered is not tried again for this long (doubling up to retry_max)",
        default=Duration(60))
    smtp_port: int = doc("port of the mail exchangers found by MX lookup", default=25)
    helo_name: str | None = doc("name in EHLO (default: core hostname)", default=None)
    bind_address: str | None = doc("local IPv4 address outgoing connections use (default: any)", default=None)
    bind_address6: str | None = doc("local IPv6 address outgoing connections use (default: any)", default=None)
    transports: Mapping[str, str] = doc(
        "domain -> next hop: 'smtp:[host]:port' (no MX lookup), 'smtp:host' (MX of host), "
        "'local:' (hand to the MDA); keys: a domain, .domain for its subdomains, * for everything else",
        default_factory=dict)
    relay_credentials: Path | None = doc(
        "file of '[host]:port username password' lines for AUTH toward relays; must belong to the MTA's "
        "user with mode 0600 (anything looser stops the start with exit 78)",
        default=None)
    tls: TlsLevel = doc("TLS toward MX hosts: none, may (opportunistic), encrypt, verify", default="may")
    tls_policy: Mapping[str, TlsLevel] = doc(
        "per destination TLS level: key is a recipient domain or a next hop '[host]:port'", default_factory=dict)
    tls_ca_file: Path | None = doc("CA bundle for 'verify' (default: the system's)", default=None)
    dkim: tuple[DkimKey, ...] = doc("DKIM signing keys for local domains", default=())
    postmaster: str | None = doc("where double bounces go; unset = logged and dropped", default=None)
    sendmail_domain: str | None = doc("domain of local users' addresses from postroom-sendmail (default: core hostname)", default=None)
    sendmail_trusted: tuple[str, ...] = doc(
        "local users who may set any envelope sender with postroom-sendmail -f", default=("root",))
    maildrop_group: str | None = doc("group allowed to write maildrop/ (with the sticky bit); unset = everyone", default=None)
    timeouts: SmtpTimeouts = field(default_factory=SmtpTimeouts)
    srs: SrsConfig = field(default_factory=SrsConfig)

    def __post_init__(self):
        if self.max_connections < 1 or self.max_per_destination < 1 or self.max_active < 1:
            raise ValueError("max_connections, max_per_destination and max_active must be at least 1")
        if self.retry_first <= 0:
            raise ValueError("retry_first must be more than 0")
        for key, value in self.transports.items():
            if not _TRANSPORT.fullmatch(value.strip()):
                raise ValueError(f"transports: {key}: {value!r} is not smtp:[host]:port, smtp:host[:port], "
                                 "smtp: or local:")
        object.__setattr__(self, "transports", {k.lower().rstrip(".") if k != "*" else k: v
                                                for k, v in self.transports.items()})
