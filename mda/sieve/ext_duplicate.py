"""mda.sieve.ext_duplicate -- the "duplicate" test (RFC 7352).

True when a message with the same unique ID (the Message-ID by default, or the
:header field, or the :uniqueid value) was seen within :seconds for the same
:handle. The ID is recorded only when the message is delivered (mda.delivery
commits `Result.duplicates`), so a failed delivery does not make the retry look
like a duplicate. The store lives in the user's state folder.
"""

from __future__ import annotations

import hashlib

from .interpreter import Context, DuplicateRecord
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("duplicate")


def check_duplicate(node: Node, checker: Checker) -> None:
    if "seconds" in node.tags and node.tags["seconds"] < 0:
        raise checker.fail(node, ":seconds cannot be negative")


def test_duplicate(node: Node, ctx: Context) -> bool:
    if "uniqueid" in node.tags:
        value = ctx.string(node, "uniqueid")
    else:
        header = ctx.string(node, "header", "Message-ID")
        found = ctx.message.header(header)
        value = found[0].strip() if found else ""
        if not value:
            return False
    handle = ctx.string(node, "handle", "")
    key = hashlib.sha256(f"{handle}\0{value}".encode("utf-8", "surrogatepass")).hexdigest()
    seconds = node.tags.get("seconds", ctx.env.duplicate_default_seconds)
    seconds = min(int(seconds), ctx.env.duplicate_max_seconds)
    last = bool(node.tags.get("last"))
    # Within one run the same ID is a duplicate the second time it is tested.
    pending = any(r.key == key for r in ctx.result.duplicates)
    seen = pending or ctx.env.duplicate_seen(key)
    if not pending and (not seen or last):
        ctx.result.duplicates.append(DuplicateRecord(key, seconds, last))
    return seen


REGISTRY.test(Spec("duplicate", "test", test_duplicate, extension="duplicate", check=check_duplicate, tags={
    "handle": TagSpec("handle", "string"),
    "header": TagSpec("header", "string", "id"),
    "uniqueid": TagSpec("uniqueid", "string", "id"),
    "seconds": TagSpec("seconds", "number"),
    "last": TagSpec("last"),
}))
