"""common.config.pop3d -- the schema of pop3d.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from .core import Listener, SandboxContext, doc
from .loader import Duration

#: What uidl_format may contain: %u (IMAP UID), %v (UIDVALIDITY), %f (the maildir file's
#: base name), each with an optional width and X/x for hexadecimal, and %%.
UIDL_FORMAT_RE = re.compile(r"%(?:%|0?\d{0,2}[Xx]?[uvf])")


@dataclass(frozen=True)
class Pop3dConfig:
    listeners: Mapping[str, Listener] = doc("named listening endpoints", default_factory=dict)
    uidl_format: str = doc(
        "how UIDL values are built: %u IMAP UID, %v UIDVALIDITY, %f maildir base name, with an optional "
        "width and X (hex, lower case as Dovecot prints it), as Dovecot's pop3_uidl_format; the default is Dovecot's default, so users "
        "moving from Dovecot are not served every message again", default="%08Xu%08Xv")
    mark_seen: bool = doc("give retrieved messages (RETR) the \\Seen flag, so IMAP clients show them as read",
                          default=True)
    idle_timeout: Duration = doc("close a session idle this long (RFC 1939: at least 10 minutes)",
                                 default=Duration(600))
    login_delay: Duration = doc("minimum time between two logins of one user (advertised as LOGIN-DELAY, "
                                "refused with [LOGIN-DELAY]); 0 for none", default=Duration(0))
    max_line_length: int = doc("longest command line accepted, in bytes (RFC 2449: 255 for commands; "
                               "SASL responses are longer)", default=8192)
    max_commands: int = doc("commands one session may send before it is closed", default=200000)
    max_bad_commands: int = doc("unknown or malformed commands a session may send before it is closed",
                                default=20)
    max_auth_failures: int = doc("failed logins on one connection before it is closed", default=3)
    max_messages: int = doc("most messages listed in one session (the oldest first); the rest wait for "
                            "the next session", default=100000)

    def __post_init__(self):
        leftover = UIDL_FORMAT_RE.sub("", self.uidl_format)
        if "%" in leftover or not UIDL_FORMAT_RE.search(self.uidl_format):
            raise ValueError("uidl_format: use %u, %v, %f (with optional width and X) and %%, "
                             "and include at least one of them")
        for name in ("max_line_length", "max_commands", "max_bad_commands", "max_auth_failures", "max_messages"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.max_line_length < 255:
            raise ValueError("max_line_length must be at least 255 (RFC 2449)")


def sandbox_yaml(ctx: SandboxContext) -> str:
    """pop3d.yaml for postroom-dev's sandbox: POP3 with STLS and POP3S, on loopback."""
    return f"""\
# postroom-dev sandbox: every listener on loopback.
listeners:
  pop3:
    endpoint: tcp:{ctx.port("pop3")}:interface=127.0.0.1
    tls: starttls
  pop3s:
    endpoint: tcp:{ctx.port("pop3s")}:interface=127.0.0.1
    tls: implicit
"""
