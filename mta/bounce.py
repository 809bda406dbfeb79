"""mta.bounce -- delivery status notifications in RFC 3464 form.

`build_dsn(...)` writes one multipart/report (RFC 6522) message: a human-readable
part, a message/delivery-status part with one block per recipient (Final-Recipient,
Original-Recipient, Action, Status, Remote-MTA, Diagnostic-Code...), and the
original message (RET=FULL or no RET) or only its header (RET=HDRS) as
message/rfc822 or text/rfc822-headers.

`dsn_envelope(...)` is the envelope of such a notice: the null reverse-path, so a
notice can never cause another (RFC 5321 section 4.5.5); source "bounce".

The caller decides who gets a notice (see manager.py): never the null sender, one
notice per message per event listing every recipient of that event.

SECURITY: everything taken from the failed message or a remote server's reply
(addresses, diagnostic texts) is reduced to printable text on one line and
bounded in length before it goes into a header field.
"""

from __future__ import annotations

import email.utils
import time
import uuid
from dataclasses import dataclass

from common.spool import Envelope, Recipient

MAX_RETURNED = 10 * 1024 * 1024   # larger originals are returned as headers only

ACTION_TEXT = {
    "failed": ("Undelivered Mail Returned to Sender",
               "I'm sorry to have to inform you that your message could not\n"
               "be delivered to one or more recipients. The details are below."),
    "delayed": ("Delayed Mail (still being retried)",
                "This is a warning only; you do not need to send the message again.\n"
                "It could not be delivered yet to the recipients below; delivery is\n"
                "still being tried."),
    "delivered": ("Successful Mail Delivery Report",
                  "Your message was delivered to the recipients below."),
    "relayed": ("Successful Mail Delivery Report",
                "Your message was passed on to the recipients' mail system, which\n"
                "does not report delivery."),
}


@dataclass
class RecipientReport:
    recipient: Recipient
    action: str                       # failed, delayed, delivered, relayed
    status: str                       # enhanced status code
    diagnostic: str = ""              # the remote reply or a local reason
    remote_mta: str | None = None
    smtp_reply: bool = False          # diagnostic is a remote SMTP reply (smtp;) or ours (x-postroom;)
    last_attempt: float | None = None
    retry_until: float | None = None


def one_line(text: str, limit: int = 600) -> str:
    """Printable text on one line: safe in a header field."""
    s = "".join(c if c.isprintable() else " " for c in (text or ""))
    return " ".join(s.split())[:limit]


def _date(t: float) -> str:
    return email.utils.formatdate(t, localtime=False)


def _fold(name: str, value: str) -> str:
    """name: value, folded at spaces to keep each line well under 998 octets."""
    words = value.split(" ")
    lines, cur = [], f"{name}: "
    for w in words:
        if len(cur) + len(w) > 76 and cur.strip() not in (f"{name}:",):
            lines.append(cur.rstrip())
            cur = "    "
        cur += w + " "
    lines.append(cur.rstrip())
    return "\r\n".join(lines)


def _headers_of(message: bytes) -> bytes:
    end = message.find(b"\r\n\r\n")
    if end < 0:
        end = message.find(b"\n\n")
        return message if end < 0 else message[: end + 1]
    return message[: end + 2]


def build_dsn(envelope: Envelope, message: bytes, reports: list[RecipientReport],
              reporting_mta: str, now: float | None = None, to: str | None = None) -> bytes:
    """The whole notice, with CRLF line ends. All reports share one action kind's
    subject (the first report's action)."""
    now = time.time() if now is None else now
    action = reports[0].action
    subject, intro = ACTION_TEXT[action]
    boundary = f"{envelope.queue_id}.{uuid.uuid4().hex[:12]}/{reporting_mta}"
    to = to if to is not None else envelope.sender
    out: list[str] = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{one_line(to, 320)}>",
        f"Subject: {subject}",
        f"Date: {_date(now)}",
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status;\r\n    boundary="{boundary}"',
        "",
        "This is a MIME-encapsulated message.",
        "",
        f"--{boundary}",
        "Content-Description: Notification",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"This is the mail system at host {reporting_mta}.",
        "",
        *intro.split("\n"),
        "",
    ]
    for rep in reports:
        line = f"<{one_line(rep.recipient.address, 320)}>: {one_line(rep.diagnostic, 400) or rep.status}"
        out += [_fold_text(line), ""]
    out += [
        f"--{boundary}",
        "Content-Description: Delivery report",
        "Content-Type: message/delivery-status",
        "",
        f"Reporting-MTA: dns; {reporting_mta}",
        f"X-Postroom-Queue-ID: {envelope.queue_id}",
    ]
    if envelope.envid:
        out.append(_fold("Original-Envelope-Id", one_line(envelope.envid, 100)))
    out.append(f"Arrival-Date: {_date(envelope.arrival)}")
    for rep in reports:
        r = rep.recipient
        out.append("")
        out.append(_fold("Final-Recipient", f"rfc822; {one_line(r.address, 320)}"))
        orig = r.orcpt
        if orig:
            kind, _, addr = orig.partition(";")
            out.append(_fold("Original-Recipient", f"{one_line(kind, 20)}; {one_line(addr, 320)}"))
        elif r.original and r.original != r.address:
            out.append(_fold("Original-Recipient", f"rfc822; {one_line(r.original, 320)}"))
        out.append(f"Action: {rep.action}")
        out.append(f"Status: {one_line(rep.status, 12)}")
        if rep.remote_mta:
            out.append(_fold("Remote-MTA", f"dns; {one_line(rep.remote_mta, 255)}"))
        if rep.diagnostic:
            kind = "smtp" if rep.smtp_reply else "x-postroom"
            out.append(_fold("Diagnostic-Code", f"{kind}; {one_line(rep.diagnostic)}"))
        if rep.last_attempt:
            out.append(f"Last-Attempt-Date: {_date(rep.last_attempt)}")
        if rep.retry_until and rep.action == "delayed":
            out.append(f"Will-Retry-Until: {_date(rep.retry_until)}")
    out += ["", f"--{boundary}"]
    full = envelope.ret != "HDRS" and action == "failed" and len(message) <= MAX_RETURNED
    if full:
        out += ["Content-Description: Undelivered Message",
                "Content-Type: message/global" if envelope.smtputf8 else "Content-Type: message/rfc822"]
        if envelope.body != "7BIT":
            out.append("Content-Transfer-Encoding: 8bit")
        original = message
    else:
        out += ["Content-Description: Message Headers",
                "Content-Type: text/rfc822-headers" if not envelope.smtputf8 else "Content-Type: message/global-headers"]
        original = _headers_of(message)
    head = ("\r\n".join(out) + "\r\n\r\n").encode("utf-8")
    original = original.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if not original.endswith(b"\r\n"):
        original += b"\r\n"
    return head + original + f"\r\n--{boundary}--\r\n".encode()


def _fold_text(line: str, width: int = 76) -> str:
    out, cur = [], ""
    for w in line.split(" "):
        if cur and len(cur) + len(w) + 1 > width:
            out.append(cur)
            cur = "    " + w
        else:
            cur = f"{cur} {w}" if cur else w
    out.append(cur)
    return "\r\n".join(out)


def dsn_envelope(original: Envelope, to: str, double_bounce: bool = False) -> Envelope:
    """The envelope of a notice to `to` about `original`: null sender, source bounce."""
    extra = {"dsn_for": original.queue_id}
    if double_bounce:
        extra["double_bounce"] = True
    return Envelope(sender="", recipients=[Recipient(to, notify=("NEVER",))], source="bounce",
                    body="7BIT" if original.body == "7BIT" and not original.smtputf8 else "8BITMIME", smtputf8=original.smtputf8 and not to.isascii(), extra=extra)
