"""common.config.mta -- the schema of mta.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
The receiving side (listeners, limits, recipient policy, processes) is defined here;
`checks:` is common/config/mta_checks.py and `queue:` common/config/mta_queue.py.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .core import Listener, SandboxContext, doc
from .loader import Duration, Size
from .mta_checks import ChecksConfig, DnsConfig
from .mta_queue import QueueConfig


@dataclass(frozen=True)
class SmtpListener(Listener):
    """An SMTP listener: its role decides the default policy on it."""

    role: Literal["mx", "submission"] = doc(
        "mx: mail from the world for local and relay domains, no relaying except for "
        "trusted networks; submission: mail from authenticated users to anywhere "
        "(RFC 6409 on port 587 with STARTTLS, RFC 8314 on port 465 with implicit TLS)",
        default="mx")
    checks: bool | None = doc(
        "run the SPF/DKIM/DMARC/DNS blocklist checks of `checks:` on this listener "
        "(default: on for mx, off for submission; never for authenticated clients)", default=None)
    auth: bool | None = doc("offer AUTH PLAIN and LOGIN (default: on for submission, off for mx)", default=None)
    require_auth: bool | None = doc("MAIL only after AUTH (default: on for submission, off for mx)", default=None)
    require_tls: bool | None = doc(
        "MAIL only over TLS (default: on for submission, off for mx; implicit TLS always has it)", default=None)
    sender_must_be_own: bool = doc(
        "an authenticated client may use only its own addresses (its login, and aliases "
        "that point to it) as envelope sender; 553 5.7.1 otherwise", default=False)

    @property
    def is_submission(self) -> bool:
        return self.role == "submission"

    @property
    def checks_on(self) -> bool:
        return self.checks if self.checks is not None else not self.is_submission

    @property
    def auth_on(self) -> bool:
        return self.auth if self.auth is not None else self.is_submission

    @property
    def auth_required(self) -> bool:
        return self.require_auth if self.require_auth is not None else self.is_submission

    @property
    def tls_required(self) -> bool:
        return self.require_tls if self.require_tls is not None else (self.is_submission and self.tls != "none")


@dataclass(frozen=True)
class Limits:
    """Every length, count and time of an SMTP session (RFC 5321 section 4.5.3)."""

    max_command_line: Size = doc("longest command line in bytes, CRLF included (RFC minimum 512)", default=Size(2048))
    max_text_line: Size = doc("longest message line in bytes, CRLF included (RFC 5321: 1000)", default=Size(1000))
    max_message_size: Size = doc("largest message accepted, advertised with SIZE (held in memory while received)", default=Size(25 * 1024 * 1024))
    max_recipients: int = doc("recipients per message; more get 452 4.5.3 (RFC minimum 100)", default=100)
    max_errors: int = doc("error replies in one session before 421 and disconnect", default=10)
    max_commands_before_mail: int = doc("HELO/EHLO/NOOP/RSET/VRFY/HELP/STARTTLS/AUTH commands between two MAILs before 421 and disconnect", default=50)
    command_timeout: Duration = doc("waiting for the next command (RFC 5321 4.5.3.2.7: at least 5 minutes)", default=Duration(300))
    data_timeout: Duration = doc("waiting for the next piece of message data after DATA or BDAT", default=Duration(300))
    max_connections: int = doc("concurrent connections in total, all receiving processes together", default=500)
    max_connections_per_client: int = doc("concurrent connections from one client address, all receiving processes together", default=30)
    max_messages_per_client_per_minute: int = doc("messages one client address may send per minute (all receiving processes together), 0 = no limit", default=0)
    max_received_headers: int = doc("a message with more Received headers than this is a mail loop: 554 5.4.6", default=50)
    reverse_dns_timeout: Duration = doc(
        "how long the greeting may wait for the client's forward-confirmed reverse DNS name "
        "(for Received, the spool and the log; through dns:); 0 = no lookup", default=Duration(5))


@dataclass(frozen=True)
class RecipientPolicy:
    """Which recipients exist and who may relay."""

    relay_domains: tuple[str, ...] = doc("domains (not local) this server accepts mail for and forwards", default=())
    trusted_networks: tuple[str, ...] = doc(
        "client networks that may relay through the mx listeners without AUTH (empty by "
        "default; loopback is not trusted unless listed)", default=())
    aliases_file: Path = doc("aliases in the familiar format: `name: target, target`", default=Path("/etc/postroom/aliases"))
    subaddress_separator: str = doc("user+detail@domain reaches user; empty turns subaddressing off", default="+")
    catch_all: Mapping[str, str] = doc("per local domain, the address that gets mail for unknown recipients", default_factory=dict)
    vrfy: bool = doc("answer VRFY with the result of the recipient check instead of 252", default=False)

    def __post_init__(self):
        object.__setattr__(self, "relay_domains", tuple(d.lower().rstrip(".") for d in self.relay_domains))
        for net in self.trusted_networks:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"trusted_networks: {net!r} is not an address or network") from None
        if len(self.subaddress_separator) > 1:
            raise ValueError("subaddress_separator: one character, or empty")
        object.__setattr__(self, "catch_all", {k.lower().rstrip("."): v for k, v in self.catch_all.items()})


@dataclass(frozen=True)
class MtaConfig:
    listeners: Mapping[str, SmtpListener] = doc("named listening endpoints", default_factory=dict)
    limits: Limits = field(default_factory=Limits)
    recipients: RecipientPolicy = field(default_factory=RecipientPolicy)
    receive_processes: int = doc(
        "processes accepting SMTP connections on the shared listening sockets; 0 = one per CPU. "
        "With 1 the one process also runs the queue manager; with more, the first process "
        "runs only the queue manager and starts this many receiving processes", default=0)
    spool_threads: int = doc(
        "batches of spool files a receiving process writes and fsyncs at the same time, each in its own "
        "thread; a second batch starts only while the first has taken over 2 ms (group commit)", default=32)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)

    def __post_init__(self):
        if self.receive_processes < 0 or self.receive_processes > 64:
            raise ValueError("receive_processes: from 0 (one per CPU) to 64")
        if not 1 <= self.spool_threads <= 256:
            raise ValueError("spool_threads: from 1 to 256")


def sandbox_yaml(ctx: SandboxContext) -> str:
    """mta.yaml for postroom-dev's sandbox: MX with STARTTLS, submission with
    STARTTLS and AUTH, submissions with implicit TLS, all on loopback."""
    return f"""\
# postroom-dev sandbox: every listener on loopback.
listeners:
  smtp:
    endpoint: tcp:{ctx.port("smtp")}:interface=127.0.0.1
    role: mx
    tls: starttls
  submission:
    endpoint: tcp:{ctx.port("submission")}:interface=127.0.0.1
    role: submission
    tls: starttls
  submissions:
    endpoint: tcp:{ctx.port("submissions")}:interface=127.0.0.1
    role: submission
    tls: implicit
recipients:
  aliases_file: aliases
receive_processes: 1
"""
