"""common.storage.keywords -- Dovecot's dovecot-keywords file.

One "<index> <keyword>" line per keyword; index 0..25 is the letter a..z in the
maildir file name's flags. Rewritten through a temporary file and a rename while the
uidlist dotlock is held.

SECURITY: user-writable file; indexes outside 0..25 and keywords that are not IMAP
atoms are ignored.
"""

from __future__ import annotations

MAX_KEYWORDS = 26
_ATOM_SPECIALS = set('(){ %*"\\]') | {chr(c) for c in range(0x20)} | {"\x7f"}


def valid_keyword(name: str) -> bool:
    return bool(name) and len(name) <= 128 and not name.startswith("\\") and \
        all(c not in _ATOM_SPECIALS and ord(c) < 0x7F for c in name)


def parse(data: bytes) -> list[str | None]:
    """Index -> keyword (None for a free slot), at most 26 entries."""
    table: list[str | None] = [None] * MAX_KEYWORDS
    for line in data.decode("utf-8", "replace").split("\n"):
        idx_s, _, name = line.strip().partition(" ")
        if idx_s.isdigit() and int(idx_s) < MAX_KEYWORDS and valid_keyword(name.strip()):
            table[int(idx_s)] = name.strip()
    while table and table[-1] is None:
        table.pop()
    return table


def format(table: list[str | None]) -> bytes:
    return "".join(f"{i} {name}\n" for i, name in enumerate(table) if name).encode("utf-8")


def letter(index: int) -> str:
    return chr(ord("a") + index)


def index_of(letter_: str) -> int:
    return ord(letter_) - ord("a")
