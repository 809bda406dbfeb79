"""common.config.mda -- the schema of mda.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .core import Listener, SandboxContext, doc
from .loader import Duration, Size


@dataclass(frozen=True)
class SieveConfig:
    enabled: bool = doc("run Sieve scripts at all (false: everything goes to INBOX or the +detail folder)", default=True)
    user_script: str = doc("each user's active script; ~ is the user's home (the maildir's parent when the user has none)", default="~/.sieve")
    user_dir: str = doc("the folder :personal includes are read from; ~ as above", default="~/sieve")
    global_dir: Path | None = doc("the folder :global includes are read from", default=None)
    before: tuple[Path, ...] = doc("scripts run before the user's, in order (their actions add up)", default=())
    after: tuple[Path, ...] = doc("scripts run after the user's, in order", default=())
    max_script_size: Size = doc("a larger script is an error (the message goes to INBOX)", default=Size(1 << 20))
    max_actions: int = doc("actions one message may take (keep, fileinto, redirect...)", default=32)
    max_redirects: int = doc("redirects one message may take", default=4)
    max_include_depth: int = doc("how deeply includes may nest", default=8)
    max_includes: int = doc("includes one message may run", default=32)
    max_variable_size: Size = doc("longer variable values are cut (RFC 5229 allows it)", default=Size(4096))
    max_run_time: Duration = doc("a script running longer is stopped and the message goes to INBOX", default=Duration(1))
    vacation_default_days: int = doc("vacation :days when a script gives none", default=7)
    vacation_min_days: int = doc("smallest :days honoured", default=1)
    vacation_max_days: int = doc("largest :days honoured", default=90)
    duplicate_default_period: Duration = doc("duplicate :seconds when a script gives none", default=Duration(7 * 86400))

    def __post_init__(self):
        if not 1 <= self.vacation_min_days <= self.vacation_default_days <= self.vacation_max_days:
            raise ValueError("need 1 <= vacation_min_days <= vacation_default_days <= vacation_max_days")


@dataclass(frozen=True)
class ConsumerConfig:
    enabled: bool = doc("deliver the MTA's hand-offs from the spool's mda/ folder", default=True)
    scan_interval: Duration = doc("how often the folder is scanned besides inotify (the only way on FreeBSD)", default=Duration(5))
    workers: int = doc("threads per consumer process delivering hand-offs in parallel (their fsync waits "
                       "overlap; more than two mostly wait for each other)", default=1)
    processes: int = doc("consumer processes sharing the hand-offs, each taking those of its share of queue IDs "
                         "(0: one per CPU)", default=1)

    def __post_init__(self):
        if not 1 <= self.workers <= 64:
            raise ValueError("workers must be between 1 and 64")
        if not 0 <= self.processes <= 64:
            raise ValueError("processes must be between 0 (one per CPU) and 64")


@dataclass(frozen=True)
class MdaConfig:
    listeners: Mapping[str, Listener] = doc("LMTP listeners (RFC 2033), e.g. unix:/run/postroom/lmtp.sock:mode=660 with tls: none", default_factory=dict)
    consumer: ConsumerConfig = field(default_factory=ConsumerConfig)
    sieve: SieveConfig = field(default_factory=SieveConfig)
    create_folders: bool = doc("create a folder on demand when a Sieve rule or a +detail asks for one", default=True)
    detail_folders: bool = doc("deliver user+detail@domain into the folder named detail (when no Sieve rule decides)", default=False)
    recipient_delimiter: str = doc("separates user and detail in user+detail@domain; empty disables", default="+")
    quota_temporary: bool = doc("over quota is a temporary 452 4.2.2 (retry later) instead of a permanent 552 5.2.2", default=False)
    default_quota_storage: Size | None = doc("storage limit for users whose entry sets none", default=None)
    default_quota_messages: int | None = doc("message limit for users whose entry sets none", default=None)
    max_message_size: Size = doc("larger messages are refused (LMTP and postroom-deliver)", default=Size(50 << 20))
    max_hops: int = doc("a message with more Delivered-To headers than this is refused as a loop (5.4.6)", default=20)
    lmtp_max_recipients: int = doc("recipients per LMTP transaction", default=1000)
    lmtp_timeout: Duration = doc("an idle LMTP connection is closed after this", default=Duration(300))

    def __post_init__(self):
        if len(self.recipient_delimiter) > 1:
            raise ValueError("recipient_delimiter must be one character or empty")


def sandbox_yaml(ctx: SandboxContext) -> str:
    """mda.yaml for postroom-dev's sandbox: the spool consumer and LMTP on a unix socket."""
    return f"""\
# postroom-dev sandbox: LMTP on a unix socket, the spool consumer on.
listeners:
  lmtp:
    endpoint: unix:{ctx.lmtp_socket}:mode=660
    tls: none
consumer:
  enabled: true
  processes: 0   # one per CPU
create_folders: true
"""
