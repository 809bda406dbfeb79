"""mda.deliver -- postroom-deliver: deliver one message read from standard input.

Used by an existing MTA as its delivery command, like dovecot-lda or procmail:
Postfix's mailbox_command, or a pipe transport in master.cf:

    postroom  unix  -  n  n  -  -  pipe
      flags=DRhu user=vmail argv=/usr/bin/postroom-deliver -f ${sender} -a ${original_recipient} -d ${user}@${nexthop}

Exit status follows sysexits.h: 0 delivered, 67 unknown user, 75 temporary failure
(disk full, quota when configured temporary, any unexpected error), 77 permanent
refusal (a Sieve reject, over quota, a loop, too big) with its reason on standard
error for the MTA's bounce, 78 configuration error. Any unexpected error exits 75,
so the calling MTA keeps the message.

SECURITY: runs as the recipient (or the mail user); trusts nothing in the message.
The message size is bounded by max_message_size; standard error carries only the
public text of a refusal, never a traceback or a path.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import sys

from common.errors import EX_CONFIG, EX_NOPERM, EX_NOUSER, EX_OK, EX_TEMPFAIL, MailError

USAGE_EPILOG = """exit status: 0 delivered, 67 unknown user, 75 temporary failure (try again later),
77 permanent refusal (reason on standard error), 78 configuration error"""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="postroom-deliver", description="Deliver one message from standard input "
                                "into a user's maildir, applying the user's Sieve script.", epilog=USAGE_EPILOG)
    p.add_argument("-d", dest="user", metavar="USER", help="the recipient user (default: the user running the command)")
    p.add_argument("-a", dest="address", metavar="ADDRESS", help="the original recipient address (default: USER)")
    p.add_argument("-f", dest="sender", metavar="SENDER", help="the envelope sender (default: the Return-Path header, else <>)")
    p.add_argument("-m", dest="mailbox", metavar="MAILBOX", help="the default folder instead of INBOX")
    p.add_argument("-c", "--config", dest="config", metavar="DIR", help="configuration folder (default: $POSTROOM_CONFIG, else /etc/postroom)")
    return p.parse_args(argv)


def _strip_mbox_from(message: bytes) -> bytes:
    """Drop a leading mbox "From " line (Postfix pipe flag F, procmail habits)."""
    if message.startswith(b"From "):
        nl = message.find(b"\n")
        return message[nl + 1:] if nl >= 0 else b""
    return message


def _return_path(message: bytes) -> str:
    from mda.sieve import Message
    values = Message(message).header("return-path")
    if not values:
        return ""
    value = values[0].strip()
    return value[1:-1] if value.startswith("<") and value.endswith(">") else value


def _fail(code: int, text: str) -> int:
    print(f"postroom-deliver: {text}", file=sys.stderr)
    return code


def _read_message(limit: int) -> bytes | None:
    data = sys.stdin.buffer.read(limit + 1)
    return None if len(data) > limit else data


def deliver(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from common.config import ConfigError, config_dir, load
    from common.log import setup_logging
    try:
        cfg = load(config_dir(args.config), "mda")
    except ConfigError as e:
        return _fail(EX_CONFIG, str(e))
    # Standard error goes into the MTA's bounce: only warnings and errors there.
    log_cfg = cfg.core.log
    if log_cfg.target == "stderr" and log_cfg.level in ("debug", "info"):
        log_cfg = dataclasses.replace(log_cfg, level="warn")
    setup_logging(log_cfg, "deliver")

    from .delivery import Deliverer, DeliveryRequest
    try:
        deliverer = Deliverer(cfg.core, cfg.daemon)
    except ConfigError as e:
        return _fail(EX_CONFIG, str(e))
    message = _read_message(int(cfg.daemon.max_message_size))
    if message is None:
        return _fail(EX_NOPERM, "552 5.3.4 Message too big")
    message = _strip_mbox_from(message)
    user = args.user or getpass.getuser()
    recipient = args.address or user
    sender = args.sender if args.sender is not None else _return_path(message)
    if sender == "<>" or sender.upper() == "MAILER-DAEMON":
        sender = ""
    req = DeliveryRequest(message=message, sender=sender, recipient=recipient, user=args.user, folder=args.mailbox)
    try:
        report = deliverer.deliver(req)
    except MailError as e:
        if e.enhanced == "5.1.1":
            return _fail(EX_NOUSER, f"{e.code} {e.enhanced} {e.public}")
        if e.temporary:
            return _fail(EX_TEMPFAIL, f"{e.code} {e.enhanced} {e.public}")
        return _fail(EX_NOPERM, f"{e.code} {e.enhanced} {e.public}")
    from .delivery import log
    log.info("delivered to {user}: {mailboxes}", user=report.user, mailboxes=",".join(report.mailboxes) or "discarded")
    return EX_OK


def main(argv: list[str] | None = None) -> None:
    try:
        code = deliver(argv)
    except SystemExit as e:   # argparse: --help is 0, a usage error becomes a temporary failure
        code = EX_OK if e.code in (0, None) else EX_TEMPFAIL
    except BaseException as e:  # noqa: BLE001 - any unexpected error: the MTA must keep the message
        code = _fail(EX_TEMPFAIL, f"451 4.3.0 Temporary local problem, try again later ({type(e).__name__})")
    sys.exit(code)


if __name__ == "__main__":
    main()
