"""mda.sieve.ext_copy -- ":copy" (RFC 3894) on redirect and fileinto: the action no
longer cancels the implicit keep."""

from __future__ import annotations

from .parser import REGISTRY, TagSpec

REGISTRY.capability("copy")
REGISTRY.add_tag("command", "redirect", TagSpec("copy", None, None, "copy"))
REGISTRY.add_tag("command", "fileinto", TagSpec("copy", None, None, "copy"))
