"""mda.sieve.ext_relational -- :count and :value (RFC 5231), and the comparator
i;ascii-numeric (RFC 4790) they are mostly used with."""

from __future__ import annotations

from .parser import REGISTRY, TagSpec

REGISTRY.capability("relational", "comparator-i;ascii-numeric")
REGISTRY.group_tag("match", TagSpec("count", "string", "match", "relational"))
REGISTRY.group_tag("match", TagSpec("value", "string", "match", "relational"))
