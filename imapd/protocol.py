"""imapd.protocol -- the IMAP connection as a state machine without network I/O.

Bytes in (`receive`), responses and actions out: bytes to write, and the few
things only the glue can do (`StartTLS`, `CheckPassword`, `Watch`, `Unwatch`,
`Sync`, `Close`). States are those of RFC 3501: not authenticated, authenticated,
selected, logout. Commands are taken one at a time in the order sent; while one
waits for something asynchronous (a password check, TLS, IDLE, the syncfs that
makes an APPEND durable) the following
input stays buffered, so pipelined commands are answered correctly and in order.
After STARTTLS's OK nothing more is read: what the client pipelined behind it is
discarded (`discard_input()`, called by common.tls.start_tls, and by `tls_started()`).

Commands live in `imapd.commands` (one module per group), registered with their
allowed states and their `CommandFlags`; this module dispatches, turns errors
into tagged NO/BAD, and sends the selected mailbox's pending updates where
RFC 3501 7.4.1 allows (`imapd.session`).

Mailbox contents are reached through `common.storage` (the MailStore given at
login); that is file I/O, but no sockets, clocks or reactor are used here.

SECURITY: all input is the client's. Framing limits are enforced by
`imapd.parser`; a command that fails unexpectedly is answered NO [SERVERBUG]
with the detail in the log only; passwords are never logged.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Callable

from common.log import get_logger

from .parser import Command, CommandFramer, Continue, Limits, ParseError, Refused, parse_command_head
from .session import CommandFlags, SelectedMailbox, UidValidityChanged


class State(enum.Enum):
    NOT_AUTHENTICATED = "not authenticated"
    AUTHENTICATED = "authenticated"
    SELECTED = "selected"
    LOGOUT = "logout"


ANY = frozenset(State) - {State.LOGOUT}
NOT_AUTH = frozenset({State.NOT_AUTHENTICATED})
AUTH = frozenset({State.AUTHENTICATED, State.SELECTED})
SELECTED = frozenset({State.SELECTED})

# ------------------------------------------------------------------ actions for the glue


@dataclass(frozen=True)
class StartTLS:
    """Start the TLS handshake now (the OK has been written before this)."""


@dataclass(frozen=True)
class CheckPassword:
    """Verify a password; answer with `password_checked(user)` or `password_checked(None)`."""
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True)
class Watch:
    """Tell `mailbox_changed()` when these paths change (IDLE)."""
    paths: tuple


@dataclass(frozen=True)
class Unwatch:
    pass


@dataclass(frozen=True)
class Sync:
    """syncfs(2) the filesystem holding `path` (off the event loop; one call may serve
    several sessions), then answer with `synced()`: what was saved is durable only
    then, and the command's OK waits for it (`Settings.defer_sync`)."""
    path: str


@dataclass(frozen=True)
class Close:
    """Close the connection once everything before has been written."""


# ------------------------------------------------------------------ command results

class CommandError(Exception):
    """A command failed: answered `tag NO|BAD [code] text`."""

    def __init__(self, status: str, text: str, code: str | None = None, detail: str | None = None):
        super().__init__(detail or text)
        self.status = status
        self.text = text
        self.code = code
        self.detail = detail


def No(text: str, code: str | None = None, detail: str | None = None) -> CommandError:
    return CommandError("NO", text, code, detail)


def Bad(text: str, code: str | None = None) -> CommandError:
    return CommandError("BAD", text, code)


@dataclass(frozen=True)
class Done:
    """A finished command: `tag OK [code] text` (status may also be NO)."""
    text: str = "Completed"
    code: str | None = None
    status: str = "OK"


PENDING = object()  # returned by a handler that finishes later (async or IDLE)


@dataclass(frozen=True)
class Spec:
    name: str
    handler: Callable
    states: frozenset
    flags: CommandFlags = CommandFlags()


COMMANDS: dict[str, Spec] = {}


def command(name: str, states: frozenset, uses_seqs: bool = False, breaks_seqs: bool = False):
    """Register a handler `fn(conn, tag, reader) -> Done | PENDING` for a command."""
    def register(fn):
        COMMANDS[name] = Spec(name, fn, states, CommandFlags(uses_seqs, breaks_seqs))
        return fn
    return register


# ------------------------------------------------------------------ settings


@dataclass(frozen=True)
class Settings:
    """What the connection needs to know of the configuration and its transport."""
    hostname: str = "localhost"
    limits: Limits = Limits()
    tls_available: bool = False
    secure: bool = False                      # TLS already (implicit TLS listener)
    plaintext_allowed: Callable[[bool], bool] = lambda secure: secure
    open_store: Callable = None               # user record -> common.storage.MailStore
    special_use_defaults: dict = field(default_factory=dict)
    max_buffered: int = 1024 * 1024           # input kept while a command waits
    commands_per_call: int | None = None      # None: answer everything buffered at once
    auth_failures_before_disconnect: int = 3
    log_namespace: str = "imapd"
    session_id: str = "-"
    defer_sync: bool = False                  # APPEND/COPY leave their syncfs to the glue (Sync)


BASE_CAPABILITIES = ("IMAP4rev1", "ID", "ENABLE", "IDLE", "NAMESPACE", "UNSELECT", "CHILDREN",
                     "SPECIAL-USE", "UIDPLUS", "MOVE")
#: Capabilities of the extension modules (imapd.commands.ext_*), added as each registers.
EXTENSION_CAPABILITIES: list[str] = []


def advertise(*names: str) -> None:
    """An extension module works: list its capabilities."""
    EXTENSION_CAPABILITIES.extend(n for n in names if n not in EXTENSION_CAPABILITIES)


class ImapConnection:
    """One client connection. Feed `receive()`; write what it returns in order."""

    def __init__(self, settings: Settings, peer: str = "-"):
        self.settings = settings
        self.peer = peer
        self.state = State.NOT_AUTHENTICATED
        self.secure = settings.secure
        self.framer = CommandFramer(settings.limits)
        self.log = get_logger(settings.log_namespace)
        self.user = None
        self.username: str | None = None
        self.store = None
        self.selected: SelectedMailbox | None = None
        self.enabled: set[str] = set()
        self.auth_failures = 0
        self._out: list = []
        self._waiting: tuple | None = None   # (kind, tag, spec, extra) while a command is pending
        self._closed = False

    # ------------------------------------------------------------ capabilities

    def capabilities(self) -> list[str]:
        caps = list(BASE_CAPABILITIES) + EXTENSION_CAPABILITIES
        caps.insert(1, "LITERAL-" if self.settings.limits.literal_minus else "LITERAL+")
        caps.append(f"APPENDLIMIT={self.settings.limits.max_literal}")
        if self.state == State.NOT_AUTHENTICATED:
            caps.append("SASL-IR")
            if self.settings.tls_available and not self.secure:
                caps.append("STARTTLS")
            if self.settings.plaintext_allowed(self.secure):
                caps += ["AUTH=PLAIN", "AUTH=LOGIN"]
            else:
                caps.append("LOGINDISABLED")
        return caps

    def capability_code(self) -> str:
        return "CAPABILITY " + " ".join(self.capabilities())

    # ------------------------------------------------------------ I/O boundary

    def greeting(self) -> list:
        return [f"* OK [{self.capability_code()}] {self.settings.hostname} IMAP4rev1 ready\r\n".encode()]

    def send(self, data: bytes) -> None:
        self._out.append(data)

    def emit(self, action) -> None:
        self._out.append(action)

    def _take(self) -> list:
        out, self._out = self._out, []
        return out

    def receive(self, data: bytes) -> list:
        if self._closed:
            return []
        self.framer.append(data)
        if self._waiting is not None and self._waiting[0] != "idle" and self._waiting[0] != "sasl":
            if self.framer.pending > self.settings.max_buffered:
                return self._bye("Too much input while a command is in progress")
            return []
        self._run()
        return self._take()

    def _run(self) -> None:
        """Answer buffered commands in order: all of them, or `commands_per_call` so
        the glue can stop between commands while the client is not reading."""
        budget = self.settings.commands_per_call
        while not self._closed and (self._waiting is None or self._waiting[0] in ("idle", "sasl")):
            if budget is not None and budget <= 0:
                break
            events = self.framer.next_events(limit=1)
            if not events:
                break
            for ev in events:
                if budget is not None and isinstance(ev, Command):
                    budget -= 1
                if isinstance(ev, Continue):
                    self.send(b"+ Ready for literal data\r\n")
                elif isinstance(ev, Refused):
                    self.send(ev.response)
                elif isinstance(ev, Command):
                    if self._waiting is not None and self._waiting[0] == "idle":
                        self._idle_input(ev.data)
                    elif self._waiting is not None and self._waiting[0] == "sasl":
                        self._sasl_input(ev.data)
                    else:
                        self._dispatch(ev.data)

    def _bye(self, text: str) -> list:
        """Say BYE and close; returns everything pending (callers inside a command
        may ignore it: it stays queued)."""
        self.send(f"* BYE {text}\r\n".encode())
        self.emit(Close())
        self._closed = True
        self.state = State.LOGOUT
        self._leave_selected()
        return self._take()

    def close_after_reply(self) -> None:
        """End the connection once what is queued has been written."""
        self.emit(Close())
        self._closed = True
        self.state = State.LOGOUT
        self._leave_selected()

    def overloaded(self) -> list:
        """The client sent too much without reading our answers."""
        if self._closed:
            return []
        return self._bye("Too much input while responses are not being read")

    def timed_out(self) -> list:
        """The glue's inactivity timer fired."""
        if self._closed:
            return []
        return self._bye("Autologout; idle for too long")

    def shutting_down(self) -> list:
        if self._closed:
            return []
        return self._bye("Server shutting down")

    def connection_lost(self) -> None:
        self._closed = True
        self._leave_selected()

    @property
    def authenticated(self) -> bool:
        return self.state in (State.AUTHENTICATED, State.SELECTED)

    @property
    def idling(self) -> bool:
        return self._waiting is not None and self._waiting[0] == "idle"

    # ------------------------------------------------------------ dispatch

    def _dispatch(self, data: bytes) -> None:
        try:
            tag, name, reader = parse_command_head(data)
        except ParseError as e:
            from .parser import tag_of
            self.send(tag_of(data) + b" BAD " + (e.text.encode() if data.strip() else b"Empty command") + b"\r\n")
            return
        spec = COMMANDS.get(name)
        if spec is None:
            self.send(tag + b" BAD Unknown command\r\n")
            return
        if self.state not in spec.states:
            self.send(tag + b" BAD " + self._wrong_state_text(spec).encode() + b"\r\n")
            return
        try:
            result = spec.handler(self, tag, reader)
        except ParseError as e:
            code = f"[{e.code}] " if e.code else ""
            self.send(tag + f" BAD {code}{e.text}\r\n".encode())
            return
        except CommandError as e:
            if e.detail:
                self.log.info("{command} failed: {detail}", command=name, detail=e.detail,
                              session=self.settings.session_id, user=self.username)
            self.finish(tag, spec, e)
            return
        except Exception as e:  # noqa: BLE001 -- any bug is a NO, never a dead connection
            result = self.storage_failure(name, e)
        if result is PENDING:
            return
        self.finish(tag, spec, result)
        if self.state == State.LOGOUT:
            self.emit(Close())
            self._closed = True

    def storage_failure(self, name: str, exc: Exception) -> CommandError:
        """Turn a storage or unexpected error into a generic NO; the detail goes to the log."""
        from common.storage import InvalidMailboxName, MailboxNotFound, QuotaExceeded, StorageError
        if isinstance(exc, InvalidMailboxName):
            err = No("Invalid mailbox name", "CANNOT")
        elif isinstance(exc, MailboxNotFound):
            err = No("Mailbox does not exist", "NONEXISTENT")
        elif isinstance(exc, QuotaExceeded):
            err = No("Quota exceeded", "OVERQUOTA")
        elif isinstance(exc, StorageError):
            err = No("Temporary failure, try again later" if getattr(exc, "temporary", True) else "Operation failed",
                     "UNAVAILABLE" if getattr(exc, "temporary", True) else "CANNOT")
        else:
            err = No("Internal error, try again later", "SERVERBUG")
            self.log.error("{command} crashed: {error!r}", command=name, error=exc,
                           session=self.settings.session_id, user=self.username)
            return err
        self.log.warn("{command} failed: {error}", command=name, error=str(exc),
                      session=self.settings.session_id, user=self.username)
        return err

    def _wrong_state_text(self, spec: Spec) -> str:
        if self.state == State.NOT_AUTHENTICATED:
            return "Log in first"
        if spec.states == SELECTED:
            return "No mailbox selected"
        if spec.states == NOT_AUTH:
            return "Already authenticated"
        return "Command not allowed now"

    def finish(self, tag: bytes, spec: Spec | None, result) -> None:
        """Send the selected mailbox's pending updates (as the command's flags allow)
        and then the tagged reply."""
        gone = None
        if self.selected is not None and not self._closed:
            allow_expunge = spec is None or not spec.flags.uses_seqs
            gone = self._refresh_selected()
            sel = self.selected
            for line in sel.updates(allow_expunge):
                self.send(line)
            if sel.qresync and sel.pending_expunged and gone is None:
                # VANISHED held back while MODSEQs went out: a resynchronisation point
                # below the held-back expunges (RFC 7162 3.2.10)
                self.send(b"* OK [HIGHESTMODSEQ %d] Highest mailbox mod-sequence\r\n" % sel.told_modseq())
        code = f"[{result.code}] " if result.code else ""
        self.send(tag + f" {result.status} {code}{result.text}\r\n".encode("utf-8", "replace"))
        if gone is not None:
            self._mailbox_gone(gone)

    def _refresh_selected(self) -> bytes | None:
        """Sync the selected mailbox; the BYE text when what the client knows of it no
        longer holds (deleted or renamed, or its UIDs renumbered), else None."""
        from common.storage import MailboxNotFound
        try:
            self.selected.refresh()
        except UidValidityChanged:
            return b"Selected mailbox UIDVALIDITY changed, have to disconnect"
        except MailboxNotFound:
            return b"Selected mailbox was deleted, have to disconnect"
        except Exception as e:  # noqa: BLE001 -- a failed sync is retried at the next command
            self.log.warn("mailbox sync failed: {error!r}", error=e, session=self.settings.session_id)
        return None

    def _mailbox_gone(self, text: bytes) -> None:
        """Someone deleted or renamed the selected mailbox, or renumbered its UIDs:
        nothing this session knows of it holds any more (Dovecot disconnects the same
        way when it is deleted)."""
        self.log.info("selected mailbox {name} vanished", name=self.selected.name if self.selected else "?",
                      session=self.settings.session_id)
        self.send(b"* BYE " + text + b"\r\n")
        self.close_after_reply()

    # ------------------------------------------------------------ async completions

    def wait(self, kind: str, tag: bytes, spec_name: str, extra=None) -> object:
        self._waiting = (kind, tag, COMMANDS.get(spec_name), extra)
        return PENDING

    def stop_waiting(self) -> tuple:
        """(tag, spec, extra) of the command that was waiting; it waits no more."""
        _kind, tag, spec, extra = self._waiting
        self._waiting = None
        return tag, spec, extra

    def resume(self) -> list:
        """Continue with pipelined input after a pending command finished."""
        self._waiting = None
        self._run()
        return self._take()

    def discard_input(self) -> int:
        """Drop what was received and not yet acted on (after STARTTLS: what the client
        sent in clear behind it); return how many bytes."""
        dropped = self.framer.pending
        self.framer.discard_input()
        return dropped

    def tls_started(self) -> list:
        """The TLS handshake began: the connection now counts as secure, and reading
        goes on with what arrives over TLS."""
        self.secure = True
        self.discard_input()  # already done by common.tls.start_tls; a glue may forget
        if self._waiting is not None and self._waiting[0] == "tls":
            self._waiting = None
        return self._take()

    def durable_after(self, tag: bytes, spec_name: str, path, result) -> object:
        """For a command whose writes were made without their syncfs (defer_sync):
        ask the glue for it (`Sync`) and send `result` once `synced()` says it is done."""
        self.emit(Sync(str(path)))
        return self.wait("sync", tag, spec_name, result)

    def synced(self, error: BaseException | None = None) -> list:
        """The answer to Sync: the command's result now, or, when the syncfs failed,
        a NO (what was written may not be on disk: the client must not rely on it)."""
        if self._waiting is None or self._waiting[0] != "sync":
            return []
        tag, spec, result = self.stop_waiting()
        if error is not None:
            result = self.storage_failure(spec.name if spec else "command", error)
        self.finish(tag, spec, result)
        if self._closed:
            return self._take()
        return self.resume()

    @property
    def syncing(self) -> bool:
        return self._waiting is not None and self._waiting[0] == "sync"

    def password_checked(self, user, temporary: bool = False) -> list:
        """The answer to CheckPassword: a user record, or None for a failure
        (`temporary` when the check itself broke)."""
        if self._waiting is None or self._waiting[0] != "login":
            return []
        _kind, tag, spec, _extra = self._waiting
        self._waiting = None
        from .commands import auth as auth_commands
        auth_commands.login_finished(self, tag, spec, user, temporary)
        if self._closed:
            return self._take()
        return self.resume()

    def _idle_input(self, data: bytes) -> None:
        from .commands import idle
        idle.idle_input(self, data)

    def _sasl_input(self, data: bytes) -> None:
        from .commands import auth as auth_commands
        auth_commands.sasl_input(self, data)

    def mailbox_changed(self) -> list:
        """The watched mailbox changed (IDLE): send what may be sent."""
        if self.selected is None or not self.idling:
            return []
        gone = self._refresh_selected()
        if gone is not None:
            self._mailbox_gone(gone)
            return self._take()
        for line in self.selected.updates(allow_expunge=True):
            self.send(line)
        return self._take()

    def keepalive(self) -> list:
        if self.idling and not self._closed:
            return [b"* OK Still here\r\n"]
        return []

    # ------------------------------------------------------------ helpers for commands

    def select(self, selected: SelectedMailbox | None) -> None:
        self._leave_selected()
        self.selected = selected
        if selected is not None:
            selected.condstore = "CONDSTORE" in self.enabled
            selected.qresync = "QRESYNC" in self.enabled
        self.state = State.SELECTED if selected is not None else State.AUTHENTICATED

    def enable_condstore(self) -> None:
        """A CONDSTORE enabling command (RFC 7162 3.1): from now on volunteered FETCH
        responses carry MODSEQ; a selected mailbox's HIGHESTMODSEQ is told at once
        (one up to which this session has told every change, so nothing is skipped)."""
        if "CONDSTORE" in self.enabled:
            return
        self.enabled.add("CONDSTORE")
        sel = self.selected
        if sel is not None:
            sel.condstore = True
            self.send(b"* OK [HIGHESTMODSEQ %d] Highest mailbox mod-sequence\r\n" % sel.told_modseq())

    def _leave_selected(self) -> None:
        if self.selected is not None:
            self.selected.close()
            self.selected = None

    def logged_in(self, user, username: str) -> None:
        self.user = user
        self.username = username
        self.store = self.settings.open_store(user)
        self.state = State.AUTHENTICATED

    def logout(self) -> None:
        self.send(b"* BYE Logging out\r\n")
        self._leave_selected()
        self.state = State.LOGOUT


def load_commands() -> None:
    """Import every command module so that its handlers register."""
    from .commands import any_state, auth, fetch, idle, mailboxes, messages, selected  # noqa: F401
    from .commands import ext_list, ext_quota, ext_sort  # noqa: F401
    from . import compress  # noqa: F401


load_commands()
