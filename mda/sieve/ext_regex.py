"""mda.sieve.ext_regex -- the :regex match type (draft-ietf-sieve-regex) and the
:quoteregex modifier of "set". Patterns are POSIX extended regular expressions,
run with the `regex` module (Python's re syntax; the common subset behaves as
POSIX does); with the i;ascii-casemap comparator matching ignores case. Groups fill
${1}..${9}.

SECURITY: patterns come from the script's owner; they run only against bounded
values (header values and body text are capped by the interpreter) and within the
script's run time (the module's match timeout)."""

from __future__ import annotations

import re

import regex

from .interpreter import regex_compile
from .parser import REGISTRY, Checker, Node, TagSpec

REGISTRY.capability("regex")
REGISTRY.group_tag("match", TagSpec("regex", None, "match", "regex"))

MAX_PATTERN = 1024


def check_constant_patterns(node: Node, checker: Checker) -> None:
    """Keys that contain no variable must compile now, so errors show in `check`."""
    keys = node.positional[-1]
    for key in keys:
        if len(key) > MAX_PATTERN:
            raise checker.fail(node, "regular expression too long")
        if checker.has("variables") and "${" in key:
            continue
        try:
            regex_compile(key, False)
        except regex.error as e:
            raise checker.fail(node, f"bad regular expression {key!r}: {e}") from None


def quote_regex(value: str) -> str:
    return re.sub(r"([\\^$.|?*+()\[\]{}])", r"\\\1", value)
