"""common.smtp.replies -- SMTP reply formatting and the replies the server core uses.

Every 2xx, 4xx and 5xx reply carries an enhanced status code (RFC 2034, RFC 3463),
except the greeting and the HELO/EHLO answer, whose text clients parse as keywords.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    """One SMTP reply. enhanced is "" for replies that carry no enhanced code
    (greeting, EHLO, 334 and 354)."""

    code: int
    enhanced: str
    text: str

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    @property
    def positive(self) -> bool:
        return self.code < 400

    def encode(self) -> bytes:
        wire = self.__dict__.get("_wire")
        if wire is None:
            wire = format_reply(self.code, self.enhanced, self.text)
            object.__setattr__(self, "_wire", wire)  # replies are constants: format once
        return wire


def format_reply(code: int, enhanced: str, text: str) -> bytes:
    """The wire form of a reply; a text with newlines becomes a multi-line reply.

    Control characters in the text are replaced, so that no caller can ever put a
    bare CR or LF (or anything else) on the wire by accident."""
    if text.isprintable() and text.isascii():  # the common case: one clean line
        if enhanced:
            return b"%d %s %s\r\n" % (code, enhanced.encode(), text.encode())
        return b"%d %s\r\n" % (code, text.encode())
    lines = text.split("\n") or [""]
    out = []
    last = len(lines) - 1
    for i, line in enumerate(lines):
        line = "".join(c if c >= " " and c != "\x7f" else "?" for c in line)
        sep = " " if i == last else "-"
        if enhanced:
            out.append(f"{code}{sep}{enhanced} {line}\r\n")
        else:
            out.append(f"{code}{sep}{line}\r\n")
    return "".join(out).encode("utf-8")


def from_error(err) -> Reply:
    """A Reply from a common.errors.MailError (its public text only)."""
    return Reply(err.code, err.enhanced, err.public)


OK = Reply(250, "2.0.0", "OK")
SENDER_OK = Reply(250, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient OK")
RESET_OK = Reply(250, "2.0.0", "Reset OK")
BYE = Reply(221, "2.0.0", "Bye")
START_DATA = Reply(354, "", "End data with <CR><LF>.<CR><LF>")
READY_FOR_TLS = Reply(220, "2.0.0", "Ready to start TLS")
AUTH_OK = Reply(235, "2.7.0", "Authentication successful")
VRFY_CANNOT = Reply(252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery")
HELP = Reply(214, "2.0.0", "See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT HELP VRFY STARTTLS AUTH")

SYNTAX_ERROR = Reply(500, "5.5.2", "Syntax error, command unrecognized")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long")
BARE_LINE_END = Reply(500, "5.5.2", "Bare CR or LF in command; only CRLF ends a line")
BARE_LINE_END_DATA = Reply(521, "5.5.2", "Bare CR or LF in message data; only CRLF ends a line")
BAD_ARGUMENTS = Reply(501, "5.5.4", "Syntax error in parameters or arguments")
NOT_IMPLEMENTED = Reply(502, "5.5.1", "Command not implemented")
BAD_SEQUENCE = Reply(503, "5.5.1", "Bad sequence of commands")
NEED_HELO = Reply(503, "5.5.1", "Send HELO or EHLO first")
NEED_LHLO = Reply(503, "5.5.1", "Send LHLO first")
NESTED_MAIL = Reply(503, "5.5.1", "Sender already given")
NEED_MAIL = Reply(503, "5.5.1", "Need MAIL before RCPT")
NEED_RCPT = Reply(503, "5.5.1", "Need RCPT before DATA")
NO_VALID_RECIPIENTS = Reply(554, "5.5.1", "No valid recipients")
MIXED_DATA_BDAT = Reply(503, "5.5.1", "DATA and BDAT cannot be mixed in one transaction")
UNKNOWN_PARAMETER = Reply(555, "5.5.4", "Unsupported MAIL or RCPT parameter")
BAD_ADDRESS = Reply(553, "5.1.3", "Bad address syntax")
NON_ASCII_ADDRESS = Reply(553, "5.6.7", "Non-ASCII address requires SMTPUTF8")
TOO_BIG = Reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
TEXT_LINE_TOO_LONG = Reply(500, "5.5.2", "Message line too long")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TOO_MANY_ERRORS = Reply(421, "4.7.0", "Too many errors, closing connection")
TOO_MANY_COMMANDS = Reply(421, "4.7.0", "Too many commands, closing connection")
TIMEOUT = Reply(421, "4.4.2", "Timeout, closing connection")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down, closing connection")
LOCAL_ERROR = Reply(451, "4.3.0", "Temporary local problem, try again later")
NO_SPACE = Reply(452, "4.3.1", "Insufficient system storage")
TLS_NOT_AVAILABLE = Reply(454, "4.7.0", "TLS not available")
TLS_ALREADY = Reply(503, "5.5.1", "TLS already active")
TLS_REQUIRED = Reply(530, "5.7.0", "Must issue a STARTTLS command first")
AUTH_REQUIRED = Reply(530, "5.7.0", "Authentication required")
AUTH_NEEDS_TLS = Reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
AUTH_UNKNOWN_MECHANISM = Reply(504, "5.5.4", "Unrecognized authentication type")
AUTH_ALREADY = Reply(503, "5.5.1", "Already authenticated")
AUTH_CANCELLED = Reply(501, "5.0.0", "Authentication cancelled")
AUTH_BAD_ENCODING = Reply(501, "5.5.2", "Cannot decode response")
AUTH_FAILED = Reply(535, "5.7.8", "Authentication credentials invalid")
AUTH_NOT_AVAILABLE = Reply(502, "5.5.1", "Authentication not enabled")
REFUSED_WAIT_QUIT = Reply(503, "5.5.1", "Service refused; only QUIT is accepted")
