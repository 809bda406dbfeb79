"""common.config.imapd -- the schema of imapd.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from .core import Listener, SandboxContext, doc
from .loader import Duration, Size

SPECIAL_USES = ("\\All", "\\Archive", "\\Drafts", "\\Flagged", "\\Junk", "\\Sent", "\\Trash")


def _default_special_use() -> dict[str, str]:
    return {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash", "Junk": "\\Junk", "Archive": "\\Archive"}


@dataclass(frozen=True)
class ImapLimits:
    """Every length, count and time of an IMAP session."""

    max_line: Size = doc("longest command line without its literals, in bytes", default=Size(64 * 1024))
    max_message_size: Size = doc("largest literal, so the largest message APPEND accepts (held in memory while received)", default=Size(50 * 1024 * 1024))
    max_literals: int = doc("literals in one command", default=64)
    literal: Literal["plus", "minus"] = doc(
        "non-synchronising literals: plus advertises LITERAL+ (any size up to max_message_size), "
        "minus advertises LITERAL- (RFC 7888: at most 4096 bytes without a continuation)", default="plus")
    login_timeout: Duration = doc("time to log in after connecting; then BYE", default=Duration(60))
    autologout: Duration = doc("inactivity before BYE once logged in, IDLE included (RFC 3501: at least 30 minutes)", default=Duration(1800))
    idle_keepalive: Duration = doc("during IDLE, send '* OK Still here' this often so NAT boxes keep the connection", default=Duration(120))
    auth_failures: int = doc("failed LOGIN/AUTHENTICATE attempts before the connection is closed", default=3)
    max_connections: int = doc("concurrent connections in total (per worker process)", default=1000)
    max_connections_per_client: int = doc("concurrent connections from one client address (per worker process)",
                                          default=50)

    def __post_init__(self):
        if self.max_line < 1024:
            raise ValueError("max_line: at least 1K")
        if self.max_literals < 1 or self.auth_failures < 1:
            raise ValueError("max_literals and auth_failures: at least 1")
        if self.max_connections < 1 or self.max_connections_per_client < 1:
            raise ValueError("max_connections and max_connections_per_client: at least 1")


@dataclass(frozen=True)
class ImapdConfig:
    listeners: Mapping[str, Listener] = doc("named listening endpoints", default_factory=dict)
    workers: int = doc("processes serving IMAP, sharing the listeners (0: one per CPU); with more than one, "
                       "a first process binds and supervises them", default=1)
    limits: ImapLimits = field(default_factory=ImapLimits)
    special_use: Mapping[str, str] = doc(
        "folders created (and subscribed) at login when missing, with their RFC 6154 special use "
        "(\\Drafts, \\Sent, \\Trash, \\Junk, \\Archive, \\Flagged, \\All, or empty for none)",
        default_factory=_default_special_use)

    def __post_init__(self):
        if self.workers < 0 or self.workers > 64:
            raise ValueError("workers: from 0 (one per CPU) to 64")
        for name, use in self.special_use.items():
            if use and use not in SPECIAL_USES:
                raise ValueError(f"special_use: {name}: {use!r} is not one of {', '.join(SPECIAL_USES)}")
            if not name or name.upper() == "INBOX" or any(c in name for c in "/\\*%") or ".." in name \
                    or name.startswith(".") or name.endswith(".") or any(ord(c) < 0x20 for c in name):
                raise ValueError(f"special_use: {name!r} is not a valid folder name")


def sandbox_yaml(ctx: SandboxContext) -> str:
    """imapd.yaml for postroom-dev's sandbox: IMAP with STARTTLS and IMAPS with
    implicit TLS, on loopback."""
    return f"""\
# postroom-dev sandbox: IMAP on loopback.
listeners:
  imap:
    endpoint: tcp:{ctx.port("imap")}:interface=127.0.0.1
    tls: starttls
  imaps:
    endpoint: tcp:{ctx.port("imaps")}:interface=127.0.0.1
    tls: implicit
"""
