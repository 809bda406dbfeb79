"""mda.sieve.interpreter -- run a checked Sieve script against one message.

The interpreter decides; it never delivers. `run()` returns a `Result`: the folders
to file into (with flags), the redirects, a vacation reply to consider, a reject,
and whether the implicit keep still applies. `mda.delivery` is the one place that
applies a result to storage and the spool.

Rules kept here (RFC 5228 section 2.10):
- the implicit keep files the message into INBOX unless a discard, fileinto,
  redirect (without :copy) or reject cancelled it;
- a runtime error (a limit exceeded, a bad include, a conflict of actions) cancels
  every action taken so far and leaves only the implicit keep: mail is never lost
  because of a broken script; the error is reported in `Result.errors`;
- the same folder is filed into once, whatever the number of keep/fileinto.

- any other exception while running (a bug, a value no test expected) is logged
  and handled like a runtime error: the implicit keep.

SECURITY: message headers and bodies are untrusted. Run time, the number of
commands executed, actions, redirects, include depth and count, and variable sizes
are all bounded by `Limits`. Regular expressions come from the script's owner and
run against bounded input only (header values and body text are capped), with
the `regex` module's timeout set to the run time left (for :matches too), so a
pattern that backtracks without end (`^(a|a)*$`) is stopped like any script over
its time.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import email.utils
import functools
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import regex

from common.log import get_logger

from .lexer import SieveSyntaxError
from .parser import Node, Script

log = get_logger("mda.sieve")

MAX_VALUE_LENGTH = 64 * 1024     # header values and body text longer than this are cut for matching
MAX_REGEX_INPUT = 8 * 1024       # :regex looks at no more than this of each value (backtracking bound)


# -- limits and errors --------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_actions: int = 32
    max_redirects: int = 4
    max_include_depth: int = 8
    max_includes: int = 32
    max_variable_size: int = 4096
    max_variables: int = 256
    max_run_time: float = 1.0
    max_steps: int = 100_000


class SieveRuntimeError(Exception):
    """A failure while running: the message falls back to the implicit keep."""

    def __init__(self, message: str, node: Node | None = None, script: str = ""):
        super().__init__(message)
        self.message = message
        self.line = node.line if node else 0
        self.column = node.column if node else 0
        self.script = script

    def __str__(self) -> str:
        where = f"{self.script}:" if self.script else ""
        if self.line:
            where += f"{self.line}:{self.column}: "
        return f"{where}{self.message}"


class StopScript(Exception):
    """`stop`: end the current script."""


class ReturnScript(Exception):
    """`return` (include): end the current included script."""


# -- the message ---------------------------------------------------------------------------


def _decode_header(value: str) -> str:
    value = value.replace("\r\n", "").replace("\n", "").strip()
    if "=?" in value:
        try:
            value = str(email.header.make_header(email.header.decode_header(value)))
        except Exception:  # a broken encoded word is matched as written
            pass
    return value[:MAX_VALUE_LENGTH]


class Message:
    """A message as Sieve sees it: headers unfolded and decoded, the body parsed only
    when a body test asks for it."""

    def __init__(self, raw: bytes):
        self.raw = raw
        self.size = len(raw)
        crlf = raw.find(b"\r\n\r\n")
        lf = raw.find(b"\n\n")
        if crlf >= 0 and (lf < 0 or crlf < lf):
            self.header_bytes, self.body_offset = raw[:crlf + 2], crlf + 4
        elif lf >= 0:
            self.header_bytes, self.body_offset = raw[:lf + 1], lf + 2
        else:
            self.header_bytes, self.body_offset = raw, len(raw)
        self._headers: list[tuple[str, str]] | None = None
        self._parsed: email.message.Message | None = None

    @property
    def headers(self) -> list[tuple[str, str]]:
        """(lower-case name, raw value) in order."""
        if self._headers is None:
            out: list[tuple[str, str]] = []
            text = self.header_bytes.decode("utf-8", "replace")
            for line in text.splitlines(keepends=True):
                if line[:1] in (" ", "\t") and out:
                    name, value = out[-1]
                    out[-1] = (name, value + line)
                    continue
                name, sep, value = line.partition(":")
                if not sep or not name or name != name.strip() or len(name) > 200:
                    continue  # not a header line (a leading "From " line, junk)
                out.append((name.lower(), value))
            self._headers = out
        return self._headers

    def header(self, name: str) -> list[str]:
        """Decoded values of every header called name, in order."""
        name = name.lower()
        return [_decode_header(v) for n, v in self.headers if n == name]

    def has_header(self, name: str) -> bool:
        name = name.lower()
        return any(n == name for n, _ in self.headers)

    @property
    def body(self) -> bytes:
        return self.raw[self.body_offset:]

    @property
    def parsed(self) -> email.message.Message:
        if self._parsed is None:
            self._parsed = email.message_from_bytes(self.raw, policy=email.policy.compat32)
        return self._parsed


def parse_addresses(value: str) -> list[str]:
    """The addr-specs in a header value; groups are flattened, empty groups give nothing."""
    out = []
    for _name, addr in email.utils.getaddresses([value]):
        if addr:
            out.append(addr)
    return out


def address_part(address: str, part: str, delimiter: str = "+") -> str | None:
    """One part of an address (RFC 5228 2.7.4, RFC 5233). None when the part does not
    exist (a :detail of an address without a separator)."""
    if address in ("", "<>"):
        return ""
    local, at, domain = address.rpartition("@")
    if not at:
        local, domain = address, ""
    if part == "all":
        return address
    if part == "localpart":
        return local
    if part == "domain":
        return domain
    if part == "user":
        return local.split(delimiter, 1)[0] if delimiter else local
    if part == "detail":
        if not delimiter or delimiter not in local:
            return None
        return local.split(delimiter, 1)[1]
    raise ValueError(part)


# -- comparators and match types -----------------------------------------------------------


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


class Comparator:
    name = "i;octet"
    ordered_substrings = True   # supports :contains and :matches
    case_insensitive = False

    def key(self, s: str) -> Any:
        return s

    def equal(self, a: str, b: str) -> bool:
        return self.key(a) == self.key(b)

    def compare(self, a: str, b: str) -> int:
        ka, kb = self.key(a), self.key(b)
        if isinstance(ka, str):
            ka, kb = ka.encode("utf-8", "surrogatepass"), kb.encode("utf-8", "surrogatepass")
        return (ka > kb) - (ka < kb)

    def contains(self, haystack: str, needle: str) -> bool:
        return self.key(needle) in self.key(haystack)


class AsciiCasemap(Comparator):
    name = "i;ascii-casemap"
    case_insensitive = True

    def key(self, s: str) -> Any:
        return s.translate(_ASCII_LOWER)


class AsciiNumeric(Comparator):
    """RFC 4790 9.1: the number at the start of the string; no digits is infinity."""

    name = "i;ascii-numeric"
    ordered_substrings = False

    def key(self, s: str) -> Any:
        m = re.match(r"[0-9]+", s)
        return int(m.group()) if m else float("inf")

    def compare(self, a: str, b: str) -> int:
        ka, kb = self.key(a), self.key(b)
        return (ka > kb) - (ka < kb)


COMPARATORS: dict[str, Comparator] = {c.name: c for c in (Comparator(), AsciiCasemap(), AsciiNumeric())}
#: comparators usable without a require (RFC 5228 2.7.3)
BUILTIN_COMPARATORS = ("i;octet", "i;ascii-casemap")

RELATIONAL = {
    "gt": lambda r: r > 0, "ge": lambda r: r >= 0, "lt": lambda r: r < 0,
    "le": lambda r: r <= 0, "eq": lambda r: r == 0, "ne": lambda r: r != 0,
}


@functools.lru_cache(maxsize=512)
def glob_regex(pattern: str, case_insensitive: bool) -> regex.Pattern:
    """A :matches pattern as a regular expression. Each wildcard is a group matching
    as little as possible, which gives the match variables of RFC 5229 3.2."""
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append("(.*?)")
        elif c == "?":
            out.append("(.)")
        else:
            out.append(re.escape(c))
        i += 1
    flags = regex.DOTALL | ((regex.IGNORECASE | regex.ASCII) if case_insensitive else 0)
    return regex.compile("".join(out) + r"\Z", flags)


@functools.lru_cache(maxsize=512)
def regex_compile(pattern: str, case_insensitive: bool) -> regex.Pattern:
    """A :regex key compiled with the `regex` module (re's syntax, plus a timeout on
    matching); raises regex.error for a bad pattern."""
    flags = regex.DOTALL | (regex.IGNORECASE if case_insensitive else 0)
    return regex.compile(pattern, flags)


# -- actions and the result ----------------------------------------------------------------


@dataclass
class FileInto:
    mailbox: str
    flags: tuple[str, ...] | None = None
    create: bool = False
    implicit: bool = False

    def describe(self) -> str:
        what = "keep" if self.mailbox == "INBOX" else f"fileinto {self.mailbox!r}"
        if self.implicit:
            what = "implicit keep"
        if self.flags:
            what += f" flags {' '.join(self.flags)}"
        if self.create:
            what += " (create)"
        return what


@dataclass
class Redirect:
    address: str

    def describe(self) -> str:
        return f"redirect to {self.address}"


@dataclass
class Reject:
    reason: str
    extended: bool

    def describe(self) -> str:
        return f"{'ereject' if self.extended else 'reject'}: {self.reason.strip()}"


@dataclass
class Vacation:
    reason: str
    seconds: int
    subject: str | None = None
    from_: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False
    handle: str = ""

    def describe(self) -> str:
        return f"vacation (every {self.seconds}s, handle {self.handle[:40]!r})"


@dataclass
class Discard:
    def describe(self) -> str:
        return "discard"


@dataclass
class DuplicateRecord:
    key: str
    seconds: int
    last: bool


@dataclass
class Result:
    """What the scripts decided. `deliveries` already includes the implicit keep."""

    deliveries: list[FileInto] = field(default_factory=list)
    redirects: list[Redirect] = field(default_factory=list)
    vacation: Vacation | None = None
    reject: Reject | None = None
    discarded: bool = False
    errors: list[str] = field(default_factory=list)
    duplicates: list[DuplicateRecord] = field(default_factory=list)
    log: list[str] = field(default_factory=list)

    def describe(self) -> list[str]:
        lines = [d.describe() for d in self.deliveries] + [r.describe() for r in self.redirects]
        if self.vacation:
            lines.append(self.vacation.describe())
        if self.reject:
            lines.append(self.reject.describe())
        if self.discarded and not self.deliveries:
            lines.append("discard")
        return lines


# -- the run ------------------------------------------------------------------------------


@dataclass
class EnvelopeInfo:
    sender: str                 # "" for the null sender
    recipient: str              # the address being delivered to
    original_recipient: str | None = None
    auth: str | None = None


class Environment:
    """What a script may ask of the world; mda.delivery provides the real one."""

    recipient_delimiter = "+"
    #: vacation :days default and bounds (RFC 5230 4.1)
    vacation_default_days = 7
    vacation_min_days = 1
    vacation_max_days = 90
    duplicate_default_seconds = 7 * 86400
    duplicate_max_seconds = 30 * 86400

    def mailbox_exists(self, name: str) -> bool:
        return name == "INBOX"

    def load_include(self, location: str, name: str) -> Script | None:
        """The script `name` from the personal or global folder, or None if missing."""
        return None

    def duplicate_seen(self, key: str) -> bool:
        return False

    def now(self) -> datetime:
        return datetime.now(timezone.utc).astimezone()


_VARIABLE_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*|[0-9]+)\}")


class Scope:
    """One script's variables, and the globals it declared (RFC 6609 3.3)."""

    def __init__(self, script: Script, globals_: dict[str, str]):
        self.script = script
        self.variables: dict[str, str] = {}
        self.declared: set[str] = set()
        self.globals = globals_

    def table_for(self, name: str) -> tuple[dict[str, str], str]:
        name = name.lower()
        if name.startswith("global."):
            return self.globals, name[7:]
        if name in self.declared:
            return self.globals, name
        return self.variables, name


class Context:
    """The state of one run: the message, variables, flags, actions, the clock."""

    def __init__(self, message: Message, envelope: EnvelopeInfo, env: Environment, limits: Limits):
        self.message = message
        self.envelope = envelope
        self.env = env
        self.limits = limits
        self.globals: dict[str, str] = {}
        self.scope: Scope | None = None
        self.match_vars: list[str] = []
        self.flags: list[str] = []           # imap4flags internal variable
        self.result = Result()
        self.filed: dict[str, FileInto] = {}
        self.kept_explicitly = False
        self.implicit_keep = True
        self.actions = 0
        self.steps = 0
        self.deadline = time.monotonic() + limits.max_run_time
        self.include_stack: list[tuple[str, str]] = []
        self.includes_done: set[tuple[str, str]] = set()
        self.includes = 0

    # -- bookkeeping
    @property
    def script_name(self) -> str:
        return self.scope.script.name if self.scope else ""

    def fail(self, message: str, node: Node | None = None) -> SieveRuntimeError:
        return SieveRuntimeError(message, node, self.script_name)

    def step(self, node: Node) -> None:
        self.steps += 1
        if self.steps > self.limits.max_steps:
            raise self.fail("too many steps", node)
        if time.monotonic() > self.deadline:
            raise self.fail("run time limit exceeded", node)

    def time_left(self) -> float:
        """Seconds of run time left, for the pattern matchers' timeout (never 0, which
        the regex module takes as no limit)."""
        return max(self.deadline - time.monotonic(), 0.0001)

    def count_action(self, node: Node) -> None:
        self.actions += 1
        if self.actions > self.limits.max_actions:
            raise self.fail(f"more than {self.limits.max_actions} actions", node)

    def has(self, capability: str) -> bool:
        return self.scope is not None and capability in self.scope.script.requires

    # -- strings and variables
    def expand(self, s: str) -> str:
        if not self.has("variables") or "${" not in s:
            return s

        def sub(m: re.Match) -> str:
            ref = m.group(1)
            if ref.isdigit():
                i = int(ref)
                return self.match_vars[i] if i < len(self.match_vars) else ""
            table, name = self.scope.table_for(ref)  # type: ignore[union-attr]
            return table.get(name, "")

        return _VARIABLE_REF.sub(sub, s)[: self.limits.max_variable_size * 4]

    def string(self, node: Node, tag_or_index: str | int, default: str | None = None) -> str | None:
        value = node.tags.get(tag_or_index) if isinstance(tag_or_index, str) else node.positional[tag_or_index]
        if value is None:
            return default
        return self.expand(value)

    def strings(self, node: Node, tag_or_index: str | int) -> list[str]:
        value = node.tags.get(tag_or_index) if isinstance(tag_or_index, str) else node.positional[tag_or_index]
        return [self.expand(v) for v in (value or [])]

    def set_variable(self, name: str, value: str, node: Node) -> None:
        table, key = self.scope.table_for(name)  # type: ignore[union-attr]
        if key not in table and len(table) >= self.limits.max_variables:
            raise self.fail("too many variables", node)
        table[key] = value[: self.limits.max_variable_size]

    def get_variable(self, name: str) -> str:
        table, key = self.scope.table_for(name)  # type: ignore[union-attr]
        return table.get(key, "")

    # -- matching
    def comparator(self, node: Node) -> Comparator:
        return COMPARATORS[node.tags.get("comparator", "i;ascii-casemap")]

    def match(self, node: Node, values: list[str], keys: list[str]) -> bool:
        """The core of every test: match type x comparator over values x keys."""
        mtype = node.groups.get("match", "is")
        comp = self.comparator(node)
        keys = [self.expand(k) for k in keys]
        if mtype == "count":
            op = RELATIONAL[node.tags["count"].lower()]
            count = str(len(values))
            return any(op(comp.compare(count, k)) for k in keys)
        if mtype == "value":
            op = RELATIONAL[node.tags["value"].lower()]
            return any(op(comp.compare(v, k)) for v in values for k in keys)
        for v in values:
            for k in keys:
                if mtype == "is":
                    if comp.equal(v, k):
                        return True
                elif mtype == "contains":
                    if comp.contains(v, k):
                        return True
                elif mtype == "matches":
                    try:
                        m = glob_regex(k, comp.case_insensitive).match(v, timeout=self.time_left())
                    except TimeoutError:
                        raise self.fail("run time limit exceeded (:matches)", node) from None
                    if m:
                        self.set_match_vars(v, m.groups())
                        return True
                elif mtype == "regex":
                    try:
                        m = regex_compile(k, comp.case_insensitive).search(v[:MAX_REGEX_INPUT],
                                                                          timeout=self.time_left())
                    except regex.error as e:
                        raise self.fail(f"bad regular expression {k!r}: {e}", node) from None
                    except TimeoutError:
                        raise self.fail("run time limit exceeded (regular expression)", node) from None
                    if m:
                        self.set_match_vars(m.group(0), m.groups())
                        return True
        return False

    def set_match_vars(self, whole: str, groups: Iterable[str | None]) -> None:
        if self.has("variables"):
            size = self.limits.max_variable_size
            self.match_vars = [whole[:size]] + [(g or "")[:size] for g in list(groups)[:9]]

    # -- actions
    def file_into(self, mailbox: str, flags: tuple[str, ...] | None, create: bool, node: Node, explicit_keep: bool = False) -> None:
        self.count_action(node)
        if self.result.reject is not None:
            raise self.fail("reject cannot be combined with keep or fileinto", node)
        key = "INBOX" if mailbox.upper() == "INBOX" else mailbox
        existing = self.filed.get(key)
        if existing is not None:
            # The same folder twice: one copy; the flags of the last action win.
            if flags is not None:
                existing.flags = flags
            existing.create = existing.create or create
            return
        action = FileInto(key, flags, create)
        self.filed[key] = action
        self.result.deliveries.append(action)

    def redirect(self, address: str, node: Node) -> None:
        self.count_action(node)
        if self.result.reject is not None:
            raise self.fail("reject cannot be combined with redirect", node)
        if any(r.address.lower() == address.lower() for r in self.result.redirects):
            return
        if len(self.result.redirects) >= self.limits.max_redirects:
            raise self.fail(f"more than {self.limits.max_redirects} redirects", node)
        self.result.redirects.append(Redirect(address))

    def reject(self, reason: str, extended: bool, node: Node) -> None:
        self.count_action(node)
        if self.result.reject is not None:
            raise self.fail("only one reject or ereject per message", node)
        if self.result.deliveries or self.result.redirects or self.result.vacation:
            raise self.fail("reject cannot be combined with keep, fileinto, redirect or vacation", node)
        self.result.reject = Reject(reason, extended)
        self.implicit_keep = False

    # -- execution
    def execute(self, commands: list[Node]) -> None:
        for node in commands:
            self.step(node)
            node.spec.run(node, self)  # type: ignore[union-attr]

    def test(self, node: Node) -> bool:
        self.step(node)
        return bool(node.spec.run(node, self))  # type: ignore[union-attr]

    def run_script(self, script: Script) -> None:
        """Run one top-level script; `stop` (even inside an include) ends it."""
        self.scope = Scope(script, self.globals)
        try:
            self.execute(script.commands)
        except (StopScript, ReturnScript):
            pass
        finally:
            self.scope = None


def run(scripts: list[Script] | Script, message: Message, envelope: EnvelopeInfo,
        env: Environment | None = None, limits: Limits | None = None) -> Result:
    """Run scripts one after the other (global before, the user's, global after), sharing
    one set of actions. `stop` ends the current script only. Any runtime error cancels
    every action and leaves the implicit keep."""
    if isinstance(scripts, Script):
        scripts = [scripts]
    ctx = Context(message, envelope, env or Environment(), limits or Limits())
    try:
        for script in scripts:
            ctx.match_vars = []
            ctx.run_script(script)
    except SieveRuntimeError as e:
        return fallback_result(str(e))
    except RecursionError:
        return fallback_result("script nesting too deep")
    except Exception as e:  # noqa: BLE001 - never lose mail over a failing script run
        where = f"{ctx.script_name}: " if ctx.script_name else ""
        log.failure("Sieve run failed unexpectedly; implicit keep")
        return fallback_result(f"{where}internal error ({type(e).__name__}); implicit keep")
    result = ctx.result
    if result.reject is not None and (result.deliveries or result.redirects):
        return fallback_result("reject cannot be combined with keep, fileinto or redirect")
    if ctx.implicit_keep and "INBOX" not in ctx.filed:
        result.deliveries.insert(0, FileInto("INBOX", tuple(ctx.flags) or None, implicit=True))
    if not result.deliveries and not result.redirects and result.reject is None:
        result.discarded = True
    return result


def fallback_result(error: str) -> Result:
    """What a broken script gets: the message in INBOX, and the error for the log."""
    return Result(deliveries=[FileInto("INBOX", implicit=True)], errors=[error])


__all__ = [
    "Comparator", "COMPARATORS", "Context", "EnvelopeInfo", "Environment", "FileInto", "Limits",
    "Message", "Redirect", "Reject", "Result", "ReturnScript", "SieveRuntimeError", "SieveSyntaxError",
    "StopScript", "Vacation", "address_part", "parse_addresses", "run",
]
