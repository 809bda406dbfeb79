"""mda.sieve.commands -- the base language of RFC 5228: control commands (if, stop),
actions (keep, discard, redirect) and tests (address, header, exists, size, allof,
anyof, not, true, false), with the comparator, match-type and address-part tags the
extensions extend.

SECURITY: runs untrusted scripts over untrusted messages; every loop here walks a
bounded list (header values are capped by the Message, key lists by the parser).
"""

from __future__ import annotations

from .interpreter import (BUILTIN_COMPARATORS, COMPARATORS, RELATIONAL, Context, Discard,
                          SieveRuntimeError, StopScript, address_part, parse_addresses)
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.group_tag("comparator", TagSpec("comparator", "string", "comparator"))
for _name in ("is", "contains", "matches"):
    REGISTRY.group_tag("match", TagSpec(_name, None, "match"))
for _name in ("all", "localpart", "domain"):
    REGISTRY.group_tag("addrpart", TagSpec(_name, None, "addrpart"))

#: header names the address test accepts (RFC 5228 5.1: headers that contain addresses)
ADDRESS_HEADERS = frozenset({
    "from", "to", "cc", "bcc", "sender", "reply-to", "resent-from", "resent-to", "resent-cc",
    "resent-bcc", "resent-sender", "resent-reply-to", "return-path", "delivered-to",
    "envelope-to", "x-original-to", "disposition-notification-to", "errors-to", "mail-followup-to",
    "mail-reply-to", "original-recipient", "x-envelope-to", "x-envelope-from", "x-beenthere",
    "list-post", "apparently-to",
})


# -- checks shared by tests ------------------------------------------------------------------


def check_match(node: Node, checker: Checker) -> None:
    """The comparator exists and was required; the match type suits it; a relational
    operator is valid; a constant regular expression compiles."""
    name = node.tags.get("comparator", "i;ascii-casemap")
    if "comparator" in node.tags:
        if name not in COMPARATORS:
            raise checker.fail(node, f"unknown comparator {name!r}")
        if name not in BUILTIN_COMPARATORS and not checker.has(f"comparator-{name}"):
            raise checker.fail(node, f"the comparator {name} needs require \"comparator-{name}\"")
    mtype = node.groups.get("match", "is")
    if mtype in ("contains", "matches", "regex") and not COMPARATORS[name].ordered_substrings:
        raise checker.fail(node, f":{mtype} cannot be used with the comparator {name}")
    if mtype in ("count", "value"):
        op = str(node.tags[mtype]).lower()
        if op not in RELATIONAL:
            raise checker.fail(node, f"relational operator {op!r} is not one of {', '.join(RELATIONAL)}")
    if mtype == "regex":
        from .ext_regex import check_constant_patterns
        check_constant_patterns(node, checker)


def check_no_empty_header_names(node: Node, checker: Checker, index: int = 0) -> None:
    for name in node.positional[index]:
        if not name or any(c in name for c in ": \t\r\n") and "${" not in name:
            raise checker.fail(node, f"{name!r} is not a header name")


# -- values -------------------------------------------------------------------------------------


def header_fields(ctx: Context, node: Node, names: list[str]) -> list[str]:
    """Decoded values of the named headers, narrowed by :index/:last (RFC 5260 6)."""
    values: list[str] = []
    index = node.tags.get("index")
    for name in names:
        found = ctx.message.header(name)
        if index is not None:
            i = index - 1
            if node.tags.get("last"):
                i = len(found) - index
            found = [found[i]] if 0 <= i < len(found) else []
        values.extend(found)
    return values


def address_values(ctx: Context, node: Node, addresses: list[str]) -> list[str]:
    part = node.groups.get("addrpart", "all")
    out = []
    for a in addresses:
        v = address_part(a, part, ctx.env.recipient_delimiter)
        if v is not None:
            out.append(v)
    return out


# -- control ----------------------------------------------------------------------------------


def run_if(node: Node, ctx: Context) -> None:
    for test, block in node.branches:
        if test is None or ctx.test(test):
            ctx.execute(block)
            return


def run_stop(node: Node, ctx: Context) -> None:
    raise StopScript()


REGISTRY.command(Spec("if", "command", run_if, block=True, tests="one"))
REGISTRY.command(Spec("stop", "command", run_stop))


# -- actions ------------------------------------------------------------------------------------


def action_flags(node: Node, ctx: Context) -> tuple[str, ...] | None:
    """The flags for keep/fileinto: :flags if given, else the internal variable if
    imap4flags is in use, else none."""
    if "flags" in node.tags:
        from .ext_imap4flags import normalize_flags
        return tuple(normalize_flags(ctx.strings(node, "flags")))
    if ctx.has("imap4flags"):
        return tuple(ctx.flags)
    return None


def run_keep(node: Node, ctx: Context) -> None:
    ctx.file_into("INBOX", action_flags(node, ctx), False, node)
    ctx.implicit_keep = False


def run_discard(node: Node, ctx: Context) -> None:
    ctx.count_action(node)
    ctx.implicit_keep = False


def check_redirect(node: Node, checker: Checker) -> None:
    address = node.positional[0]
    if "${" not in address and not valid_address(address):
        raise checker.fail(node, f"redirect needs a valid address, not {address!r}")


def valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at and local and domain) and not any(c in address for c in " \t\r\n<>,;\"") and len(address) <= 320


def run_redirect(node: Node, ctx: Context) -> None:
    address = ctx.string(node, 0)
    if not valid_address(address):
        raise ctx.fail(f"redirect to an invalid address {address!r}", node)
    ctx.redirect(address, node)
    if not node.tags.get("copy"):
        ctx.implicit_keep = False


REGISTRY.command(Spec("keep", "command", run_keep, action=True))
REGISTRY.command(Spec("discard", "command", run_discard, action=True))
REGISTRY.command(Spec("redirect", "command", run_redirect, positional=("string",), check=check_redirect, action=True))


# -- tests ----------------------------------------------------------------------------------------


def test_address(node: Node, ctx: Context) -> bool:
    names = ctx.strings(node, 0)
    addresses: list[str] = []
    for value in header_fields(ctx, node, names):
        addresses.extend(parse_addresses(value))
    return ctx.match(node, address_values(ctx, node, addresses), node.positional[1])


def check_address(node: Node, checker: Checker) -> None:
    check_match(node, checker)
    for name in node.positional[0]:
        if "${" not in name and name.lower() not in ADDRESS_HEADERS:
            raise checker.fail(node, f"address cannot test {name!r}: it is not a header that holds addresses")


def test_header(node: Node, ctx: Context) -> bool:
    return ctx.match(node, header_fields(ctx, node, ctx.strings(node, 0)), node.positional[1])


def check_header(node: Node, checker: Checker) -> None:
    check_match(node, checker)
    check_no_empty_header_names(node, checker)


def test_exists(node: Node, ctx: Context) -> bool:
    return all(ctx.message.has_header(n) for n in ctx.strings(node, 0))


def test_size(node: Node, ctx: Context) -> bool:
    limit = node.positional[0]
    if "over" in node.tags:
        return ctx.message.size > limit
    return ctx.message.size < limit


def check_size(node: Node, checker: Checker) -> None:
    if "size" not in node.groups:
        raise checker.fail(node, "size needs :over or :under")


def test_allof(node: Node, ctx: Context) -> bool:
    return all(ctx.test(t) for t in node.tests)


def test_anyof(node: Node, ctx: Context) -> bool:
    return any(ctx.test(t) for t in node.tests)


def test_not(node: Node, ctx: Context) -> bool:
    return not ctx.test(node.tests[0])


REGISTRY.test(Spec("address", "test", test_address, positional=("stringlist", "stringlist"),
                   uses=("comparator", "addrpart", "match"), check=check_address))
REGISTRY.test(Spec("header", "test", test_header, positional=("stringlist", "stringlist"),
                   uses=("comparator", "match"), check=check_header))
REGISTRY.test(Spec("exists", "test", test_exists, positional=("stringlist",),
                   check=lambda n, c: check_no_empty_header_names(n, c)))
REGISTRY.test(Spec("size", "test", test_size, positional=("number",), check=check_size,
                   tags={"over": TagSpec("over", None, "size"), "under": TagSpec("under", None, "size")}))
REGISTRY.test(Spec("allof", "test", test_allof, tests="list"))
REGISTRY.test(Spec("anyof", "test", test_anyof, tests="list"))
REGISTRY.test(Spec("not", "test", test_not, tests="one"))
REGISTRY.test(Spec("true", "test", lambda n, c: True))
REGISTRY.test(Spec("false", "test", lambda n, c: False))

__all__ = ["ADDRESS_HEADERS", "Discard", "SieveRuntimeError", "action_flags", "address_values",
           "check_match", "header_fields", "valid_address"]
