"""mda.sieve.ext_fileinto -- "fileinto" (RFC 5228 4.1): file the message into a folder.

The folder name is checked by storage when delivering (it can never leave the
user's maildir); here only its form: not empty and without control characters.
"""

from __future__ import annotations

from .commands import action_flags
from .interpreter import Context
from .parser import REGISTRY, Checker, Node, Spec

REGISTRY.capability("fileinto")


def check_mailbox_name(name: str) -> str | None:
    """Why name cannot be a folder, or None."""
    if not name:
        return "an empty folder name"
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        return "a folder name with control characters"
    if len(name) > 255:
        return "a folder name longer than 255 characters"
    return None


def check_fileinto(node: Node, checker: Checker) -> None:
    name = node.positional[0]
    problem = None if "${" in name else check_mailbox_name(name)
    if problem:
        raise checker.fail(node, f"fileinto: {problem}")


def run_fileinto(node: Node, ctx: Context) -> None:
    mailbox = ctx.string(node, 0)
    problem = check_mailbox_name(mailbox)
    if problem:
        raise ctx.fail(f"fileinto: {problem}", node)
    ctx.file_into(mailbox, action_flags(node, ctx), bool(node.tags.get("create")), node)
    if not node.tags.get("copy"):
        ctx.implicit_keep = False


REGISTRY.command(Spec("fileinto", "command", run_fileinto, extension="fileinto", positional=("string",),
                      check=check_fileinto, action=True))
