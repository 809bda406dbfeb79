"""common.users -- the user database, in Dovecot's passwd-file format.

One user per line, fields separated by ':' (an existing Dovecot file works as is):

    user@domain:{SCHEME}hash:uid:gid:gecos:home:shell:extra fields

Fields may be left out from the end (``user@domain:{SCHEME}hash`` is a whole
line); uid, gid and home may be empty. The extra fields are space-separated
``key=value`` (or a bare ``key``) and may themselves contain ':', e.g.
``userdb_quota_rule=*:storage=1G``. Blank lines and lines starting with '#' are
ignored. Names are compared without regard to case and kept lower-cased.

The file is read whole into memory; `reload()` re-reads it when it changed on
disk. A file that does not parse is refused with a ConfigError naming the file
and line at the first load; at a reload it is logged and the previous users stay
in force, so a typo never locks every user out.

SECURITY: the file is trusted administrator input but is still parsed strictly:
names that could escape the mail directory ('/', '..', control characters) are
refused, as are relative homes. Password hashes are never logged.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import time
import types
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from twisted.logger import Logger

from .config.loader import ConfigError
from .passwords import UnknownScheme, scheme_of, split_scheme

if TYPE_CHECKING:
    from .config.core import PostroomConfig

log = Logger(namespace="postroom.users")

#: Guards against a runaway file (a log pasted by mistake); real lines are short.
MAX_LINE_BYTES = 8192

_BAD_NAME = re.compile(r"[\x00-\x20\x7f/:]")
_QUOTA_KEY = re.compile(r"(?:userdb_)?quota_rule(\d*)")
_UNITS = {"": None, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


@dataclass(frozen=True)
class UserRecord:
    """One user: name (lower-cased), stored password, optional uid/gid/home, extra fields."""

    name: str
    password: str = field(repr=False)
    uid: int | None = None
    gid: int | None = None
    home: Path | None = None
    extra: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def localpart(self) -> str:
        return self.name.rpartition("@")[0] if "@" in self.name else self.name

    @property
    def domain(self) -> str:
        return self.name.rpartition("@")[2] if "@" in self.name else ""

    def maildir(self, core: PostroomConfig) -> Path:
        """The user's maildir: core.mail_location with %h, %u, %n, %d expanded.

        A user without a home gets core.paths.mail/DOMAIN/LOCALPART as %h. A
        Dovecot-style "maildir:" prefix and ":OPTIONS" suffix are ignored; a
        relative result is taken from core.paths.mail."""
        location = core.mail_location
        if location.lower().startswith("maildir:"):
            location = location[len("maildir:"):]
        location = location.split(":", 1)[0]
        home = self.home if self.home is not None else core.paths.mail / (self.domain or "_") / self.localpart
        if location.startswith("~/") or location == "~":
            location = "%h" + location[1:]
        expanded = re.sub(r"%(.)", lambda m: self._expand(m.group(1), home), location)
        path = Path(expanded)
        return path if path.is_absolute() else core.paths.mail / path

    def _expand(self, code: str, home: Path) -> str:
        values = {"h": str(home), "u": self.name, "n": self.localpart, "d": self.domain, "%": "%"}
        if code not in values:
            raise ValueError(f"mail_location: unknown variable %{code} (use %h, %u, %n, %d or %%)")
        return values[code]

    def quota(self) -> tuple[int | None, int | None]:
        """(storage limit in bytes, message limit) from the quota rules; None is no limit.

        Reads quota_rule, quota_rule2, ... (with or without Dovecot's "userdb_"
        prefix) in Dovecot's syntax: "*:storage=1G", "*:messages=1000",
        "*:storage=512M:messages=1000", "*:bytes=1048576", "*:ignore". storage
        without a unit is in kilobytes, as in Dovecot; 0 means no limit. Rules for
        a single mailbox (Trash:storage=+100M) do not change the user's limits."""
        return quota_limits(self.extra)


def _rule_order(key: str) -> int:
    m = _QUOTA_KEY.fullmatch(key)
    return int(m.group(1) or 1) if m else 0


def quota_limits(extra: Mapping[str, str]) -> tuple[int | None, int | None]:
    """The user-wide limits the quota rules in extra set. Raises ValueError if malformed."""
    storage: int | None = None
    messages: int | None = None
    for key in sorted((k for k in extra if _QUOTA_KEY.fullmatch(k)), key=_rule_order):
        mask, sep, limits = extra[key].partition(":")
        if not sep or not mask:
            raise ValueError(f"{key}: expected MAILBOX:LIMITS such as *:storage=1G")
        if mask not in ("*", "?"):
            continue
        if limits == "ignore":
            storage = messages = None
            continue
        for limit in limits.split(":"):
            name, _, value = limit.partition("=")
            m = re.fullmatch(r"(\d+)([bkmgtBKMGT]?)", value)
            if name not in ("storage", "bytes", "messages") or m is None:
                raise ValueError(f"{key}: bad limit {limit!r} (expected storage=1G, bytes=N or messages=N)")
            unit = _UNITS[m.group(2).upper()]
            if name == "storage":
                amount = int(m.group(1)) * (unit or 1024)
            else:
                amount = int(m.group(1)) * (unit or 1)
            if name == "messages":
                messages = amount or None
            else:
                storage = amount or None
    return storage, messages


def _id(value: str, kind: str) -> int | None:
    if value == "":
        return None
    if value.isdigit():
        return int(value)
    try:
        return pwd.getpwnam(value).pw_uid if kind == "uid" else grp.getgrnam(value).gr_gid
    except KeyError:
        raise ValueError(f"{kind} {value!r} is neither a number nor a known {'user' if kind == 'uid' else 'group'}") from None


def parse_line(line: str) -> UserRecord:
    """One passwd-file line as a UserRecord. Raises ValueError saying what is wrong."""
    fields = line.split(":", 7)
    name = fields[0].strip().lower()
    if not name:
        raise ValueError("the user name is empty")
    if _BAD_NAME.search(name) or name.startswith(".") or ".." in name or name.count("@") > 1:
        raise ValueError(f"the user name {fields[0]!r} contains a character postroom does not allow")
    fields += [""] * (8 - len(fields))
    password, uid, gid, _gecos, home, _shell, extra_text = fields[1:]
    extra: dict[str, str] = {}
    for item in extra_text.split():
        key, _, value = item.partition("=")
        if not key:
            raise ValueError(f"extra field {item!r} has no name")
        extra[key] = value
    home = home or extra.get("userdb_home", extra.get("home", ""))
    uid = uid or extra.get("userdb_uid", extra.get("uid", ""))
    gid = gid or extra.get("userdb_gid", extra.get("gid", ""))
    if home and not home.startswith("/"):
        raise ValueError(f"the home {home!r} is not an absolute path")
    quota_limits(extra)  # refuse a malformed rule now, not when mail arrives
    return UserRecord(
        name=name, password=password, uid=_id(uid, "uid"), gid=_id(gid, "gid"),
        home=Path(home) if home else None, extra=types.MappingProxyType(extra),
    )


def parse_users(data: bytes, path: Path) -> dict[str, UserRecord]:
    """Every user in a passwd-file's contents. Raises ConfigError(path, line, ...)."""
    users: dict[str, UserRecord] = {}
    for number, raw in enumerate(data.split(b"\n"), start=1):
        raw = raw.removesuffix(b"\r")
        if not raw.strip() or raw.lstrip().startswith(b"#"):
            continue
        if len(raw) > MAX_LINE_BYTES:
            raise ConfigError(path, number, None, f"line longer than {MAX_LINE_BYTES} bytes")
        try:
            record = parse_line(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(path, number, None, "not valid UTF-8") from None
        except ValueError as e:
            raise ConfigError(path, number, None, str(e)) from None
        if record.name in users:
            raise ConfigError(path, number, None, f"the user {record.name} appears twice")
        users[record.name] = record
    return users


class UserDB:
    """The users of a passwd-file, looked up by name; re-read when the file changes.

    lookup() checks the file's modification at most every `check_interval`
    seconds (0 disables it; SIGHUP's reload() always checks)."""

    def __init__(self, path: Path, check_interval: float = 1.0):
        self.path = Path(path)
        self.check_interval = check_interval
        self._users: dict[str, UserRecord] = {}
        self._stamp: tuple[int, int, int] | None = None
        self._checked = time.monotonic()
        self._warned: set[tuple[str, str]] = set()
        self._reference: str | None = None
        stamp, data = self._read()
        self._install(parse_users(data, self.path), stamp)

    def _read(self) -> tuple[tuple[int, int, int], bytes]:
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                return (st.st_ino, st.st_mtime_ns, st.st_size), f.read()
        except FileNotFoundError:
            raise ConfigError(self.path, None, None, "user file not found") from None
        except OSError as e:
            raise ConfigError(self.path, None, None, f"cannot read the user file: {e.strerror}") from None

    def _install(self, users: dict[str, UserRecord], stamp: tuple[int, int, int]) -> None:
        for record in users.values():
            self._warn_about(record)
        self._users = users
        self._stamp = stamp
        self._reference = _reference_hash(users.values())

    def _warn_about(self, record: UserRecord) -> None:
        """Log, once per user, a password postroom cannot verify or one stored in clear."""
        try:
            scheme = scheme_of(record.password) if record.password else None
        except UnknownScheme as e:
            problem = f"cannot log in: {e}"
        else:
            if scheme is None:
                problem = "cannot log in: no password"
            elif scheme == "PLAIN":
                problem = "has a PLAIN password; hash it with postroom-passwd"
            else:
                return
        if (record.name, problem) in self._warned or len(self._warned) > 100_000:
            return
        self._warned.add((record.name, problem))
        log.warn("{file}: user {user} {problem}", file=str(self.path), user=record.name, problem=problem)

    def reload(self) -> bool:
        """Re-read the file if it changed. True if new data is now in force.

        A file that cannot be read or parsed is logged and the old users are kept."""
        self._checked = time.monotonic()
        try:
            st = os.stat(self.path)
            if (st.st_ino, st.st_mtime_ns, st.st_size) == self._stamp:
                return False
            stamp, data = self._read()
            if stamp == self._stamp:
                return False
            users = parse_users(data, self.path)
        except ConfigError as e:
            log.error("user file not reloaded, keeping the previous users: {error}", error=str(e))
            self._stamp_failed()
            return False
        except OSError as e:
            log.error("user file not reloaded, keeping the previous users: {file}: {error}",
                      file=str(self.path), error=e.strerror)
            self._stamp_failed()
            return False
        self._install(users, stamp)
        log.info("user file {file} loaded: {count} users", file=str(self.path), count=len(users))
        return True

    def _stamp_failed(self) -> None:
        # Remember the broken file's stamp so it is reported once, not on every lookup.
        try:
            st = os.stat(self.path)
            self._stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            pass

    def lookup(self, name: str) -> UserRecord | None:
        """The user called name (any case), or None."""
        if self.check_interval and time.monotonic() - self._checked >= self.check_interval:
            self.reload()
        return self._users.get(name.lower())

    def names(self) -> list[str]:
        """Every user name, sorted."""
        return sorted(self._users)

    def __len__(self) -> int:
        return len(self._users)

    def reference_hash(self) -> str | None:
        """A stored hash from the file, of the kind most users have, or None: common.auth
        verifies an unknown user's password against it, so that unknown users cost
        what real ones do."""
        return self._reference


def _cost_class(scheme: str, stored: str) -> tuple[str, ...]:
    """The parts of a stored hash that set what verifying it costs (scheme, rounds, memory)."""
    parts = split_scheme(stored)[1].split("$")
    if scheme in ("ARGON2ID", "ARGON2I"):
        return (scheme, *parts[:4])  # $argon2id$v=19$m=65536,t=3,p=4$
    if scheme == "BLF-CRYPT":
        return (scheme, *parts[:3])  # $2y$10$
    return (scheme, *parts[:3]) if len(parts) > 2 and parts[2].startswith("rounds=") else (scheme,)


def _reference_hash(records: Iterable[UserRecord]) -> str | None:
    """A stored hash of the kind (scheme and cost) most users have, so that checking an
    unknown user costs what checking most real users does."""
    by_class: dict[tuple[str, ...], list[str]] = {}
    for record in records:
        try:
            scheme = scheme_of(record.password)
        except UnknownScheme:
            continue
        if scheme != "PLAIN":
            by_class.setdefault(_cost_class(scheme, record.password), []).append(record.password)
    if not by_class:
        return None
    return max(by_class.values(), key=len)[0]
