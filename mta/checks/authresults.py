"""mta.checks.authresults -- the Authentication-Results header (RFC 8601), ours and forged.

`header_fields(message)` splits a message's header into (name, raw field) pairs;
`remove_fields(message, authserv_id, also=...)` drops every Authentication-Results
field whose authserv-id is ours (RFC 8601 section 5: a header claiming to be from us
that arrived from outside is forged) and every field named in ``also`` (our
quarantine marker); `build_header(authserv_id, results)` writes our one header.

SECURITY: every value written into our header that came from outside (domains,
selectors, HELO names) goes through `_value`, which keeps printable ASCII only and
quotes anything that is not a plain token, so a client cannot inject a header line
or a fake result. The authserv-id comparison skips comments and accepts the quoted
form, so ``(x) "mail.example.test"; spf=pass`` is recognised and removed too.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-./=?^_`{|}~@]+")
_FIELD_NAME = re.compile(rb"([!-9;-~]+)[ \t]*:")


def split_message(message: bytes) -> tuple[list[bytes], bytes]:
    """The header fields (each raw, with its continuation lines and CRLF) and the rest
    (the empty line and the body). Lines that are not fields end the header."""
    fields: list[bytes] = []
    pos = 0
    length = len(message)
    while pos < length:
        end = message.find(b"\r\n", pos)
        end = length if end < 0 else end + 2
        line = message[pos:end]
        if line in (b"\r\n", b""):
            break
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line
        elif _FIELD_NAME.match(line):
            fields.append(line)
        else:
            break
        pos = end
    return fields, message[pos:]


def field_name(field: bytes) -> str:
    m = _FIELD_NAME.match(field)
    return m.group(1).decode("ascii").lower() if m else ""


def field_value(field: bytes) -> str:
    raw = field.split(b":", 1)[1] if b":" in field else b""
    return re.sub(r"\r\n[ \t]", " ", raw.decode("utf-8", "replace")).strip("\r\n").strip()


def header_fields(message: bytes) -> list[tuple[str, str]]:
    """(lower-case name, unfolded value) of every header field."""
    fields, _ = split_message(message)
    return [(field_name(f), field_value(f)) for f in fields]


def authserv_id_of(value: str) -> str:
    """The authserv-id of an Authentication-Results value (comments skipped), lower case."""
    text = _strip_comments(value).strip()
    if text.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"', text)
        return re.sub(r"\\(.)", r"\1", m.group(1)).strip().lower() if m else ""
    m = re.match(r"[^\s;]+", text)
    return m.group(0).lower().rstrip(".") if m else ""


def _strip_comments(text: str) -> str:
    out, depth, i = [], 0, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and depth:
            i += 2
            continue
        if c == "(":
            depth += 1
        elif c == ")" and depth:
            depth -= 1
        elif not depth:
            out.append(c)
        i += 1
    return "".join(out)


def remove_fields(message: bytes, authserv_id: str, also: tuple[str, ...] = ()) -> tuple[bytes, int]:
    """The message without Authentication-Results claiming authserv_id and without the
    fields named in also; and how many fields were removed."""
    ours = authserv_id.lower().rstrip(".")
    drop = {name.lower() for name in also}
    fields, rest = split_message(message)
    kept = []
    for f in fields:
        name = field_name(f)
        if name in drop or (name == "authentication-results" and authserv_id_of(field_value(f)) == ours):
            continue
        kept.append(f)
    removed = len(fields) - len(kept)
    if not removed:
        return message, 0
    return b"".join(kept) + rest, removed


def _value(text: str) -> str:
    """A safe RFC 8601 value: a token as it is, anything else quoted; never CR or LF."""
    text = "".join(c for c in text if " " <= c <= "~")[:255]
    if text and _TOKEN.fullmatch(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def result_entry(method: str, result: str, comment: str | None = None, **properties: str) -> str:
    """One resinfo, e.g. ``spf=pass smtp.mailfrom=example.org``; property names use
    _ for . (smtp_mailfrom -> smtp.mailfrom)."""
    parts = [f"{method}={result}"]
    if comment:
        parts.append("(" + re.sub(r"[^ -'*-~]", "", comment)[:200] + ")")
    for name, value in properties.items():
        if value:
            parts.append(f"{name.replace('_', '.', 1)}={_value(value)}")
    return " ".join(parts)


def build_header(authserv_id: str, entries: list[str]) -> bytes:
    """The folded header field, CRLF-terminated."""
    head = f"Authentication-Results: {_value(authserv_id)}"
    if not entries:
        return (head + "; none\r\n").encode("ascii")
    return (head + ";\r\n\t" + ";\r\n\t".join(entries) + "\r\n").encode("ascii")
