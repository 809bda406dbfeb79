"""mda.sieve.ext_index -- :index N and :last (RFC 5260 section 6) on header, address
and date: test only the Nth occurrence of a header field, counted from the top
(or from the bottom with :last)."""

from __future__ import annotations

from .parser import REGISTRY, Checker, Node, TagSpec

REGISTRY.capability("index")


def check_index(node: Node, checker: Checker) -> None:
    if node.tags.get("last") and "index" not in node.tags:
        raise checker.fail(node, ":last needs :index")
    if "index" in node.tags and node.tags["index"] < 1:
        raise checker.fail(node, ":index counts from 1")


def add_index_tags(test: str) -> None:
    REGISTRY.add_tag("test", test, TagSpec("index", "number", None, "index"))
    REGISTRY.add_tag("test", test, TagSpec("last", None, None, "index"))
    spec = REGISTRY.tests[test]
    original = spec.check

    def check(node: Node, checker: Checker) -> None:
        check_index(node, checker)
        if original:
            original(node, checker)

    spec.check = check


for _test in ("header", "address"):
    add_index_tags(_test)
