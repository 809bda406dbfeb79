"""mta.aliases -- the aliases file: `name: target, target`, as Sendmail and Postfix read it.

    # comment
    postmaster: root
    root:       alice@example.test
    team:       alice, bob@example.test,
                carol@elsewhere.example        <- a line starting with blank continues
    sales@example.test: bob                     <- only for that domain

A name without a domain applies to every local domain; `name@domain` to that domain
only. A target is a local name (which is itself looked up as an alias, then as a
user) or an address. Expansion is bounded: at most MAX_DEPTH levels and
MAX_TARGETS results; an alias that reaches itself is kept as the address it names
(so `alice: alice, archive` delivers to the user alice and to archive).

Commands (`|...`), files (`/...`) and `:include:` are refused: mail never runs a
program or writes a file on the sender's behalf.

SECURITY: the file is trusted administrator input; it is still parsed strictly and
a mistake is a ConfigError naming the line.
"""

from __future__ import annotations

import os
from pathlib import Path

from common.config.loader import ConfigError

MAX_DEPTH = 10
MAX_TARGETS = 1000


def parse_aliases(text: str, path: Path) -> dict[str, tuple[str, ...]]:
    """name (lower-cased) -> targets. Raises ConfigError."""
    entries: dict[str, tuple[str, ...]] = {}
    logical: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        if raw[0] in " \t":
            if not logical:
                raise ConfigError(path, number, None, "a continuation line with nothing to continue")
            first, joined = logical[-1]
            logical[-1] = (first, joined + " " + raw.strip())
        else:
            logical.append((number, raw.strip()))
    for number, line in logical:
        name, colon, rest = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or any(c in name for c in " \t,\"<>"):
            raise ConfigError(path, number, None, "expected `name: target, target`")
        targets = tuple(t.strip() for t in rest.split(",") if t.strip())
        if not targets:
            raise ConfigError(path, number, name, "has no targets")
        for t in targets:
            if t.startswith(("|", "/", ":include:")) or any(c in t for c in " \t\"<>"):
                raise ConfigError(path, number, name, f"unsupported target {t!r}: only names and addresses")
        if name in entries:
            raise ConfigError(path, number, name, "appears twice")
        entries[name] = targets
    return entries


class Aliases:
    """The aliases of one file, re-read when the file changes (checked on reload())."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, tuple[str, ...]] = {}
        self._stamp = None
        self.reload(strict=True)

    def reload(self, strict: bool = False) -> bool:
        if self.path is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.entries, self._stamp = {}, None
            return False
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return False
        try:
            entries = parse_aliases(self.path.read_text(encoding="utf-8"), self.path)
        except (ConfigError, OSError, UnicodeDecodeError):
            if strict:
                raise
            from common.log import get_logger
            get_logger("postroom.mta.aliases").failure("aliases not reloaded, keeping the old ones")
            return False
        self.entries, self._stamp = entries, stamp
        return True

    def lookup(self, local: str, domain: str) -> tuple[str, ...] | None:
        """The targets of local@domain (a domain-specific entry first), or None."""
        local = local.lower()
        found = self.entries.get(f"{local}@{domain.lower()}")
        return found if found is not None else self.entries.get(local)
