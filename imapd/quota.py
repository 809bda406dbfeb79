"""imapd.quota -- QUOTA answers (RFC 9208) from the Maildir++ quota.

One quota root, "", for the whole maildir: its usage is the `maildirsize` file the
MDA keeps (`common.storage`), its limits the user's quota rules
(`UserRecord.quota()`). Resources: STORAGE in units of 1024 octets and MESSAGE;
only a resource with a limit is reported, as RFC 9208 section 5.2 asks. No I/O.
"""

from __future__ import annotations

from .response import astring

ROOT = ""
RESOURCES = ("STORAGE", "MESSAGE")


def resources(limits: tuple[int | None, int | None], usage: tuple[int, int]) -> list[tuple[str, int, int]]:
    """[(resource, usage, limit)] for the limited resources; bytes become KiB."""
    max_bytes, max_count = limits
    used_bytes, used_count = usage
    out = []
    if max_bytes is not None:
        out.append(("STORAGE", max(0, used_bytes) // 1024, max_bytes // 1024))
    if max_count is not None:
        out.append(("MESSAGE", max(0, used_count), max_count))
    return out


def quota_response(root: str, items: list[tuple[str, int, int]]) -> bytes:
    body = " ".join(f"{name} {used} {limit}" for name, used, limit in items)
    return b"* QUOTA " + astring(root) + b" (" + body.encode() + b")\r\n"


def quotaroot_response(wire_mailbox: bytes, roots: list[str]) -> bytes:
    return b"* QUOTAROOT " + wire_mailbox + b"".join(b" " + astring(r) for r in roots) + b"\r\n"
