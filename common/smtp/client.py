"""common.smtp.client -- the outbound SMTP client as a state machine without I/O.

Feed it the server's bytes (`receive`), take the bytes it wants sent
(`take_output`); it never touches a socket, a clock or a file. The Twisted glue
(mta/outbound.py) connects, arms the timer `timeout()` names, calls
`start_tls_done()` after the handshake its `StartTls` event asked for, and reports
`connection_lost()` / `timed_out()`.

One connection carries one transaction: EHLO (HELO when EHLO is refused),
STARTTLS as the TLS level asks, AUTH PLAIN or LOGIN when credentials are given,
then MAIL, RCPT... and DATA or BDAT (CHUNKING), pipelined when the server offers
PIPELINING. Before MAIL the client checks what the message needs: SIZE above the
server's limit, 8BITMIME, SMTPUTF8 and BINARYMIME missing are permanent failures
with the RFC's enhanced codes, so the message bounces instead of being mangled.
DSN parameters are passed on when the server offers DSN.

The message is sent with every line that starts with a dot stuffed, bare LF and CR
turned into CRLF, and every line longer than 998 octets broken by CRLF SP (as
Postfix's smtp_line_length_limit), so no line on the wire is ever longer.

With `reuse`, a transaction that ended normally leaves the session `idle` instead
of sending QUIT; the glue then calls `new_transaction()` for the next message to
the same host (no new connection, greeting or EHLO) or `quit()`.

The result is a `Finished` event: one `Reply` per recipient (2xx delivered, 4xx
deferred, 5xx bounced), and `try_next_host` when the failure happened before any
recipient got an answer from this host (greeting 4xx/5xx, TLS missing, lost
connection...), so the glue tries the next MX.

SECURITY: the server's replies are untrusted: each line is bounded (2048 octets),
a reply to at most 100 lines, and input buffered before STARTTLS is discarded.
Credentials are only sent over TLS unless the caller says the level is `none`
explicitly; they never appear in an event text.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

MAX_REPLY_LINE = 2048
MAX_REPLY_LINES = 100
MAX_LINE = 998            # RFC 5321 4.5.3.1.6, without the CRLF
BDAT_CHUNK = 256 * 1024

_ENHANCED = re.compile(rb"^([245])\.(\d{1,3})\.(\d{1,3})(?: |$)")


class SmtpProtocolError(Exception):
    """The server said something that is not SMTP."""


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str
    stage: str = ""           # the command it answered: greeting, EHLO, MAIL, RCPT, DATA...

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500 or self.code < 200

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 400

    def diagnostic(self) -> str:
        """The reply as a DSN Diagnostic-Code (smtp; ...)."""
        return f"{self.code} {self.enhanced} {self.text}".strip()


@dataclass
class Rcpt:
    address: str
    notify: tuple[str, ...] | None = None
    orcpt: str | None = None


@dataclass
class Transaction:
    """What one connection is to deliver."""

    sender: str
    recipients: list[Rcpt]
    message: bytes
    body: str = "7BIT"                  # 7BIT, 8BITMIME, BINARYMIME
    smtputf8: bool = False
    ret: str | None = None
    envid: str | None = None


@dataclass
class ClientOptions:
    helo_name: str
    tls: str = "may"                    # none, may, encrypt, verify
    username: str | None = None
    password: str | None = None
    tls_active: bool = False            # implicit TLS already (submissions port)
    reuse: bool = False                 # keep the session open after the transaction (see idle)


# Events
@dataclass
class StartTls:
    """Start the TLS handshake now, then call start_tls_done()."""


@dataclass
class Finished:
    """The session is over. replies[i] answers transaction.recipients[i]."""

    replies: list[Reply]
    try_next_host: bool = False
    session_reply: Reply | None = None  # why the session failed, if it did
    dsn_offered: bool = False
    tls: bool = False
    tls_failed: bool = False            # the TLS handshake (after STARTTLS's 220) failed


def temp(text: str, enhanced: str = "4.4.2", stage: str = "") -> Reply:
    return Reply(451, enhanced, text, stage)


def perm(text: str, enhanced: str, code: int = 554, stage: str = "") -> Reply:
    return Reply(code, enhanced, text, stage)


def xtext(s: str) -> str:
    """RFC 3461 xtext for ORCPT and ENVID."""
    out = []
    for ch in s.encode("utf-8"):
        if ch < 33 or ch > 126 or ch in (ord("+"), ord("=")):
            out.append(f"+{ch:02X}")
        else:
            out.append(chr(ch))
    return "".join(out)


class DataEncoder:
    """Message bytes to DATA wire form: CRLF line ends, dot-stuffing, lines folded at
    998 octets. Works across chunk boundaries; `end()` adds the final dot."""

    def __init__(self, stuff: bool = True):
        self.stuff = stuff
        self.line_len = 0          # octets already sent on the current line
        self.pending_cr = False

    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        # Normalise line ends: CRLF, bare CR and bare LF all become CRLF.
        if self.pending_cr:
            data = b"\r" + data
            self.pending_cr = False
        if data.endswith(b"\r"):
            data = data[:-1]
            self.pending_cr = True
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = data.split(b"\n")
        for i, line in enumerate(lines):
            last = i == len(lines) - 1
            self._emit(out, line)
            if not last:
                out += b"\r\n"
                self.line_len = 0
        return bytes(out)

    def _emit(self, out: bytearray, line: bytes) -> None:
        while line:
            if self.line_len == 0 and self.stuff and line[:1] == b".":
                out += b"."
                self.line_len = 1
            room = MAX_LINE - self.line_len
            if len(line) <= room:
                out += line
                self.line_len += len(line)
                return
            out += line[:room] + b"\r\n "
            self.line_len = 1
            line = line[room:]

    def end(self) -> bytes:
        out = b""
        if self.pending_cr:
            self.pending_cr = False
            out += b"\r\n"
            self.line_len = 0
        if self.line_len:
            out += b"\r\n"
            self.line_len = 0
        return out + (b".\r\n" if self.stuff else b"")


def encode_message(message: bytes, stuff: bool) -> bytes:
    enc = DataEncoder(stuff)
    return enc.feed(message) + enc.end()


class SmtpClientConn:
    """One client session. See the module docstring."""

    def __init__(self, options: ClientOptions, transaction: Transaction):
        self.opt = options
        self.tx = transaction
        self._in = bytearray()
        self._out = bytearray()
        self._lines: list[bytes] = []
        self.state = "greeting"
        self.tls = options.tls_active
        self.extensions: dict[str, str] = {}
        self.esmtp = False
        self.replies: list[Reply | None] = [None] * len(transaction.recipients)
        self.accepted: list[int] = []
        self._expect: list[tuple[str, int | None]] = []   # pipelined commands awaiting replies
        self._finished: Finished | None = None
        self._auth_step = 0
        self._data_sent = False
        self._any_rcpt_answer = False
        self._mail_failed: Reply | None = None
        self._bdat_failed: Reply | None = None
        self._bdat_pipelined = False
        self.transactions = 1
        self._tls_unconfirmed = False

    # --- glue interface -------------------------------------------------

    def take_output(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    @property
    def finished(self) -> Finished | None:
        return self._finished

    def timeout(self, t) -> float:
        """Seconds to wait in the current state; t is an SmtpTimeouts-like object."""
        if self.state == "greeting":
            return t.greeting
        if self.state == "data_init":
            return t.data_init
        if self.state in ("data_done", "bdat"):
            return t.data_done
        return t.command

    def receive(self, data: bytes) -> list:
        if self.state == "idle":
            self.state = "closed"   # the server spoke unasked (421 on idle): not reusable
            return []
        if self._finished:
            return []
        self._in += data
        events: list = []
        while not self._finished:
            nl = self._in.find(b"\n")
            if nl < 0:
                if len(self._in) > MAX_REPLY_LINE:
                    return self._abort(temp("reply line too long", "4.5.0"))
                break
            line = bytes(self._in[: nl + 1])
            del self._in[: nl + 1]
            if len(line) > MAX_REPLY_LINE:
                return self._abort(temp("reply line too long", "4.5.0"))
            try:
                reply = self._collect(line.rstrip(b"\r\n"))
            except SmtpProtocolError as e:
                return self._abort(temp(f"protocol error: {e}", "4.5.0"))
            if reply is None:
                continue
            events += self._on_reply(reply)
        if self._finished and not any(isinstance(e, Finished) for e in events):
            events.append(self._finished)
        return events

    @property
    def idle(self) -> bool:
        """A transaction ended normally and the session waits for the next one."""
        return self.state == "idle"

    def new_transaction(self, transaction: Transaction) -> list:
        """Start another transaction on an idle session (MAIL FROM at once)."""
        assert self.state == "idle", self.state
        self.tx = transaction
        self.replies = [None] * len(transaction.recipients)
        self.accepted = []
        self._mail_failed = None
        self._bdat_failed = None
        self._finished = None
        self._data_sent = False
        self._any_rcpt_answer = False
        self.transactions += 1
        return self._start_mail() or []

    def quit(self) -> None:
        """End an idle session politely."""
        if self.state == "idle":
            self._send("QUIT", "QUIT")
            self.state = "quit"

    def start_tls_done(self) -> list:
        """The TLS handshake completed: greet again, as RFC 3207 demands."""
        self.tls = True
        self._tls_unconfirmed = True     # until the server's first reply over TLS
        self.extensions = {}
        self._send_ehlo()
        return []

    def connection_lost(self, why: str = "lost connection") -> list:
        if self._finished:
            return []
        return self._abort(temp(f"{why} while in {self.state}", "4.4.2"), quit=False)

    def timed_out(self) -> list:
        if self._finished:
            return []
        return self._abort(temp(f"timeout while in {self.state}", "4.4.2"), quit=False)

    # --- reply parsing ----------------------------------------------------

    def _collect(self, line: bytes) -> tuple[int, list[bytes]] | None:
        if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in b" -"):
            raise SmtpProtocolError("malformed reply line")
        code = int(line[:3])
        if self._lines and int(self._lines[0][:3]) != code:
            raise SmtpProtocolError("reply code changed within a multiline reply")
        self._lines.append(line)
        if len(self._lines) > MAX_REPLY_LINES:
            raise SmtpProtocolError("reply has too many lines")
        if line[3:4] == b"-":
            return None
        lines, self._lines = self._lines, []
        return code, [l[4:] for l in lines]

    def _reply(self, code: int, texts: list[bytes], stage: str) -> Reply:
        first = texts[0] if texts else b""
        enhanced = ""
        m = _ENHANCED.match(first)
        if m and m.group(1) == str(code)[0].encode():
            enhanced = first[: m.end()].strip().decode()
            texts = [t[m.end():] if _ENHANCED.match(t) else t for t in texts]
        if not enhanced:
            enhanced = {2: "2.0.0", 3: "2.0.0", 4: "4.0.0", 5: "5.0.0"}.get(code // 100, "4.0.0")
        text = " ".join(t.decode("utf-8", "replace").strip() for t in texts)[:500]
        return Reply(code, enhanced, text, stage)

    # --- the state machine -----------------------------------------------

    def _send(self, line: str | bytes, stage: str, rcpt: int | None = None) -> None:
        if isinstance(line, str):
            line = line.encode("utf-8")
        self._out += line + b"\r\n"
        self._expect.append((stage, rcpt))

    def _send_ehlo(self) -> None:
        self._send(f"EHLO {self.opt.helo_name}", "EHLO")
        self.state = "ehlo"

    def _on_reply(self, raw: tuple[int, list[bytes]]) -> list:
        code, texts = raw
        self._tls_unconfirmed = False
        if self.state == "greeting":
            reply = self._reply(code, texts, "greeting")
            if code != 220:
                return self._abort(reply, next_host=True)
            self._send_ehlo()
            return []
        if not self._expect:
            return self._abort(temp("unexpected reply", "4.5.0"))
        stage, rcpt = self._expect.pop(0)
        self._last_lines = [t.decode("utf-8", "replace") for t in texts]
        reply = self._reply(code, texts, stage)
        handler = getattr(self, f"_on_{stage.lower()}")
        return handler(reply, rcpt) or []

    def _on_ehlo(self, reply: Reply, _):
        if reply.code == 250:
            self.esmtp = True
            self.extensions = {}
            # The first line is the server's name; keywords are case-insensitive.
            for line in self._last_lines[1:]:
                word, _, arg = line.strip().partition(" ")
                if word:
                    self.extensions[word.upper()] = arg.strip()
            return self._after_hello()
        if 500 <= reply.code < 600 and not self.tls:
            self._send(f"HELO {self.opt.helo_name}", "HELO")
            self.state = "helo"
            return []
        return self._abort(reply, next_host=True)

    def _on_helo(self, reply: Reply, _):
        if reply.code != 250:
            return self._abort(reply, next_host=True)
        self.esmtp = False
        self.extensions = {}
        return self._after_hello()

    def _after_hello(self):
        level = self.opt.tls
        if not self.tls and level != "none":
            if "STARTTLS" in self.extensions:
                self._send("STARTTLS", "STARTTLS")
                self.state = "starttls"
                return []
            if level in ("encrypt", "verify"):
                return self._abort(temp("TLS is required, but was not offered by the host", "4.7.4"),
                                   next_host=True)
        if self.opt.username is not None:
            if not self.tls and level != "none":
                return self._abort(temp("will not authenticate without TLS", "4.7.4"), next_host=True)
            return self._start_auth()
        return self._start_mail()

    def _on_starttls(self, reply: Reply, _):
        if reply.code == 220:
            # RFC 3207: anything the server sent before the handshake is discarded.
            self._in.clear()
            self.state = "tls"
            return [StartTls()]
        if self.opt.tls in ("encrypt", "verify") or self.opt.username is not None:
            return self._abort(Reply(reply.code if reply.code >= 400 else 454, "4.7.4",
                                     f"STARTTLS refused: {reply.text}", "STARTTLS"), next_host=True)
        return self._start_mail()

    # AUTH
    def _start_auth(self):
        mechs = self.extensions.get("AUTH", "").upper().split()
        user, pw = self.opt.username or "", self.opt.password or ""
        if "PLAIN" in mechs:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode()).decode()
            self._send(f"AUTH PLAIN {token}", "AUTH")
        elif "LOGIN" in mechs:
            self._send("AUTH LOGIN", "AUTH")
            self._auth_step = 1
        else:
            return self._abort(temp("the relay offers neither AUTH PLAIN nor AUTH LOGIN", "4.7.0"))
        self.state = "auth"
        return []

    def _on_auth(self, reply: Reply, _):
        if reply.code == 334 and self._auth_step in (1, 2):
            value = self.opt.username if self._auth_step == 1 else self.opt.password
            self._auth_step += 1
            self._out += base64.b64encode((value or "").encode()) + b"\r\n"
            self._expect.append(("AUTH", None))
            return []
        if reply.code == 235:
            return self._start_mail()
        return self._abort(Reply(454 if reply.code < 500 else 535, "4.7.0" if reply.code < 500 else "5.7.8",
                                 f"SASL authentication failed: {reply.code} {reply.text}", "AUTH"))

    # MAIL / RCPT / DATA
    def _start_mail(self):
        tx, ext = self.tx, self.extensions
        size = len(tx.message)
        if "SIZE" in ext and ext["SIZE"].isdigit() and int(ext["SIZE"]) and size > int(ext["SIZE"]):
            return self._fail_all(perm(f"message size {size} exceeds the server's limit of {ext['SIZE']}",
                                       "5.3.4", 552, "MAIL"))
        if tx.smtputf8 and "SMTPUTF8" not in ext:
            return self._fail_all(perm("the message needs SMTPUTF8, which the server does not offer",
                                       "5.6.7", 553, "MAIL"))
        if tx.body == "BINARYMIME" and not ("BINARYMIME" in ext and "CHUNKING" in ext):
            return self._fail_all(perm("the message is BINARYMIME, which the server does not offer",
                                       "5.6.3", 554, "MAIL"))
        if tx.body == "8BITMIME" and "8BITMIME" not in ext:
            return self._fail_all(perm("the message needs 8BITMIME, which the server does not offer",
                                       "5.6.3", 554, "MAIL"))
        params = []
        if self.esmtp:
            if "SIZE" in ext:
                params.append(f"SIZE={size}")
            if tx.body in ("8BITMIME", "BINARYMIME"):
                params.append(f"BODY={tx.body}")
            if tx.smtputf8:
                params.append("SMTPUTF8")
            if "DSN" in ext:
                if tx.ret:
                    params.append(f"RET={tx.ret}")
                if tx.envid:
                    params.append(f"ENVID={xtext(tx.envid)}")
        self.pipelining = "PIPELINING" in ext
        self.chunking = "CHUNKING" in ext
        self._send(" ".join([f"MAIL FROM:<{tx.sender}>", *params]), "MAIL")
        self.state = "mail"
        self._bdat_pipelined = False
        if self.pipelining:
            for i in range(len(tx.recipients)):
                self._send_rcpt(i)
            if self.chunking:
                # RFC 3030 4.2: BDAT may follow RCPT in the same group; a server that
                # refused every recipient refuses the BDAT and drops its data.
                self._send_bdat(pipelined=True)
            else:
                self._send("DATA", "DATA")
        return []

    def _send_rcpt(self, i: int) -> None:
        r = self.tx.recipients[i]
        params = []
        if "DSN" in self.extensions:
            if r.notify:
                params.append("NOTIFY=" + ",".join(r.notify))
            if r.orcpt:
                kind, _, addr = r.orcpt.partition(";")
                params.append(f"ORCPT={kind};{xtext(addr)}")
        self._send(" ".join([f"RCPT TO:<{r.address}>", *params]), "RCPT", i)

    def _on_mail(self, reply: Reply, _):
        if reply.code != 250:
            self._mail_failed = reply
            if not self.pipelining:
                return self._fail_all(reply)
            return []  # the pipelined RCPT and DATA replies follow; finish after them
        self.state = "rcpt"
        if not self.pipelining:
            self._send_rcpt(0)
        return []

    def _on_rcpt(self, reply: Reply, i: int):
        self._any_rcpt_answer = True
        failed_mail = self._mail_failed
        if failed_mail is not None:
            self.replies[i] = failed_mail
        elif reply.code in (250, 251):
            self.accepted.append(i)
        else:
            self.replies[i] = reply
        last = i == len(self.tx.recipients) - 1
        if not last:
            if not self.pipelining:
                self._send_rcpt(i + 1)
            return []
        if self._bdat_pipelined or failed_mail is not None:
            return []  # the replies to BDAT (or DATA) sent in the same group follow
        if not self.accepted:
            if self.pipelining:
                return []  # DATA's reply (503/554) is still to come
            return self._quit()
        if self.chunking:
            return self._send_bdat()
        if not self.pipelining:
            self._send("DATA", "DATA")
        self.state = "data_init"
        return []

    def _on_data(self, reply: Reply, _):
        if reply.code == 354:
            if not self.accepted or self._mail_failed:
                # RFC 2920 3.1: no valid recipient, yet the server wants data: end it empty.
                self._out += b".\r\n"
                self._expect.append(("DATA_END_EMPTY", None))
                self.state = "data_done"
                return []
            self._out += encode_message(self.tx.message, stuff=True)
            self._expect.append(("DATA_END", None))
            self.state = "data_done"
            self._data_sent = True
            return []
        for i in self.accepted:
            self.replies[i] = reply
        self.accepted = []
        return self._quit()

    def _on_data_end_empty(self, reply: Reply, _):
        return self._quit()

    def _on_data_end(self, reply: Reply, _):
        for i in self.accepted:
            self.replies[i] = reply
        return self._quit()

    def _send_bdat(self, pipelined: bool = False):
        if self.tx.body == "BINARYMIME":
            data = self.tx.message
        else:
            data = encode_message(self.tx.message, stuff=False)
        chunks = [data[o:o + BDAT_CHUNK] for o in range(0, len(data), BDAT_CHUNK)] or [b""]
        for n, chunk in enumerate(chunks):
            last = n == len(chunks) - 1
            self._out += f"BDAT {len(chunk)}{' LAST' if last else ''}\r\n".encode() + chunk
            self._expect.append(("BDAT", 1 if last else 0))
        self._bdat_failed = None
        if pipelined:
            self._bdat_pipelined = True   # sent, but no recipient was answered yet
        else:
            self.state = "bdat"
            self._data_sent = True
        return []

    def _on_bdat(self, reply: Reply, last: int):
        self._data_sent = True
        if reply.code != 250 and self._bdat_failed is None:
            self._bdat_failed = reply
        if not last:
            return []
        final = self._bdat_failed or reply
        for i in self.accepted:
            self.replies[i] = final
        return self._quit()

    def _on_quit(self, reply: Reply, _):
        return []

    def _on_idle(self, reply: Reply, _):
        return []

    # --- ending -------------------------------------------------------------

    def _quit(self):
        if self.opt.reuse:
            self.state = "idle"
            return self._finish()
        self._send("QUIT", "QUIT")
        self.state = "quit"
        return self._finish()

    def _fail_all(self, reply: Reply):
        for i, r in enumerate(self.replies):
            if r is None:
                self.replies[i] = reply
        return self._quit()

    def _abort(self, reply: Reply, next_host: bool = False, quit: bool = True) -> list:
        """The session failed: every recipient without an answer gets reply."""
        if quit and self.state not in ("tls", "quit"):
            self._out += b"QUIT\r\n"
        # Another host may do better only if this one answered no recipient yet.
        next_host = (next_host or reply.temporary) and not self._any_rcpt_answer and not self._data_sent
        for i, r in enumerate(self.replies):
            if r is None:
                self.replies[i] = reply
        tls_failed = self.state == "tls" or self._tls_unconfirmed
        self.state = "closed"
        self._finished = Finished(list(self.replies), try_next_host=next_host, session_reply=reply,
                                  dsn_offered="DSN" in self.extensions, tls=self.tls, tls_failed=tls_failed)
        return [self._finished]

    def _finish(self) -> list:
        self._finished = Finished(list(self.replies), dsn_offered="DSN" in self.extensions, tls=self.tls)
        return [self._finished]
