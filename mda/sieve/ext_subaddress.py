"""mda.sieve.ext_subaddress -- :user and :detail address parts (RFC 5233), split on
the configured recipient delimiter ("+" by default). :detail of an address with no
delimiter does not match anything, not even ""."""

from __future__ import annotations

from .parser import REGISTRY, TagSpec

REGISTRY.capability("subaddress")
REGISTRY.group_tag("addrpart", TagSpec("user", None, "addrpart", "subaddress"))
REGISTRY.group_tag("addrpart", TagSpec("detail", None, "addrpart", "subaddress"))
