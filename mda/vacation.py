"""mda.vacation -- whether to answer a vacation action, and the answer (RFC 5230, RFC 3834).

A reply is sent at most once per sender and handle within the period the script
asked for (state per user, see mda.state), and never:
- to the null sender, or to MAILER-DAEMON, owner-*, *-request, LISTSERV, majordomo;
- to mail that is auto-submitted (Auto-Submitted other than "no"), bulk or list mail
  (Precedence bulk/list/junk, any List-* header), or itself a reply from us;
- when none of the user's addresses is in To, Cc, Bcc or their Resent- forms;
- to one of the user's own addresses.
The reply goes to the envelope sender, with an empty envelope sender,
Auto-Submitted: auto-replied and In-Reply-To/References, through the MTA.

SECURITY: the message is untrusted. Only addresses parsed from headers are compared;
the original subject is copied into the reply's Subject folded and RFC 2047-encoded
by the standard library, never as raw bytes; header injection through :subject or
:from is impossible because CR and LF are removed.
"""

from __future__ import annotations

import email.utils
import quopri
from email.header import Header

from common.spool import Envelope, Recipient

from .sieve import Message, Vacation
from .sieve.interpreter import parse_addresses

_LIST_LOCALPARTS = ("mailer-daemon", "listserv", "majordomo", "mailer")
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")
_LIST_HEADERS = ("list-id", "list-help", "list-unsubscribe", "list-subscribe", "list-post", "list-owner",
                 "list-archive")


def _clean(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def refusal(message: Message, sender: str, user_addresses: list[str], vacation: Vacation) -> str | None:
    """Why no reply may be sent, or None when one may."""
    if not sender:
        return "null sender"
    local = sender.rpartition("@")[0].lower()
    if local in _LIST_LOCALPARTS or local.startswith("owner-") or local.endswith("-request"):
        return "sender is a list or mailer address"
    auto = [v.lower() for v in message.header("auto-submitted")]
    if any(v.split(";")[0].strip() != "no" for v in auto):
        return "message is auto-submitted"
    if any(v.strip().lower() in ("bulk", "list", "junk") for v in message.header("precedence")):
        return "message is bulk or list mail"
    if any(message.has_header(h) for h in _LIST_HEADERS):
        return "message is list mail"
    if message.has_header("x-postroom-vacation"):
        return "message is a vacation reply"
    mine = {a.lower() for a in user_addresses + list(vacation.addresses) if a}
    if sender.lower() in mine:
        return "sender is the user"
    named = set()
    for h in _RECIPIENT_HEADERS:
        for value in message.header(h):
            named.update(a.lower() for a in parse_addresses(value))
    if not named & mine:
        return "the user is not named in To, Cc or Bcc"
    return None


def compose(message: Message, sender: str, recipient: str, vacation: Vacation, hostname: str) -> bytes:
    """The reply message, CRLF line ends."""
    from_ = _clean(vacation.from_) if vacation.from_ else recipient
    if vacation.subject is not None:
        subject = _clean(vacation.subject)
    else:
        original = (message.header("subject") or [""])[0]
        subject = "Auto: " + _clean(original) if original else "Automated reply"
    msgid = (message.header("message-id") or [""])[0].strip()
    reason = vacation.reason.replace("\r\n", "\n")
    if vacation.mime:
        # :mime: the reason is a whole MIME entity, its own headers first.
        entity = reason if "\n\n" in reason else "\n" + reason
    elif reason.isascii() and all(len(line) < 900 for line in reason.split("\n")):
        entity = "Content-Type: text/plain; charset=us-ascii\nContent-Transfer-Encoding: 7bit\n\n" + reason
    else:
        encoded = quopri.encodestring(reason.encode("utf-8")).decode("ascii")
        entity = "Content-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: quoted-printable\n\n" + encoded
    body_entity = entity.replace("\n", "\r\n")
    lines = [
        f"From: {from_}",
        f"To: <{sender}>",
        f"Subject: {Header(subject, 'utf-8').encode() if not subject.isascii() else subject}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: {email.utils.make_msgid(domain=hostname)}",
        "Auto-Submitted: auto-replied (vacation)",
        "X-Postroom-Vacation: yes",
        "Precedence: bulk",
        "MIME-Version: 1.0",
    ]
    if msgid.startswith("<") and msgid.endswith(">") and len(msgid) < 1000:
        refs = " ".join((message.header("references") or [""])[0].split()[-10:] + [msgid]).strip()
        lines += [f"In-Reply-To: {msgid}", f"References: {refs}"]
    out = "\r\n".join(lines) + "\r\n" + body_entity
    if not out.endswith("\r\n"):
        out += "\r\n"
    return out.encode("utf-8")


def reply_envelope(sender: str, recipient: str, size: int) -> Envelope:
    """Envelope of a vacation reply: null reverse-path (RFC 3834 3.3), one recipient."""
    env = Envelope(sender="", recipients=[Recipient(address=sender)], source="local")
    env.extra["vacation_for"] = recipient
    env.size = size
    return env
