"""mda.sieve.ext_body -- the "body" test (RFC 5173) with :raw, :content and :text.

:text (the default) matches the decoded text of every text/* part (HTML with its
tags removed); :content "type" matches parts of those MIME types ("" for all,
"text" for text/*, "text/html" exactly); :raw matches the undecoded body.

SECURITY: the message is untrusted; the text matched is capped at MAX_BODY_TEXT
characters in all, and MIME parsing is done by the standard library's parser."""

from __future__ import annotations

import html
import re

from .commands import check_match
from .interpreter import Context
from .parser import REGISTRY, Node, Spec, TagSpec

REGISTRY.capability("body")

MAX_BODY_TEXT = 1 << 20
_TAGS = re.compile(r"<[^>]*>")


def _decoded(part) -> str:
    payload = part.get_payload(decode=True)
    if payload is None:
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")


def _type_matches(ctype: str, wanted: str) -> bool:
    wanted = wanted.lower().strip()
    if not wanted:
        return True
    if "/" in wanted:
        return ctype == wanted
    return ctype.split("/", 1)[0] == wanted


def body_values(node: Node, ctx: Context) -> list[str]:
    transform = node.groups.get("transform", "text")
    if transform == "raw":
        return [ctx.message.body[:MAX_BODY_TEXT].decode("utf-8", "replace")]
    wanted = ctx.strings(node, "content") if transform == "content" else ["text"]
    values: list[str] = []
    total = 0
    for part in ctx.message.parsed.walk():
        ctype = part.get_content_type()
        if not any(_type_matches(ctype, w) for w in wanted):
            continue
        if part.is_multipart():
            continue
        text = _decoded(part) if part.get_content_maintype() in ("text", "message") or transform == "content" else ""
        if transform == "text" and ctype == "text/html":
            text = html.unescape(_TAGS.sub(" ", text))
        text = text[: MAX_BODY_TEXT - total]
        total += len(text)
        values.append(text)
        if total >= MAX_BODY_TEXT:
            break
    return values


def test_body(node: Node, ctx: Context) -> bool:
    return ctx.match(node, body_values(node, ctx), node.positional[0])


REGISTRY.test(Spec("body", "test", test_body, extension="body", positional=("stringlist",), uses=("comparator", "match"),
                   check=check_match, tags={
                       "raw": TagSpec("raw", None, "transform"),
                       "content": TagSpec("content", "stringlist", "transform"),
                       "text": TagSpec("text", None, "transform"),
                   }))
