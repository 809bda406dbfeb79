"""mda.sieve.ext_variables -- RFC 5229: ${name} in strings, the "set" action with its
modifiers, the "string" test, and match variables ${0}..${9} from :matches (and
:regex). Values are cut to the configured maximum size (Limits.max_variable_size),
as RFC 5229 section 3 allows."""

from __future__ import annotations

import re

from .commands import check_match
from .interpreter import Context
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("variables")

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?\Z")

#: modifiers by precedence: the higher group is applied first (RFC 5229 4.1)
MODIFIERS = {
    "lower": 40, "upper": 40, "lowerfirst": 30, "upperfirst": 30,
    "quotewildcard": 20, "quoteregex": 20, "length": 10,
}


def _apply(modifier: str, value: str) -> str:
    if modifier == "lower":
        return value.lower()
    if modifier == "upper":
        return value.upper()
    if modifier == "lowerfirst":
        return value[:1].lower() + value[1:]
    if modifier == "upperfirst":
        return value[:1].upper() + value[1:]
    if modifier == "quotewildcard":
        return re.sub(r"([*?\\])", r"\\\1", value)
    if modifier == "quoteregex":
        from .ext_regex import quote_regex
        return quote_regex(value)
    if modifier == "length":
        return str(len(value))
    raise ValueError(modifier)


def valid_variable_name(name: str) -> bool:
    if not _NAME.match(name):
        return False
    return "." not in name or name.lower().startswith("global.")


def check_set(node: Node, checker: Checker) -> None:
    name = node.positional[0]
    if not valid_variable_name(name):
        raise checker.fail(node, f"{name!r} is not a valid variable name")
    if name.lower().startswith("global.") and not checker.has("include"):
        raise checker.fail(node, "the global. namespace needs require \"include\"")


def run_set(node: Node, ctx: Context) -> None:
    value = ctx.string(node, 1)
    for modifier in sorted((m for m in node.tags if m in MODIFIERS), key=lambda m: -MODIFIERS[m]):
        value = _apply(modifier, value)
    ctx.set_variable(node.positional[0], value, node)


def test_string(node: Node, ctx: Context) -> bool:
    values = ctx.strings(node, 0)
    if node.groups.get("match") == "count":
        values = [v for v in values if v]   # RFC 5229 5: empty strings are not counted
    return ctx.match(node, values, node.positional[1])


_set_tags = {}
for _mod, _prec in MODIFIERS.items():
    _set_tags[_mod] = TagSpec(_mod, None, f"modifier{_prec}", "regex" if _mod == "quoteregex" else None)

REGISTRY.command(Spec("set", "command", run_set, extension="variables", positional=("string", "string"),
                      tags=_set_tags, check=check_set))
REGISTRY.test(Spec("string", "test", test_string, extension="variables", positional=("stringlist", "stringlist"),
                   uses=("comparator", "match"), check=check_match))
