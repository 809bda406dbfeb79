"""common.config.mta_checks -- the `checks:` section of mta.yaml (SPF, DKIM, DMARC, DNSBL, DNS)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChecksConfig:
    pass
