"""common.config.core -- postroom.yaml, the settings every daemon shares.

Also the listener shape every daemon's file uses for its endpoints.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .loader import Duration, Endpoint


def doc(text: str, **kw):
    """A dataclass field with the comment `postroom-config show` prints."""
    return field(metadata={"doc": text}, **kw)


@dataclass(frozen=True)
class Listener:
    """One listening endpoint and how connections on it are treated."""

    endpoint: Endpoint = doc("Twisted endpoint string: tcp:PORT:interface=ADDR, tcp6:..., ssl:PORT[:privateKey=KEY.pem:certKey=CERT.pem] (implicit TLS), unix:PATH:mode=660, systemd:domain=INET:name=NAME")
    tls: Literal["none", "starttls", "implicit"] | None = doc(
        "none, starttls (offered after connect) or implicit (TLS from the first byte); "
        "default: implicit for an ssl: endpoint, else starttls", default=None)
    proxy_protocol: bool = doc("expect a HAProxy PROXY v1/v2 header before anything else", default=False)
    proxy_from: tuple[str, ...] = doc("addresses or networks allowed to send a PROXY header", default=())

    def __post_init__(self):
        ssl = isinstance(self.endpoint, Endpoint) and self.endpoint.kind == "ssl"
        if ssl and self.tls not in (None, "implicit"):
            raise ValueError(f"tls: an ssl: endpoint is implicit TLS; leave tls out or set it to implicit, not {self.tls}")
        if self.tls is None:
            object.__setattr__(self, "tls", "implicit" if ssl else "starttls")


@dataclass(frozen=True)
class Paths:
    spool: Path = doc("the MTA's queue directories", default=Path("/var/spool/postroom"))
    mail: Path = doc("base of the maildirs when a user has no home", default=Path("/var/mail/postroom"))
    state: Path = doc("persistent state (vacation records, indexes)", default=Path("/var/lib/postroom"))
    run: Path = doc("sockets and pid files", default=Path("/run/postroom"))


@dataclass(frozen=True)
class TlsFiles:
    certificate: Path | None = doc("PEM certificate chain (leaf first)", default=None)
    key: Path | None = doc("PEM private key", default=None)
    min_version: Literal["1.2", "1.3"] = doc("oldest TLS version accepted", default="1.2")
    ciphers: str = doc("OpenSSL cipher list for TLS 1.2", default="ECDHE+AESGCM:ECDHE+CHACHA20")


@dataclass(frozen=True)
class LogConfig:
    target: Literal["stderr", "syslog"] = doc("stderr (for journald) or syslog", default="stderr")
    level: Literal["debug", "info", "warn", "error"] = doc("lowest level written", default="info")
    syslog_facility: str = doc("syslog facility", default="mail")
    syslog_socket: Path = doc("syslog socket", default=Path("/dev/log"))


@dataclass(frozen=True)
class AuthConfig:
    users_file: Path = doc("user database in Dovecot passwd-file format", default=Path("/etc/postroom/users"))
    allow_plaintext: bool = doc("allow passwords over connections without TLS", default=False)
    loopback_is_secure: bool = doc("treat connections from 127.0.0.0/8 and ::1 as secure for the rule above", default=True)
    failure_delay: Duration = doc("first delay after a failed login, doubled per failure", default=Duration(1))
    max_failure_delay: Duration = doc("upper bound of that delay", default=Duration(15))
    failure_window: Duration = doc("failures older than this are forgotten", default=Duration(600))
    default_scheme: Literal["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT"] = doc("scheme postroom-passwd uses", default="ARGON2ID")
    tracked_failures: int = doc("client addresses and user names whose recent failures are remembered; the least recently seen are forgotten first", default=10000)
    max_logins_in_progress: int = doc("logins one client address may have waiting for an answer at once; more fail at once without a password check", default=8)

    def __post_init__(self):
        if self.max_failure_delay < self.failure_delay:
            raise ValueError("max_failure_delay must not be shorter than failure_delay")
        if self.tracked_failures < 1 or self.max_logins_in_progress < 1:
            raise ValueError("tracked_failures and max_logins_in_progress must be at least 1")


@dataclass(frozen=True)
class PostroomConfig:
    hostname: str = doc("this server's name in greetings and Received headers", default_factory=socket.getfqdn)
    local_domains: tuple[str, ...] = doc("domains whose mail is delivered here", default=())
    user: str | None = doc("drop privileges to this user after binding; required when started as root", default=None)
    group: str | None = doc("and to this group (default: the user's primary group)", default=None)
    mail_location: str = doc("where a user's maildir is: %h home, %u user@domain, %n local part, %d domain", default="%h/Maildir")
    paths: Paths = field(default_factory=Paths)
    tls: TlsFiles = field(default_factory=TlsFiles)
    log: LogConfig = field(default_factory=LogConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    shutdown_grace: Duration = doc("on SIGTERM, how long sessions in flight may take to finish", default=Duration(30))

    def __post_init__(self):
        object.__setattr__(self, "local_domains", tuple(d.lower().rstrip(".") for d in self.local_domains))


@dataclass(frozen=True)
class SandboxContext:
    """What postroom-dev tells each daemon schema's sandbox_yaml(): where the sandbox
    lives and which loopback ports it uses (every port shifted by --port-offset)."""

    dir: Path
    port_offset: int = 0

    BASE_PORTS = {
        "smtp": 2525, "submission": 2587, "submissions": 2465,
        "imap": 2143, "imaps": 2993, "pop3": 2110, "pop3s": 2995,
    }

    def port(self, name: str) -> int:
        return self.BASE_PORTS[name] + self.port_offset

    @property
    def lmtp_socket(self) -> Path:
        return self.dir / "run" / "lmtp.sock"
