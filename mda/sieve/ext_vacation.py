"""mda.sieve.ext_vacation -- the "vacation" action (RFC 5230, and :seconds from
RFC 6131). The script only asks for a reply; mda.vacation decides whether one is
sent (once per sender per period, never to lists, bulk, auto-submitted mail or the
null sender, RFC 3834) and sends it through the MTA."""

from __future__ import annotations

from .commands import valid_address
from .interpreter import Context, Vacation
from .parser import REGISTRY, Checker, Node, Spec, TagSpec

REGISTRY.capability("vacation", "vacation-seconds")
REGISTRY.implies["vacation-seconds"] = ("vacation",)   # RFC 6131 3

MAX_REASON = 64 * 1024


def check_vacation(node: Node, checker: Checker) -> None:
    frm = node.tags.get("from")
    if frm is not None and "${" not in frm and not valid_address(_bare(frm)):
        raise checker.fail(node, f"vacation :from needs a valid address, not {frm!r}")
    if len(node.positional[0]) > MAX_REASON:
        raise checker.fail(node, "vacation reason too long")


def _bare(address: str) -> str:
    import email.utils
    return email.utils.parseaddr(address)[1] or address


def run_vacation(node: Node, ctx: Context) -> None:
    ctx.count_action(node)
    if ctx.result.vacation is not None:
        raise ctx.fail("only one vacation per message", node)
    if ctx.result.reject is not None:
        raise ctx.fail("vacation cannot be combined with reject", node)
    env = ctx.env
    if "seconds" in node.tags:
        seconds = max(int(node.tags["seconds"]), 0)
    else:
        days = int(node.tags.get("days", env.vacation_default_days))
        days = min(max(days, env.vacation_min_days), env.vacation_max_days)
        seconds = days * 86400
    seconds = min(seconds, env.vacation_max_days * 86400)
    reason = ctx.string(node, 0)
    subject = ctx.string(node, "subject")
    from_ = ctx.string(node, "from")
    mime = bool(node.tags.get("mime"))
    handle = ctx.string(node, "handle")
    if handle is None:
        # RFC 5230 4.2: without :handle, the same reply is identified by its contents.
        handle = "\0".join([subject or "", from_ or "", "mime" if mime else "", reason])
    ctx.result.vacation = Vacation(reason, seconds, subject, from_, tuple(ctx.strings(node, "addresses")), mime, handle)


REGISTRY.command(Spec("vacation", "command", run_vacation, extension="vacation", positional=("string",), check=check_vacation,
                      action=True, tags={
                          "days": TagSpec("days", "number", "period"),
                          "seconds": TagSpec("seconds", "number", "period", "vacation-seconds"),
                          "subject": TagSpec("subject", "string"),
                          "from": TagSpec("from", "string"),
                          "addresses": TagSpec("addresses", "stringlist"),
                          "mime": TagSpec("mime"),
                          "handle": TagSpec("handle", "string"),
                      }))
