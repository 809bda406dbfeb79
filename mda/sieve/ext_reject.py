"""mda.sieve.ext_reject -- "reject" and "ereject" (RFC 5429).

Both refuse the message with a reason. How the refusal reaches the sender is
delivery's business: during LMTP or a pipe command it is a permanent 550 5.7.1
(the MTA bounces it); from the spool consumer the recipient is reported bounced.
"""

from __future__ import annotations

from .interpreter import Context
from .parser import REGISTRY, Node, Spec

REGISTRY.capability("reject", "ereject")


def run_reject(node: Node, ctx: Context) -> None:
    ctx.reject(ctx.string(node, 0), node.name == "ereject", node)


REGISTRY.command(Spec("reject", "command", run_reject, extension="reject", positional=("string",), action=True))
REGISTRY.command(Spec("ereject", "command", run_reject, extension="ereject", positional=("string",), action=True))
