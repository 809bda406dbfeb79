"""common.config.mta -- the schema of mta.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .core import Listener, doc
from .mta_checks import ChecksConfig, DnsConfig
from .mta_queue import QueueConfig


@dataclass(frozen=True)
class MtaConfig:
    listeners: Mapping[str, Listener] = doc("named listening endpoints", default_factory=dict)
    checks: ChecksConfig = field(default_factory=ChecksConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
