"""common.config.mta_queue -- the queue manager's sections of mta.yaml (queue, transports, DKIM signing)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class QueueConfig:
    pass
