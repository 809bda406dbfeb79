"""common.config.imapd -- the schema of imapd.yaml.

Lives in common so that postroom-config can check every file without importing a daemon.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from .core import Listener, doc


@dataclass(frozen=True)
class ImapdConfig:
    listeners: Mapping[str, Listener] = doc("named listening endpoints", default_factory=dict)
