"""common.storage.names -- mailbox names: validation and modified UTF-7 (RFC 3501 5.1.3).

IMAP clients see Unicode names with "." as the hierarchy separator (Dovecot's
Maildir++ default). On disk a folder is the directory "." + the name in modified
UTF-7, so a folder Dovecot made and one we made are the same directory.

SECURITY: names come from IMAP clients, Sieve scripts and "+detail" addresses. A
valid name never contains "/", NUL or any control character, never has an empty
part (so no "..", no leading or trailing "."), and is bounded in length, so the
directory it maps to is always a direct child of the user's maildir.
"""

from __future__ import annotations

import base64
import functools

SEPARATOR = "."
INBOX = "INBOX"
#: Longest folder directory name (without the leading "."), in bytes of modified UTF-7.
MAX_ENCODED_LENGTH = 240
#: Characters IMAP uses as LIST wildcards: never part of a stored name.
_WILDCARDS = frozenset("*%")


class NameError_(ValueError):
    """A name that is not acceptable; the storage layer turns it into InvalidMailboxName."""


def encode_mutf7(name: str) -> str:
    """Unicode -> modified UTF-7: printable ASCII stands for itself ("&" as "&-"),
    everything else is "&" + base64 of UTF-16BE with "," for "/" and no padding + "-"."""
    out: list[str] = []
    pending: list[str] = []

    def flush() -> None:
        if pending:
            raw = "".join(pending).encode("utf-16-be")
            out.append("&" + base64.b64encode(raw).decode("ascii").rstrip("=").replace("/", ",") + "-")
            pending.clear()

    for ch in name:
        if 0x20 <= ord(ch) <= 0x7E:
            flush()
            out.append("&-" if ch == "&" else ch)
        else:
            pending.append(ch)
    flush()
    return "".join(out)


def decode_mutf7(s: str) -> str:
    """Modified UTF-7 -> Unicode. Strict: raises ValueError on anything RFC 3501
    does not allow (8-bit, a bad base64 run, padding, ASCII encoded in base64)."""
    out: list[str] = []
    i, n = 0, len(s)
    run_ended_at = -1
    while i < n:
        ch = s[i]
        if not 0x20 <= ord(ch) <= 0x7E:
            raise ValueError("modified UTF-7 is 7-bit printable ASCII only")
        if ch != "&":
            out.append(ch)
            i += 1
            continue
        end = s.find("-", i + 1)
        if end < 0:
            raise ValueError("unterminated modified base64 run")
        run = s[i + 1:end]
        if run and run_ended_at == i:
            raise ValueError("superfluous shift between two base64 runs")
        i = end + 1
        if not run:
            out.append("&")
            continue
        if any(c not in _B64_CHARS for c in run) or len(run) % 4 == 1:
            raise ValueError("bad modified base64 run")
        raw = base64.b64decode(run.replace(",", "/") + "=" * (-len(run) % 4))
        if len(raw) % 2:
            raise ValueError("odd UTF-16 length in modified base64 run")
        text = raw.decode("utf-16-be")  # raises on lone surrogates
        if any(0x20 <= ord(c) <= 0x7E for c in text):
            raise ValueError("printable ASCII must not be base64-encoded")
        out.append(text)
        run_ended_at = i
    return "".join(out)


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,")


def validate_mailbox_name(name: str) -> str:
    """Return the canonical form of a Unicode mailbox name or raise ValueError.

    INBOX is case-insensitive (RFC 3501 5.1): "inbox" and "Inbox.Sub" become
    "INBOX" and "INBOX.Sub". (A session names the same few mailboxes over and over:
    the answers for valid names are remembered.)"""
    if not isinstance(name, str) or not name:
        raise NameError_("empty mailbox name")
    return _canonical(name)


@functools.lru_cache(maxsize=4096)
def _canonical(name: str) -> str:
    if len(name) > MAX_ENCODED_LENGTH:
        raise NameError_("mailbox name too long")
    for ch in name:
        o = ord(ch)
        if o < 0x20 or o == 0x7F or 0x80 <= o <= 0x9F or ch in "/\\" or ch in _WILDCARDS:
            raise NameError_("mailbox name contains a forbidden character")
        if 0xD800 <= o <= 0xDFFF or o in (0x2028, 0x2029, 0xFEFF):
            raise NameError_("mailbox name contains a forbidden character")
    parts = name.split(SEPARATOR)
    if any(not p for p in parts):
        raise NameError_("mailbox name has an empty hierarchy level")
    if parts[0].upper() == INBOX:
        parts[0] = INBOX
    canonical = SEPARATOR.join(parts)
    if len(encode_mutf7(canonical).encode("ascii")) > MAX_ENCODED_LENGTH:
        raise NameError_("mailbox name too long")
    return canonical


def folder_dirname(name: str) -> str:
    """The directory (relative to the maildir root) of a validated, non-INBOX name."""
    return SEPARATOR + encode_mutf7(name)


def name_from_dirname(dirname: str) -> str | None:
    """The mailbox name for a root entry, or None when it is not a valid folder."""
    if not dirname.startswith(SEPARATOR) or dirname in (".", ".."):
        return None
    try:
        name = validate_mailbox_name(decode_mutf7(dirname[1:]))
    except ValueError:
        return None
    # Only the canonical spelling maps back to the same directory (".inbox.x" does not).
    if name == INBOX or folder_dirname(name) != dirname:
        return None
    return name
