"""pop3d.protocol -- the POP3 server as a state machine without I/O.

Bytes in, events out (h11's shape): `Pop3Conn.receive(data)` returns a list of
events for the glue to act on, in order:

    Send(data)                   write these bytes
    StartTLS()                   start the TLS handshake now with common.tls.start_tls,
                                 which discards the input buffered behind STLS
    Authenticate(user, pw, authzid)  check the password, then call login_succeeded()
                                 or login_failed(); nothing else is read meanwhile
    Fetch(uid, top)              read message uid, then call message() or fetch_failed()
    Commit(deleted, seen)        the UPDATE state: flag and remove, then commit_done()
    Close()                      close the connection

States as RFC 1939 describes them: AUTHORIZATION (USER/PASS, AUTH (RFC 5034), STLS
(RFC 2595), CAPA (RFC 2449), QUIT), TRANSACTION (STAT, LIST, RETR, DELE, NOOP,
RSET, TOP, UIDL, CAPA, QUIT) and UPDATE (entered only by QUIT in TRANSACTION; a
dropped connection never deletes). Commands are answered strictly in order, so
pipelining (RFC 2449) is safe. Response codes: [IN-USE], [LOGIN-DELAY], [SYS/TEMP],
[SYS/PERM], [AUTH].

SECURITY: every byte comes from the client. Lines are bounded (an overlong line is
answered and skipped), so are the pipelined input held while a login or a fetch is
pending, the number of commands, bad commands and failed logins. Passwords are
refused on a clear connection unless the glue says plaintext is allowed, and are
never put into an event's repr. Input received after STLS and before the handshake
is discarded. Messages go out with CRLF line endings and dot-stuffing whatever is
stored, so a stored line "." can never end a response early.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from common.auth import Challenge, Credentials, SaslError, sasl_mechanism

AUTHORIZATION = "AUTHORIZATION"
TRANSACTION = "TRANSACTION"
UPDATE = "UPDATE"
CLOSED = "CLOSED"

#: Most input held while the core waits for a login or a message (pipelined commands).
MAX_PENDING_INPUT = 1 << 20
MECHANISMS = ("PLAIN", "LOGIN")


@dataclass(frozen=True)
class Send:
    data: bytes


@dataclass(frozen=True)
class StartTLS:
    pass


@dataclass(frozen=True)
class Authenticate:
    username: str
    password: str = field(repr=False)
    authzid: str = ""


@dataclass(frozen=True)
class Fetch:
    uid: int
    top: int | None  # None: the whole message (RETR); n: headers and n body lines (TOP)


@dataclass(frozen=True)
class Commit:
    deleted: tuple[int, ...]  # UIDs
    seen: tuple[int, ...]     # UIDs retrieved with RETR (and not deleted)


@dataclass(frozen=True)
class Close:
    pass


Event = Send | StartTLS | Authenticate | Fetch | Commit | Close


@dataclass(frozen=True)
class Listing:
    """One message of the snapshot taken at login."""

    uid: int
    size: int  # octets with CRLF line endings, as sent
    uidl: str


@dataclass(frozen=True)
class Limits:
    max_line_length: int = 8192
    max_commands: int = 200000
    max_bad_commands: int = 20
    max_auth_failures: int = 3


def format_message(data: bytes, top: int | None = None) -> bytes:
    """A stored message as POP3 sends it: CRLF line endings, lines starting with "."
    doubled, the last line ended, then the ".\\r\\n" terminator. With top, only the
    header, the blank line and the first `top` body lines (RFC 1939 TOP)."""
    # The checks are ordered by cost: single-byte searches are much faster than
    # two-byte ones, and most stored mail is all LF or all CRLF.
    if b"\r" not in data:
        data = data.replace(b"\n", b"\r\n")
    elif data.count(b"\n") != data.count(b"\r\n"):  # mixed: make every line end CRLF
        data = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if top is not None:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            header, body = (data if data.endswith(b"\r\n") or not data else data + b"\r\n"), b""
        else:
            header, body = data[:end + 4], data[end + 4:]
        if top == 0 or not body:
            data = header
        else:
            lines = body.split(b"\r\n", top)
            data = header + b"\r\n".join(lines[:top])
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..") + b".\r\n"


_UIDL_VAR = re.compile(r"%(%|(0?\d{0,2})([Xx]?)([uvf]))")


def format_uidl(fmt: str, uid: int, uidvalidity: int, basename: str) -> str:
    """Dovecot's pop3_uidl_format variables: %u UID, %v UIDVALIDITY, %f base name.

    "%08Xu" is the UID as 8 hex digits, in lower case: Dovecot's X modifier prints
    with "%llx", and equal UIDLs are the point of the default format."""
    def one(m: re.Match) -> str:
        if m.group(1) == "%":
            return "%"
        width, radix, var = m.group(2), m.group(3), m.group(4)
        if var == "f":
            return basename
        value = uid if var == "u" else uidvalidity
        spec = (width or "") + ("x" if radix else "d")
        return format(value, spec)
    return _UIDL_VAR.sub(one, fmt)


class Pop3Conn:
    """One POP3 session's protocol state."""

    def __init__(self, *, hostname: str = "postroom", stls_available: bool = False, secure: bool = False,
                 plaintext_allowed_in_clear: bool = False, login_delay: int = 0, limits: Limits = Limits(),
                 implementation: str = "postroom"):
        self.hostname = hostname
        self.stls_available = stls_available and not secure
        self.secure = secure
        self.plaintext_in_clear = plaintext_allowed_in_clear
        self.login_delay = login_delay
        self.limits = limits
        self.implementation = implementation
        self.state = AUTHORIZATION
        self._buf = bytearray()
        self._pos = 0
        self._discarding = False
        self._out: list[Event] = []
        self._waiting: str | None = None  # "login", "fetch", "commit", "tls"
        self._sasl = None
        self._user: str | None = None
        self.commands = 0
        self.bad_commands = 0
        self.auth_failures = 0
        self.messages: list[Listing] = []
        self.deleted: set[int] = set()  # message numbers (1-based)
        self.retrieved: set[int] = set()
        self._fetching: Listing | None = None
        self._top: int | None = None
        self._fetching_number = 0

    # --- glue-facing ------------------------------------------------------------------

    def greeting(self) -> list[Event]:
        return [Send(f"+OK {self.hostname} POP3 server ready.\r\n".encode("ascii", "replace"))]

    def receive(self, data: bytes) -> list[Event]:
        if self.state == CLOSED:
            return []
        if self._waiting == "tls":  # the glue did not say; what is buffered came before the handshake
            self.tls_started()
        if self._pos > 65536 or self._pos * 2 > len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data
        if self._waiting and len(self._buf) - self._pos > MAX_PENDING_INPUT:
            self._err("Too much pipelined input", "SYS/PERM")
            self._close()
            return self._flush()
        return self._run()

    @property
    def plaintext_allowed(self) -> bool:
        return self.secure or self.plaintext_in_clear

    def login_succeeded(self, messages: Sequence[Listing]) -> list[Event]:
        """The password was right and the maildrop is locked: the snapshot to serve."""
        self._expect("login")
        self.state = TRANSACTION
        self.messages = list(messages)
        self._ok(f"Logged in, {len(self.messages)} messages.")
        return self._run()

    def login_failed(self, code: str | None = "AUTH", text: str = "Authentication failed.") -> list[Event]:
        """code: AUTH (wrong password), IN-USE, LOGIN-DELAY, SYS/TEMP or SYS/PERM."""
        self._expect("login")
        self._user = None
        self._err(text, code)
        if code == "AUTH":
            self.auth_failures += 1
            if self.auth_failures >= self.limits.max_auth_failures:
                self._close()
        return self._run()

    def message(self, data: bytes) -> list[Event]:
        """The content Fetch asked for."""
        self._expect("fetch")
        listing, self._fetching = self._fetching, None
        assert listing is not None
        first = f"+OK {listing.size} octets\r\n" if self._top is None else "+OK Top of message follows\r\n"
        self._out.append(Send(first.encode() + format_message(data, self._top)))
        if self._top is None:
            self.retrieved.add(self._fetching_number)
        return self._run()

    def fetch_failed(self, code: str | None = "SYS/TEMP", text: str = "Cannot read the message now.") -> list[Event]:
        self._expect("fetch")
        self._fetching = None
        self._err(text, code)
        return self._run()

    def commit_done(self, error: str | None = None) -> list[Event]:
        """After Commit: error None, or the response code of what went wrong."""
        self._expect("commit")
        if error:
            self._err("Some deleted messages were not removed.", error)
        else:
            left = len(self.messages) - len(self.deleted)
            self._ok(f"Logging out ({left} messages left).")
        self._close()
        return self._flush()

    def discard_input(self) -> int:
        """Drop what was received and not yet acted on (after STLS: what the client sent
        in clear behind it); return how many bytes."""
        dropped = len(self._buf) - self._pos
        self._clear_input()
        self._discarding = False
        return dropped

    def tls_started(self) -> None:
        """The handshake began: reading goes on with what arrives over TLS."""
        self.secure = True
        self.discard_input()  # already done by common.tls.start_tls; a glue may forget
        if self._waiting == "tls":
            self._waiting = None

    # --- machinery --------------------------------------------------------------------

    def _expect(self, what: str) -> None:
        if self._waiting != what:
            raise RuntimeError(f"not waiting for {what} (waiting for {self._waiting})")
        self._waiting = None

    def _flush(self) -> list[Event]:
        out, self._out = self._out, []
        return out

    def _ok(self, text: str) -> None:
        self._out.append(Send(f"+OK {text}\r\n".encode() if text else b"+OK\r\n"))

    def _err(self, text: str, code: str | None = None) -> None:
        prefix = f"[{code}] " if code else ""
        self._out.append(Send(f"-ERR {prefix}{text}\r\n".encode()))

    def _multiline(self, first: str, lines: Sequence[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        self._out.append(Send(f"+OK {first}\r\n{body}.\r\n".encode()))

    def _close(self) -> None:
        self.state = CLOSED
        self._clear_input()
        self._out.append(Close())

    def _clear_input(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def _next_line(self) -> bytes | None:
        """The next complete line without its CRLF (or LF), or None. Reads advance a
        position instead of re-slicing, so a big pipelined burst costs linear time."""
        while True:
            nl = self._buf.find(b"\n", self._pos)
            if self._discarding:
                if nl < 0:
                    self._clear_input()
                    return None
                self._pos = nl + 1
                self._discarding = False
                continue
            if nl < 0:
                if len(self._buf) - self._pos > self.limits.max_line_length:
                    self._clear_input()
                    self._discarding = True
                    self._bad("Line too long.")
                return None
            if nl + 1 - self._pos > self.limits.max_line_length + 2:
                self._pos = nl + 1
                self._bad("Line too long.")
                if self.state == CLOSED:
                    return None
                continue
            end = nl - 1 if nl > self._pos and self._buf[nl - 1] == 0x0D else nl
            line = bytes(self._buf[self._pos:end])
            self._pos = nl + 1
            return line

    def _bad(self, text: str) -> None:
        self.bad_commands += 1
        if self._sasl is not None:
            self._sasl = None
            self.auth_failures += 1
        self._err(text)
        if self.bad_commands >= self.limits.max_bad_commands:
            self._err("Too many bad commands, closing.", "SYS/PERM")
            self._close()

    def _run(self) -> list[Event]:
        while self.state != CLOSED and not self._waiting:
            line = self._next_line()
            if line is None:
                break
            if self._sasl is not None:
                self._sasl_step(line)
                continue
            self.commands += 1
            if self.commands > self.limits.max_commands:
                self._err("Too many commands, closing.", "SYS/PERM")
                self._close()
                break
            self._command(line)
        return self._flush()

    def _command(self, line: bytes) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad("Command is not UTF-8.")
            return
        if any(ord(c) < 0x20 and c != "\t" or ord(c) == 0x7F for c in text):
            self._bad("Command contains control characters.")
            return
        name, _, rest = text.partition(" ")
        handler = _COMMANDS.get(self.state, {}).get(name.upper())
        if handler is None:
            known = any(name.upper() in table for table in _COMMANDS.values())
            self._bad("Command not allowed in this state." if known else "Unknown command.")
            return
        handler(self, rest)

    # --- AUTHORIZATION ----------------------------------------------------------------

    def _capa(self, rest: str) -> None:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self.state == AUTHORIZATION:
            if self.plaintext_allowed:
                caps += ["USER", "SASL " + " ".join(MECHANISMS)]
            if self.stls_available:
                caps.append("STLS")
        if self.login_delay:
            caps.append(f"LOGIN-DELAY {self.login_delay}")
        caps.append(f"IMPLEMENTATION {self.implementation}")
        self._multiline("Capability list follows", caps)

    def _refuse_plaintext(self) -> bool:
        if self.plaintext_allowed:
            return False
        self._err("Plaintext authentication disallowed on non-secure connections; use STLS.", "AUTH")
        return True

    def _user_cmd(self, rest: str) -> None:
        if self._refuse_plaintext():
            return
        if not rest or " " in rest or len(rest) > 320:
            self._bad("USER needs one user name.")
            return
        self._user = rest
        self._ok("Send your password.")

    def _pass_cmd(self, rest: str) -> None:
        if self._refuse_plaintext():
            return
        if self._user is None:
            self._err("No user name given (send USER first).")
            return
        if not rest:
            self._bad("PASS needs a password.")
            return
        user, self._user = self._user, None
        self._authenticate(Credentials(user, rest))

    def _authenticate(self, creds: Credentials) -> None:
        self._waiting = "login"
        self._user = creds.username
        self._out.append(Authenticate(creds.username, creds.password, creds.authzid))

    def _auth_cmd(self, rest: str) -> None:
        args = rest.split(" ") if rest else []
        if not args:
            # Not in RFC 5034, but clients (Outlook) send a bare AUTH to list mechanisms.
            self._multiline("Mechanisms follow", list(MECHANISMS) if self.plaintext_allowed else [])
            return
        if len(args) > 2:
            self._bad("AUTH takes a mechanism and an optional initial response.")
            return
        mech = sasl_mechanism(args[0]) if args[0].upper() in MECHANISMS else None
        if mech is None:
            self._err("Unsupported authentication mechanism.")
            return
        if self._refuse_plaintext():
            return
        self._sasl = mech
        initial = args[1].encode("ascii", "replace") if len(args) == 2 else None
        self._sasl_result(lambda: mech.start(initial))

    def _sasl_step(self, line: bytes) -> None:
        mech = self._sasl
        self._sasl_result(lambda: mech.receive(line))

    def _sasl_result(self, step) -> None:
        try:
            result = step()
        except SaslError as e:
            self._sasl = None
            self.auth_failures += 1
            self._err(f"Authentication failed: {e}.", "AUTH")
            if self.auth_failures >= self.limits.max_auth_failures:
                self._close()
            return
        if isinstance(result, Challenge):
            self._out.append(Send(b"+ " + result.data + b"\r\n"))
            return
        self._sasl = None
        self._authenticate(result)

    def _stls(self, rest: str) -> None:
        if rest:
            self._bad("STLS takes no argument.")
            return
        if not self.stls_available:
            self._err("TLS is not available here." if not self.secure else "TLS is already active.")
            return
        self._ok("Begin TLS negotiation now.")
        # RFC 2595 / RFC 3207's lesson: nothing the client sent before the handshake counts.
        # Reading stops here; common.tls.start_tls discards the rest (discard_input).
        self._waiting = "tls"
        self.stls_available = False
        self.secure = True
        self._user = None
        self._out.append(StartTLS())

    def _quit_auth(self, rest: str) -> None:
        self._ok("Logging out.")
        self._close()

    # --- TRANSACTION ------------------------------------------------------------------

    def _message_number(self, arg: str) -> int | None:
        if not arg.isdigit() or len(arg) > 10 or arg.startswith("0"):
            self._err("Invalid message number.")
            return None
        n = int(arg)
        if n > len(self.messages):
            self._err("There is no such message.")
            return None
        if n in self.deleted:
            self._err("Message is deleted.")
            return None
        return n

    def _args(self, rest: str, least: int, most: int, usage: str) -> list[str] | None:
        args = rest.split(" ") if rest else []
        if not least <= len(args) <= most or any(not a for a in args):
            self._bad(usage)
            return None
        return args

    def _live(self) -> list[tuple[int, Listing]]:
        return [(i, m) for i, m in enumerate(self.messages, 1) if i not in self.deleted]

    def _stat(self, rest: str) -> None:
        if self._args(rest, 0, 0, "STAT takes no argument.") is None:
            return
        live = self._live()
        self._ok(f"{len(live)} {sum(m.size for _, m in live)}")

    def _list(self, rest: str) -> None:
        args = self._args(rest, 0, 1, "LIST takes at most a message number.")
        if args is None:
            return
        if args:
            n = self._message_number(args[0])
            if n is not None:
                self._ok(f"{n} {self.messages[n - 1].size}")
            return
        live = self._live()
        self._multiline(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)",
                        [f"{i} {m.size}" for i, m in live])

    def _uidl(self, rest: str) -> None:
        args = self._args(rest, 0, 1, "UIDL takes at most a message number.")
        if args is None:
            return
        if args:
            n = self._message_number(args[0])
            if n is not None:
                self._ok(f"{n} {self.messages[n - 1].uidl}")
            return
        self._multiline("Unique-ID listing follows", [f"{i} {m.uidl}" for i, m in self._live()])

    def _retr(self, rest: str) -> None:
        args = self._args(rest, 1, 1, "RETR takes a message number.")
        if args is not None:
            self._fetch(args[0], None)

    def _top(self, rest: str) -> None:
        args = self._args(rest, 2, 2, "TOP takes a message number and a number of lines.")
        if args is None:
            return
        if not args[1].isdigit() or len(args[1]) > 9:
            self._err("Invalid number of lines.")
            return
        self._fetch(args[0], int(args[1]))

    def _fetch(self, arg: str, top: int | None) -> None:
        n = self._message_number(arg)
        if n is None:
            return
        self._fetching = self.messages[n - 1]
        self._fetching_number = n
        self._top = top
        self._waiting = "fetch"
        self._out.append(Fetch(self._fetching.uid, top))

    def _dele(self, rest: str) -> None:
        args = self._args(rest, 1, 1, "DELE takes a message number.")
        if args is None:
            return
        n = self._message_number(args[0])
        if n is not None:
            self.deleted.add(n)
            self._ok("Marked to be deleted.")

    def _noop(self, rest: str) -> None:
        if self._args(rest, 0, 0, "NOOP takes no argument.") is not None:
            self._ok("")

    def _rset(self, rest: str) -> None:
        if self._args(rest, 0, 0, "RSET takes no argument.") is not None:
            self.deleted.clear()
            live = self._live()
            self._ok(f"{len(live)} messages ({sum(m.size for _, m in live)} octets)")

    def _quit_transaction(self, rest: str) -> None:
        self.state = UPDATE
        deleted = tuple(self.messages[n - 1].uid for n in sorted(self.deleted))
        seen = tuple(self.messages[n - 1].uid for n in sorted(self.retrieved - self.deleted))
        self._waiting = "commit"
        self._out.append(Commit(deleted, seen))


_COMMANDS = {
    AUTHORIZATION: {
        "CAPA": Pop3Conn._capa, "USER": Pop3Conn._user_cmd, "PASS": Pop3Conn._pass_cmd,
        "AUTH": Pop3Conn._auth_cmd, "STLS": Pop3Conn._stls, "QUIT": Pop3Conn._quit_auth,
    },
    TRANSACTION: {
        "CAPA": Pop3Conn._capa, "STAT": Pop3Conn._stat, "LIST": Pop3Conn._list, "UIDL": Pop3Conn._uidl,
        "RETR": Pop3Conn._retr, "TOP": Pop3Conn._top, "DELE": Pop3Conn._dele, "NOOP": Pop3Conn._noop,
        "RSET": Pop3Conn._rset, "QUIT": Pop3Conn._quit_transaction,
    },
}
