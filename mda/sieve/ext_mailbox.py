"""mda.sieve.ext_mailbox -- RFC 5490: the mailboxexists test and fileinto :create.

Whether a folder may be created also depends on configuration (create_folders);
delivery decides that."""

from __future__ import annotations

from .interpreter import Context
from .parser import REGISTRY, Node, Spec, TagSpec

REGISTRY.capability("mailbox")


def test_mailboxexists(node: Node, ctx: Context) -> bool:
    return all(ctx.env.mailbox_exists(name) for name in ctx.strings(node, 0))


REGISTRY.test(Spec("mailboxexists", "test", test_mailboxexists, extension="mailbox", positional=("stringlist",)))
REGISTRY.add_tag("command", "fileinto", TagSpec("create", None, None, "mailbox"))
