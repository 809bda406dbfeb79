"""mda.sieve.ext_imap4flags -- IMAP flags (RFC 5232): setflag, addflag, removeflag,
the hasflag test, and :flags on keep and fileinto. Without a variable name the
commands change the internal variable, which the implicit keep uses."""

from __future__ import annotations

from collections.abc import Iterable

from .commands import check_match
from .interpreter import Context
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("imap4flags")


def normalize_flags(values: Iterable[str]) -> list[str]:
    """Split on spaces, drop duplicates (case-insensitively), keep the first spelling."""
    seen: dict[str, str] = {}
    for value in values:
        for flag in value.split():
            if flag.lower() not in seen and len(seen) < 64 and len(flag) <= 128:
                seen[flag.lower()] = flag
    return list(seen.values())


def _current(node: Node, ctx: Context) -> tuple[str | None, list[str]]:
    if len(node.positional) == 2:
        name = ctx.string(node, 0)
        return name, normalize_flags([ctx.get_variable(name)])
    return None, list(ctx.flags)


def _store(name: str | None, flags: list[str], node: Node, ctx: Context) -> None:
    if name is None:
        ctx.flags = flags
    else:
        ctx.set_variable(name, " ".join(flags), node)


def run_flag_command(node: Node, ctx: Context) -> None:
    name, current = _current(node, ctx)
    given = normalize_flags(ctx.strings(node, len(node.positional) - 1))
    if node.name == "setflag":
        new = given
    elif node.name == "addflag":
        new = normalize_flags(current + given)
    else:
        gone = {f.lower() for f in given}
        new = [f for f in current if f.lower() not in gone]
    _store(name, new, node, ctx)


def check_flag_command(node: Node, checker: Checker) -> None:
    if len(node.positional) == 2 and not checker.has("variables"):
        raise checker.fail(node, f"{node.name} with a variable name needs require \"variables\"")


def test_hasflag(node: Node, ctx: Context) -> bool:
    if len(node.positional) == 2:
        values = normalize_flags(ctx.get_variable(n) for n in ctx.strings(node, 0))
    else:
        values = list(ctx.flags)
    return ctx.match(node, values, normalize_flags(ctx.strings(node, len(node.positional) - 1)))


def check_hasflag(node: Node, checker: Checker) -> None:
    check_match(node, checker)
    check_flag_command(node, checker)


for _name in ("setflag", "addflag", "removeflag"):
    REGISTRY.command(Spec(_name, "command", run_flag_command, extension="imap4flags",
                          variants=(("stringlist",), ("string", "stringlist")), check=check_flag_command))
REGISTRY.test(Spec("hasflag", "test", test_hasflag, extension="imap4flags",
                   variants=(("stringlist",), ("stringlist", "stringlist")),
                   uses=("comparator", "match"), check=check_hasflag))
REGISTRY.add_tag("command", "keep", TagSpec("flags", "stringlist", None, "imap4flags"))
REGISTRY.add_tag("command", "fileinto", TagSpec("flags", "stringlist", None, "imap4flags"))
