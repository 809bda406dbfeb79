"""common.smtp.server -- the SMTP and LMTP server as a state machine without I/O.

Bytes in, events out; answers in, bytes out. The Twisted glue (mta.smtpd, and the
MDA's LMTP server) feeds what the client sends to `receive()`, acts on the events,
answers those that need an answer with `accept()` / `reject()` (or `answer_each()`
for an LMTP message), and writes `data_to_send()` to the socket. The core never
touches a socket, a clock or a file.

Replies always leave in command order. While an event waits for its answer the core
keeps buffering what the client pipelines (the glue pauses reading when
`backlog` grows) and parses nothing further until the answer arrives.

SECURITY: everything fed in comes from the network and is untrusted. Only CRLF ends
a line: a bare CR or LF in a command is refused, and in message data the session is
refused and closed (no SMTP smuggling; `\\n.\\r\\n` never ends a message). Every
length and count is bounded by `ServerSettings`; input pipelined behind STARTTLS is
never parsed and is discarded (`discard_input()`, called by common.tls.start_tls);
AUTH is refused unless the glue says it is allowed (TLS, or configured).
No reply echoes client input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..auth import Challenge, SaslCancelled, SaslError, sasl_mechanism
from . import replies as R
from .replies import Reply

__all__ = [
    "ServerSettings", "SmtpServerConn", "Event", "Hello", "MailFrom", "RcptTo", "Verify",
    "Authenticate", "StartTLS", "Message", "Reset", "Close", "AcceptedRecipient", "Reply",
]


@dataclass(frozen=True)
class ServerSettings:
    """What the core decides on its own. The glue builds one per listener."""

    hostname: str = "localhost"
    max_command_line: int = 2048        # bytes, CRLF included
    max_text_line: int = 1000           # bytes of one message line, CRLF included (RFC 5321 4.5.3.1.6)
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    max_errors: int = 10                # error replies before 421 and disconnect
    max_commands_before_mail: int = 50  # commands other than MAIL since the last MAIL
    starttls: bool = False              # offer STARTTLS (until TLS is active)
    auth_mechanisms: tuple[str, ...] = ()  # offered only when the glue allows AUTH
    require_tls: bool = False           # MAIL refused before TLS
    require_auth: bool = False          # MAIL refused before AUTH
    vrfy: bool = False                  # VRFY asks the glue (Verify event) instead of 252
    chunking: bool = True
    dsn: bool = True
    smtputf8: bool = True
    eightbitmime: bool = True
    require_helo: bool = True


class Event:
    """Something the glue must know. needs_answer: the core waits for accept()/reject()."""

    needs_answer = False


@dataclass
class Hello(Event):
    name: str
    extended: bool


@dataclass
class MailFrom(Event):
    sender: str                 # "" for the null reverse-path
    params: dict[str, Any]      # upper-case keys: SIZE (int), BODY, RET, ENVID, SMTPUTF8 (True)
    needs_answer = True


@dataclass
class RcptTo(Event):
    recipient: str
    params: dict[str, Any]      # NOTIFY (tuple), ORCPT (str as given)
    needs_answer = True


@dataclass
class Verify(Event):
    argument: str
    needs_answer = True


@dataclass
class Authenticate(Event):
    mechanism: str
    authzid: str
    username: str
    password: str = field(repr=False)
    needs_answer = True


@dataclass
class StartTLS(Event):
    """Write data_to_send() first (the 220), then start TLS with common.tls.start_tls
    (which discards what the client pipelined), then call tls_started()."""


@dataclass
class AcceptedRecipient:
    address: str
    params: dict[str, Any]
    info: Any = None            # whatever the glue passed to accept() for this RCPT


@dataclass
class Message(Event):
    sender: str
    mail_params: dict[str, Any]
    recipients: list[AcceptedRecipient]
    data: bytes                 # dot-unstuffed (DATA) or as sent (BDAT), CRLF line ends
    needs_answer = True


@dataclass
class Reset(Event):
    """The transaction was aborted (RSET, HELO/EHLO, a new TLS session)."""


@dataclass
class Close(Event):
    """Write data_to_send(), then close the connection."""

    reason: str


# Session states.
_COMMAND, _DATA, _BDAT, _AUTH, _TLS, _CLOSED = range(6)

_MAIL_RE = re.compile(r"FROM:\s?<(.*?)>(?:\s+(.*))?\s*$", re.IGNORECASE | re.DOTALL)
_RCPT_RE = re.compile(r"TO:\s?<(.*?)>(?:\s+(.*))?\s*$", re.IGNORECASE | re.DOTALL)
_QUOTED_LOCAL = re.compile(r'"(?:[^"\\]|\\.)*"')
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\x80-\U0010ffff-]+)*")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]{0,61}[A-Za-z0-9\x80-\U0010ffff])?\.)*"
                     r"[A-Za-z0-9\x80-\U0010ffff](?:[A-Za-z0-9\x80-\U0010ffff-]{0,61}[A-Za-z0-9\x80-\U0010ffff])?\.?")
_ADDRESS_LITERAL = re.compile(r"\[(?:\d{1,3}(?:\.\d{1,3}){3}|IPv6:[0-9A-Fa-f:.]+)\]")
_XTEXT = re.compile(r"(?:[!-*,-<>-~]|\+[0-9A-F]{2})*")
_HELO_ARG = re.compile(r"[\x21-\x7e\x80-\U0010ffff]+")
_NOTIFY_WORDS = {"SUCCESS", "FAILURE", "DELAY"}


def valid_address(address: str, allow_bare_postmaster: bool = False) -> bool:
    """RFC 5321 Mailbox syntax (with RFC 6531 UTF-8), source routes removed beforehand."""
    if len(address) > 256:
        return False
    if allow_bare_postmaster and address.lower() == "postmaster":
        return True
    local, at, domain = address.rpartition("@")
    if not at or not local or not domain or len(local.encode()) > 64 * 4:
        return False
    if not (_DOT_ATOM.fullmatch(local) or _QUOTED_LOCAL.fullmatch(local)):
        return False
    return bool(_DOMAIN.fullmatch(domain) or _ADDRESS_LITERAL.fullmatch(domain))


class SmtpServerConn:
    """One SMTP (or LMTP) server session. Feed it bytes; it returns events and queues
    replies. See the module docstring for the contract with the glue."""

    def __init__(self, settings: ServerSettings, lmtp: bool = False, tls: bool = False,
                 auth_allowed: bool = False):
        self.settings = settings
        self.lmtp = lmtp
        self.tls_active = tls
        #: the glue's answer to "may this client AUTH now?" (TLS, or plaintext configured)
        self.auth_allowed = auth_allowed
        self.helo: str | None = None
        self.esmtp = False
        self.auth_user: str | None = None
        self.errors = 0
        self.commands_since_mail = 0
        self.messages = 0
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._state = _COMMAND
        self._waiting: Event | None = None
        self._refused = False
        self._skip_line = False
        self._reset_transaction()

    # ----------------------------------------------------------------- glue API

    def greet(self, refusal: Reply | None = None) -> None:
        """Queue the greeting. With a refusal (e.g. a blocklist at connect) the session
        then answers everything but QUIT with 503 (RFC 5321 3.1)."""
        if refusal is not None:
            self._refused = True
            self._send(refusal)
        else:
            proto = "LMTP" if self.lmtp else "ESMTP"
            self._out.append(b"220 %s %s postroom\r\n" % (self.settings.hostname.encode(), proto.encode()))

    def receive(self, data: bytes) -> list[Event]:
        """Feed bytes from the client. Returns the events they caused, in order."""
        if self._state == _CLOSED:
            return []
        if self._state == _TLS:
            return []  # anything before the handshake is discarded
        self._buf += data
        events: list[Event] = []
        if self._waiting is None:
            self._run(events)
        return events

    def data_to_send(self) -> bytes:
        out = b"".join(self._out)
        self._out.clear()
        return out

    @property
    def waiting(self) -> Event | None:
        """The event whose answer the core waits for, if any."""
        return self._waiting

    @property
    def backlog(self) -> int:
        """Bytes received and not yet parsed (the glue pauses reading when large)."""
        return len(self._buf)

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def receiving_data(self) -> bool:
        """Between DATA's 354 and the final dot, or inside a BDAT chunk."""
        return self._state == _DATA or self._state == _BDAT

    @property
    def in_transaction(self) -> bool:
        return self.sender is not None

    def accept(self, text: str | None = None, info: Any = None) -> list[Event]:
        """Answer the waiting event positively. For RcptTo, info is kept with the
        recipient and comes back in Message.recipients. For Verify, text is the
        mailbox to name in the 250; without text the reply is 252 (cannot verify)."""
        ev = self._take_waiting()
        if ev is None:
            return []
        if isinstance(ev, MailFrom):
            self.sender = ev.sender
            self.mail_params = ev.params
            self.commands_since_mail = 0
            self._send(Reply(250, "2.1.0", text) if text else R.SENDER_OK)
        elif isinstance(ev, RcptTo):
            self.recipients.append(AcceptedRecipient(ev.recipient, ev.params, info))
            self._send(Reply(250, "2.1.5", text) if text else R.RECIPIENT_OK)
        elif isinstance(ev, Authenticate):
            self.auth_user = ev.username
            self._send(R.AUTH_OK)
        elif isinstance(ev, Verify):
            # The glue names the mailbox it found; without one the answer is 252.
            # The client's argument is never echoed.
            self._send(Reply(250, "2.1.5", text) if text else R.VRFY_CANNOT)
        elif isinstance(ev, Message):
            self.messages += 1
            if self.lmtp:
                for _ in ev.recipients:
                    self._send(Reply(250, "2.0.0", text or "OK"))
            else:
                self._send(Reply(250, "2.0.0", text or "OK"))
            self._reset_transaction()
        return self._resume()

    def reject(self, reply: Reply) -> list[Event]:
        """Answer the waiting event with an error reply (4xx or 5xx)."""
        ev = self._take_waiting()
        if ev is None:
            return []
        events: list[Event] = []
        if isinstance(ev, Message):
            if self.lmtp:
                for _ in ev.recipients:
                    self._send(reply)
            else:
                self._error(reply, events)
            self._reset_transaction()
        else:
            self._error(reply, events)
        return events + self._resume()

    def answer_each(self, replies: list[Reply]) -> list[Event]:
        """LMTP: answer a Message with one reply per accepted recipient, in order."""
        ev = self._take_waiting()
        if ev is None:
            return []
        assert isinstance(ev, Message) and self.lmtp and len(replies) == len(ev.recipients)
        for reply in replies:
            self._send(reply)
        if any(r.positive for r in replies):
            self.messages += 1
        self._reset_transaction()
        return self._resume()

    def discard_input(self) -> int:
        """Drop what was received and not parsed (after STARTTLS: what the client sent
        in clear behind it); return how many bytes."""
        dropped = len(self._buf)
        self._buf.clear()
        return dropped

    def tls_started(self, auth_allowed: bool | None = None) -> None:
        """The TLS handshake is under way: the session starts afresh (RFC 3207 4.2)."""
        self.tls_active = True
        if auth_allowed is not None:
            self.auth_allowed = auth_allowed
        self.helo = None
        self.esmtp = False
        self.auth_user = None  # nothing learnt before TLS counts after it
        self._reset_transaction()
        self.discard_input()  # already done by common.tls.start_tls; a glue may forget
        if self._state == _TLS:
            self._state = _COMMAND

    def close(self, reply: Reply | None = None) -> list[Event]:
        """Close from the glue's side (timeout, shutdown, limits): send reply, then close."""
        if self._state == _CLOSED:
            return []
        if reply is not None:
            self._send(reply)
        self._state = _CLOSED
        self._waiting = None
        self._buf.clear()
        return [Close(reply.text if reply else "closed")]

    # ----------------------------------------------------------------- internals

    def _take_waiting(self) -> Event | None:
        ev = self._waiting
        self._waiting = None
        if self._state == _CLOSED:
            return None
        return ev

    def _resume(self) -> list[Event]:
        events: list[Event] = []
        if self._state != _CLOSED:
            self._run(events)
        return events

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.mail_params: dict[str, Any] = {}
        self.recipients: list[AcceptedRecipient] = []
        self._rcpt_attempts = 0
        self._chunks: list[bytes] = []
        self._data_size = 0
        self._data_error: Reply | None = None
        self._bdat_used = False
        self._bdat_left = 0
        self._bdat_last = False
        self._bdat_reply: Reply | None = None
        self._midline = False

    def _send(self, reply: Reply) -> None:
        self._out.append(reply.encode())

    def _error(self, reply: Reply, events: list[Event]) -> None:
        """Send an error reply and count it; past the limit, 421 and close."""
        self._send(reply)
        self.errors += 1
        if self.errors >= self.settings.max_errors and self._state != _CLOSED:
            self._send(R.TOO_MANY_ERRORS)
            self._close("too many errors", events)

    def _close(self, reason: str, events: list[Event]) -> None:
        self._state = _CLOSED
        self._buf.clear()
        events.append(Close(reason))

    def _run(self, events: list[Event]) -> None:
        """Parse as much buffered input as possible, stopping at an event that needs
        an answer."""
        while self._waiting is None and self._state != _CLOSED:
            state = self._state
            if state == _COMMAND or state == _AUTH:
                line = self._next_line(events, self.settings.max_command_line)
                if line is None:
                    break
                if state == _COMMAND:
                    self._command(line, events)
                else:
                    self._auth_response(line, events)
            elif state == _DATA:
                if not self._data(events):
                    break
            elif state == _BDAT:
                if not self._bdat(events):
                    break
            else:
                break

    def _next_line(self, events: list[Event], limit: int) -> bytes | None:
        """One CRLF-terminated line without its CRLF, or None if none is complete.
        Refuses bare CR/LF and over-long lines (then skips to the next line end)."""
        buf = self._buf
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) > limit:
                    if not self._skip_line:
                        self._error(R.LINE_TOO_LONG, events)
                        self._skip_line = True
                    keep_cr = buf.endswith(b"\r")
                    buf.clear()
                    if keep_cr:
                        buf += b"\r"
                return None
            if self._skip_line:
                del buf[:nl + 1]
                self._skip_line = False
                if self._state == _CLOSED:
                    return None
                continue
            if nl + 1 > limit:
                del buf[:nl + 1]
                self._error(R.LINE_TOO_LONG, events)
                return None if self._state == _CLOSED else self._next_line(events, limit)
            if nl == 0 or buf[nl - 1] != 13:
                del buf[:nl + 1]
                self._error(R.BARE_LINE_END, events)
                return None if self._state == _CLOSED else self._next_line(events, limit)
            line = bytes(buf[:nl - 1])
            del buf[:nl + 1]
            if b"\r" in line:
                self._error(R.BARE_LINE_END, events)
                if self._state == _CLOSED:
                    return None
                continue
            return line

    # ----------------------------------------------------------------- commands

    def _command(self, line: bytes, events: list[Event]) -> None:
        verb, _, arg_bytes = line.partition(b" ")
        verb = verb.upper()
        if self._refused and verb != b"QUIT":
            self._error(R.REFUSED_WAIT_QUIT, events)
            return
        handler = _HANDLERS.get(verb)
        if handler is None:
            self._error(R.SYNTAX_ERROR, events)
            return
        if verb in _JUNK_COMMANDS:
            self.commands_since_mail += 1
            if self.commands_since_mail > self.settings.max_commands_before_mail:
                self._send(R.TOO_MANY_COMMANDS)
                self._close("too many commands", events)
                return
        try:
            arg = arg_bytes.decode("utf-8")
        except UnicodeDecodeError:
            self._error(R.SYNTAX_ERROR, events)
            return
        handler(self, arg, events)

    def _cmd_helo(self, arg: str, events: list[Event], extended: bool = False, lhlo: bool = False) -> None:
        if self.lmtp != lhlo:
            self._error(R.SYNTAX_ERROR, events)
            return
        name = arg.strip()
        if not _HELO_ARG.fullmatch(name) or len(name) > 255:
            self._error(Reply(501, "5.5.4", "Syntax: %s hostname" % ("LHLO" if lhlo else "EHLO" if extended else "HELO")), events)
            return
        if self.sender is not None:
            events.append(Reset())
        self._reset_transaction()
        self.helo = name
        self.esmtp = extended
        events.append(Hello(name, extended))
        if not extended:
            self._out.append(b"250 %s\r\n" % self.settings.hostname.encode())
            return
        self._out.append(self._ehlo_reply())

    def _ehlo_reply(self) -> bytes:
        """The EHLO answer; the same settings and state always give the same bytes."""
        key = (self.settings, self.tls_active, self.auth_allowed and self.auth_user is None)
        reply = _EHLO_REPLIES.get(key)
        if reply is None:
            if len(_EHLO_REPLIES) > 64:
                _EHLO_REPLIES.clear()
            reply = _EHLO_REPLIES[key] = self._build_ehlo_reply()
        return reply

    def _build_ehlo_reply(self) -> bytes:
        s = self.settings
        lines = [s.hostname, "PIPELINING", f"SIZE {s.max_message_size}", "ENHANCEDSTATUSCODES"]
        if s.eightbitmime:
            lines.append("8BITMIME")
        if s.smtputf8:
            lines.append("SMTPUTF8")
        if s.dsn:
            lines.append("DSN")
        if s.chunking:
            lines.append("CHUNKING")
        if s.starttls and not self.tls_active:
            lines.append("STARTTLS")
        if s.auth_mechanisms and self.auth_allowed and self.auth_user is None:
            lines.append("AUTH " + " ".join(s.auth_mechanisms))
        return R.format_reply(250, "", "\n".join(lines))

    def _cmd_ehlo(self, arg, events):
        self._cmd_helo(arg, events, extended=True)

    def _cmd_lhlo(self, arg, events):
        self._cmd_helo(arg, events, extended=True, lhlo=True)

    def _need_helo(self, events) -> bool:
        if self.helo is None and (self.settings.require_helo or self.lmtp):
            self._error(R.NEED_LHLO if self.lmtp else R.NEED_HELO, events)
            return False
        return True

    def _cmd_mail(self, arg: str, events: list[Event]) -> None:
        if not self._need_helo(events):
            return
        if self.sender is not None:
            self._error(R.NESTED_MAIL, events)
            return
        s = self.settings
        if s.require_tls and not self.tls_active:
            self._error(R.TLS_REQUIRED, events)
            return
        if s.require_auth and self.auth_user is None:
            self._error(R.AUTH_REQUIRED, events)
            return
        m = _MAIL_RE.match(arg)
        if not m:
            self._error(Reply(501, "5.5.4", "Syntax: MAIL FROM:<address>"), events)
            return
        params = self._params(m.group(2), events, _MAIL_PARAMS)
        if params is None:
            return
        sender = self._path(m.group(1), params, events, null_ok=True)
        if sender is None:
            return
        if params.get("SIZE", 0) > s.max_message_size:
            self._error(R.TOO_BIG, events)
            return
        self._waiting = MailFrom(sender, params)
        events.append(self._waiting)

    def _cmd_rcpt(self, arg: str, events: list[Event]) -> None:
        if self.sender is None:
            self._error(R.NEED_MAIL, events)
            return
        m = _RCPT_RE.match(arg)
        if not m:
            self._error(Reply(501, "5.5.4", "Syntax: RCPT TO:<address>"), events)
            return
        params = self._params(m.group(2), events, _RCPT_PARAMS)
        if params is None:
            return
        recipient = self._path(m.group(1), self.mail_params, events, null_ok=False)
        if recipient is None:
            return
        if len(self.recipients) >= self.settings.max_recipients:
            self._error(R.TOO_MANY_RECIPIENTS, events)
            return
        self._waiting = RcptTo(recipient, params)
        events.append(self._waiting)

    def _path(self, raw: str, mail_params: dict, events, null_ok: bool) -> str | None:
        """The address inside <...>, source route removed; None after an error reply."""
        if raw == "":
            if null_ok:
                return ""
            self._error(R.BAD_ADDRESS, events)
            return None
        if raw.startswith("@"):
            _, colon, raw = raw.partition(":")
            if not colon:
                self._error(R.BAD_ADDRESS, events)
                return None
        if not raw.isascii() and not mail_params.get("SMTPUTF8"):
            self._error(R.NON_ASCII_ADDRESS, events)
            return None
        if not valid_address(raw, allow_bare_postmaster=not null_ok):
            self._error(R.BAD_ADDRESS, events)
            return None
        return raw

    def _params(self, text: str | None, events, parsers) -> dict[str, Any] | None:
        params: dict[str, Any] = {}
        if not text:
            return params
        for word in text.split():
            key, eq, value = word.partition("=")
            key = key.upper()
            parse = parsers.get(key)
            if parse is None or key in params or (eq and not value):
                self._error(R.UNKNOWN_PARAMETER, events)
                return None
            parsed = parse(self, value if eq else None)
            if parsed is None:
                self._error(R.BAD_ARGUMENTS, events)
                return None
            params[key] = parsed
        return params

    def _p_size(self, v):
        return int(v) if v and v.isdigit() and len(v) < 20 else None

    def _p_body(self, v):
        v = (v or "").upper()
        return v if v == "7BIT" or (v == "8BITMIME" and self.settings.eightbitmime) else None

    def _p_smtputf8(self, v):
        return True if v is None and self.settings.smtputf8 else None

    def _p_ret(self, v):
        v = (v or "").upper()
        return v if self.settings.dsn and v in ("FULL", "HDRS") else None

    def _p_xtext(self, v):
        return v if self.settings.dsn and v and len(v) <= 100 and _XTEXT.fullmatch(v) else None

    def _p_auth(self, v):
        return v if v else None  # RFC 4954 AUTH=<mailbox>: accepted and ignored

    def _p_notify(self, v):
        if not self.settings.dsn or not v:
            return None
        words = tuple(w.upper() for w in v.split(","))
        if words == ("NEVER",):
            return words
        if len(set(words)) != len(words) or not set(words) <= _NOTIFY_WORDS:
            return None
        return words

    def _p_orcpt(self, v):
        if not self.settings.dsn or not v:
            return None
        kind, semi, addr = v.partition(";")
        if not semi or not kind or not addr or len(v) > 500 or not re.fullmatch(r"[A-Za-z0-9-]+", kind):
            return None
        if kind.lower() == "utf-8":
            return v if all(c >= " " for c in addr) else None
        return v if _XTEXT.fullmatch(addr) else None

    def _cmd_data(self, arg: str, events: list[Event]) -> None:
        if arg:
            self._error(R.BAD_ARGUMENTS, events)
            return
        if self.sender is None:
            self._error(R.NEED_MAIL, events)
            return
        if self._bdat_used:
            self._error(R.MIXED_DATA_BDAT, events)
            return
        if not self.recipients:
            self._error(R.NO_VALID_RECIPIENTS, events)
            return
        self._send(R.START_DATA)
        self._state = _DATA

    def _cmd_bdat(self, arg: str, events: list[Event]) -> None:
        parts = arg.split()
        if not self.settings.chunking or not parts or len(parts) > 2 or not parts[0].isdigit() or len(parts[0]) > 15 \
                or (len(parts) == 2 and parts[1].upper() != "LAST"):
            # Without a valid size the chunk cannot be skipped: close (RFC 3030 4.2).
            self._send(Reply(501, "5.5.4", "Syntax: BDAT size [LAST]"))
            self._close("bad BDAT", events)
            return
        size = int(parts[0])
        self._state = _BDAT
        self._bdat_left = size
        self._bdat_last = len(parts) == 2
        self._bdat_reply = None
        if self.sender is None:
            self._bdat_reply = R.NEED_MAIL
        elif not self.recipients:
            self._bdat_reply = R.NO_VALID_RECIPIENTS
        elif self._data_error is None and self._data_size + size > self.settings.max_message_size:
            self._data_error = R.TOO_BIG
        if self._bdat_reply is None:
            self._bdat_used = True

    def _cmd_rset(self, arg, events):
        if self.sender is not None:
            events.append(Reset())
        self._reset_transaction()
        self._send(R.RESET_OK)

    def _cmd_noop(self, arg, events):
        self._send(R.OK)

    def _cmd_quit(self, arg, events):
        self._send(R.BYE)
        self._close("quit", events)

    def _cmd_help(self, arg, events):
        self._send(R.HELP)

    def _cmd_vrfy(self, arg, events):
        if not arg.strip():
            self._error(R.BAD_ARGUMENTS, events)
            return
        if self.settings.vrfy:
            self._waiting = Verify(arg.strip())
            events.append(self._waiting)
        else:
            self._send(R.VRFY_CANNOT)

    def _cmd_expn(self, arg, events):
        self._error(R.NOT_IMPLEMENTED, events)

    def _cmd_starttls(self, arg, events):
        if arg:
            self._error(R.BAD_ARGUMENTS, events)
            return
        if self.tls_active:
            self._error(R.TLS_ALREADY, events)
            return
        if not self.settings.starttls:
            self._error(R.TLS_NOT_AVAILABLE, events)
            return
        if self.helo is None and self.settings.require_helo:
            self._error(R.NEED_HELO, events)
            return
        self._send(R.READY_FOR_TLS)
        # RFC 3207 / CVE-2011-0411: nothing sent before the handshake is a command.
        # Reading stops here; common.tls.start_tls discards the rest (discard_input).
        self._state = _TLS
        events.append(StartTLS())

    def _cmd_auth(self, arg, events):
        s = self.settings
        if not s.auth_mechanisms:
            self._error(R.AUTH_NOT_AVAILABLE, events)
            return
        if not self.esmtp:
            self._error(R.NEED_HELO, events)
            return
        if self.auth_user is not None:
            self._error(R.AUTH_ALREADY, events)
            return
        if self.sender is not None:
            self._error(R.BAD_SEQUENCE, events)
            return
        if not self.auth_allowed:
            self._error(R.AUTH_NEEDS_TLS, events)
            return
        mech_name, _, initial = arg.strip().partition(" ")
        mech_name = mech_name.upper()
        mech = sasl_mechanism(mech_name) if mech_name in s.auth_mechanisms else None
        if mech is None:
            self._error(R.AUTH_UNKNOWN_MECHANISM, events)
            return
        self._sasl = mech
        self._sasl_name = mech_name
        self._sasl_step(lambda: mech.start(initial.encode("ascii", "replace") if initial else None), events)

    def _auth_response(self, line: bytes, events):
        self._sasl_step(lambda: self._sasl.receive(line), events)

    def _sasl_step(self, step, events):
        self._state = _COMMAND
        try:
            result = step()
        except SaslCancelled:
            self._error(R.AUTH_CANCELLED, events)
            return
        except SaslError:
            self._error(R.AUTH_BAD_ENCODING, events)
            return
        if isinstance(result, Challenge):
            self._state = _AUTH
            self._out.append(b"334 " + result.data + b"\r\n")
            return
        self._waiting = Authenticate(self._sasl_name, result.authzid, result.username, result.password)
        events.append(self._waiting)

    # ----------------------------------------------------------------- message data

    def _data(self, events: list[Event]) -> bool:
        """Consume complete DATA lines. Returns False when more input is needed."""
        buf = self._buf
        end = buf.rfind(b"\n")
        if end < 0:
            if len(buf) > self.settings.max_text_line:
                # An over-long partial line: note it and drop what we have, but keep
                # a trailing CR, which may be half of the CRLF.
                self._data_error = self._data_error or R.TEXT_LINE_TOO_LONG
                keep_cr = buf.endswith(b"\r")
                self._data_size += len(buf)
                buf.clear()
                self._midline = True
                if keep_cr:
                    buf += b"\r"
            return False
        chunk = bytes(buf[:end + 1])
        start = 0
        if self._midline:
            # The rest of a line already judged too long: skip to its end.
            nl = chunk.find(b"\n")
            if nl == 0 or chunk[nl - 1] != 13 or b"\r" in chunk[:nl - 1]:
                return self._bare_line_end(events)
            start = nl + 1
            self._midline = False
        # Every complete line in chunk starts at a line start; "\n." + CRLF with the
        # \n preceded by \r (checked below) is the only end of data.
        probe = b"\n" + chunk[start:]
        term = probe.find(b"\n.\r\n")
        if term >= 0:
            body = probe[1:term + 1]
            consumed = start + term + 3
        else:
            body = probe[1:]
            consumed = end + 1
        if body.count(b"\n") != body.count(b"\r\n") or body.count(b"\r") != body.count(b"\n"):
            return self._bare_line_end(events)
        del buf[:consumed]
        if self._data_error is None and body:
            limit = self.settings.max_text_line
            if len(body) > limit and max(map(len, body.split(b"\r\n"))) + 2 > limit:
                self._data_error = R.TEXT_LINE_TOO_LONG
        if body:
            self._data_size += len(body)
            if self._data_size > self.settings.max_message_size:
                self._data_error = R.TOO_BIG  # the more useful reason of the two
            if self._data_error is None:
                if b"\n." in probe[:term + 1 if term >= 0 else len(probe)]:
                    body = (b"\n" + body).replace(b"\n.", b"\n")[1:]
                self._chunks.append(body)
        if term < 0:
            return True
        self._state = _COMMAND
        self._finish_message(events)
        return True

    def _bare_line_end(self, events) -> bool:
        self._send(R.BARE_LINE_END_DATA)
        self._close("bare CR or LF in message data", events)
        return False

    def _bdat(self, events: list[Event]) -> bool:
        buf = self._buf
        if self._bdat_left:
            if not buf:
                return False
            take = min(self._bdat_left, len(buf))
            if self._bdat_reply is None and self._data_error is None:
                self._chunks.append(bytes(buf[:take]))
            del buf[:take]
            self._bdat_left -= take
            self._data_size += take
            if self._bdat_left:
                return False
        self._state = _COMMAND
        if self._bdat_reply is not None:
            self._error(self._bdat_reply, events)
            return True
        if not self._bdat_last:
            if self._data_error is not None:
                # RFC 3030: once a chunk fails, the transaction is void.
                self._error(self._data_error, events)
                self._reset_transaction()
                return True
            self._send(Reply(250, "2.0.0", "%d octets received" % self._data_size))
            return True
        if self._data_error is None:
            data = b"".join(self._chunks)
            if data.count(b"\n") != data.count(b"\r\n") or data.count(b"\r") != data.count(b"\n"):
                self._data_error = Reply(554, "5.6.0", "Bare CR or LF in message data; only CRLF ends a line")
            elif len(data) > self.settings.max_text_line:
                if max(map(len, data.split(b"\r\n"))) + 2 > self.settings.max_text_line:
                    self._data_error = R.TEXT_LINE_TOO_LONG
            self._chunks = [data]
        self._finish_message(events)
        return True

    def _finish_message(self, events: list[Event]) -> None:
        if self._data_error is not None:
            if self.lmtp:
                # RFC 2033 4.2: one reply per accepted recipient, a refusal included.
                for _ in self.recipients[1:]:
                    self._send(self._data_error)
            self._error(self._data_error, events)
            self._reset_transaction()
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        self._waiting = Message(self.sender or "", self.mail_params, self.recipients, data)
        events.append(self._waiting)


#: (settings, TLS active, AUTH offered) -> the EHLO answer: built once, not per session.
_EHLO_REPLIES: dict[tuple, bytes] = {}

_HANDLERS = {
    b"HELO": SmtpServerConn._cmd_helo,
    b"EHLO": SmtpServerConn._cmd_ehlo,
    b"LHLO": SmtpServerConn._cmd_lhlo,
    b"MAIL": SmtpServerConn._cmd_mail,
    b"RCPT": SmtpServerConn._cmd_rcpt,
    b"DATA": SmtpServerConn._cmd_data,
    b"BDAT": SmtpServerConn._cmd_bdat,
    b"RSET": SmtpServerConn._cmd_rset,
    b"NOOP": SmtpServerConn._cmd_noop,
    b"QUIT": SmtpServerConn._cmd_quit,
    b"HELP": SmtpServerConn._cmd_help,
    b"VRFY": SmtpServerConn._cmd_vrfy,
    b"EXPN": SmtpServerConn._cmd_expn,
    b"STARTTLS": SmtpServerConn._cmd_starttls,
    b"AUTH": SmtpServerConn._cmd_auth,
}

#: commands that count towards max_commands_before_mail (a MAIL resets the count)
_JUNK_COMMANDS = frozenset({b"HELO", b"EHLO", b"LHLO", b"RSET", b"NOOP", b"HELP", b"VRFY", b"EXPN", b"STARTTLS", b"AUTH"})

_MAIL_PARAMS = {
    "SIZE": SmtpServerConn._p_size,
    "BODY": SmtpServerConn._p_body,
    "SMTPUTF8": SmtpServerConn._p_smtputf8,
    "RET": SmtpServerConn._p_ret,
    "ENVID": SmtpServerConn._p_xtext,
    "AUTH": SmtpServerConn._p_auth,
}

_RCPT_PARAMS = {
    "NOTIFY": SmtpServerConn._p_notify,
    "ORCPT": SmtpServerConn._p_orcpt,
}
