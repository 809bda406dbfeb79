"""mda.sieve.ext_envelope -- the "envelope" test (RFC 5228 5.4): the SMTP envelope's
from (the reverse-path, "" when null) and to (the recipient being delivered)."""

from __future__ import annotations

from .commands import address_values, check_match
from .interpreter import Context
from .parser import REGISTRY, Checker, Node, Spec

REGISTRY.capability("envelope")

ENVELOPE_PARTS = ("from", "to", "auth")


def check_envelope(node: Node, checker: Checker) -> None:
    check_match(node, checker)
    for part in node.positional[0]:
        if "${" not in part and part.lower() not in ENVELOPE_PARTS:
            raise checker.fail(node, f"unknown envelope part {part!r} (from, to or auth)")


def test_envelope(node: Node, ctx: Context) -> bool:
    addresses: list[str] = []
    for part in ctx.strings(node, 0):
        part = part.lower()
        if part == "from":
            addresses.append(ctx.envelope.sender)
        elif part == "to":
            addresses.append(ctx.envelope.recipient)
        elif part == "auth" and ctx.envelope.auth:
            addresses.append(ctx.envelope.auth)
    values = address_values(ctx, node, addresses)
    if node.groups.get("match") == "count":
        values = [v for v in values if v]
    return ctx.match(node, values, node.positional[1])


REGISTRY.test(Spec("envelope", "test", test_envelope, extension="envelope", positional=("stringlist", "stringlist"),
                   uses=("comparator", "addrpart", "match"), check=check_envelope))
