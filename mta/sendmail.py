"""mta.sendmail -- postroom-sendmail, usable as /usr/sbin/sendmail by scripts and cron.

    postroom-sendmail [-t] [-i] [-oi] [-f SENDER | -r SENDER] [-F NAME] [-bm] [RECIPIENT...]
    postroom-sendmail -bs          an SMTP session on standard input and output
    postroom-sendmail -q           ask the queue manager to retry deferred mail now
    postroom-sendmail -bp          list the queue (as mailq)
    postroom-sendmail --help       this usage, exit 0

The message is read from standard input. Without -i (or -oi) a line holding only
a dot ends it, as traditional sendmail does. -t takes recipients from the To, Cc
and Bcc fields (added to those on the command line) and removes Bcc. -N, -R and
-V set the DSN NOTIFY, RET and ENVID. -q also takes Postfix's forms -qINTERVAL and
-qRSITE; both retry all deferred mail (the interval and the site are ignored).
-v prints the queue ID and the recipients on standard error; unlike Postfix's
sendmail -v it does not mail a report of the delivery (ask for DSN notices with
-N success,failure,delay instead). Other -o options, -B, -X and -L are accepted
and ignored, as Postfix does. -C DIR names the configuration folder (also
$POSTROOM_CONFIG).

No privilege is needed: the message is written, as the invoking user, into the
spool's maildrop/ folder (mode 1733, or 1730 with `queue.maildrop_group`), under
an unguessable name; the MTA's pickup validates it and decides the envelope sender
from the file's owner (see mta/queue/pickup.py and docs/queue.md).

Exit status (sysexits.h): 0 queued, 64 usage, 65 bad message, 66 no input,
73 cannot write the maildrop file, 75 try again later, 78 configuration.

SECURITY: runs as an ordinary user; trusts nothing it reads. The maildrop file is
written to a temporary name, fsync'd and renamed, so the pickup never sees half a
message; exit 0 only after that.
"""

from __future__ import annotations

import email.utils
import getpass
import os
import re
import secrets
import sys
from pathlib import Path

from common.errors import EX_CANTCREAT, EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_OK, EX_TEMPFAIL, EX_USAGE
from common.fsutil import fsync_dir, write_file_synced
from common.spool import Envelope, Recipient, encode, new_queue_id

FLUSH_FLAG = ".flush"
USAGE = "usage: postroom-sendmail [-t] [-i] [-f sender] [-F name] [-bm|-bs|-bp|-q] [recipient ...]"
HELP = USAGE + """

Queue a message read from standard input (a drop-in for /usr/sbin/sendmail).

  -t              recipients from To, Cc and Bcc as well (Bcc is removed)
  -i, -oi         a line with a single dot does not end the message
  -f ADDR, -r ADDR  envelope sender (only trusted users may set any)
  -F NAME         full name for the From field added when there is none
  -N LIST         DSN NOTIFY: never, or some of success,failure,delay
  -R full|hdrs    DSN RET
  -V ENVID        DSN ENVID
  -bm             read a message from standard input (the default)
  -bs             an SMTP session on standard input and output
  -bp             list the queue (as mailq)
  -q              retry deferred mail now (-qINTERVAL and -qRSITE do the same)
  -v              print the queue ID and recipients on standard error (no report is mailed)
  -C DIR          configuration folder (default $POSTROOM_CONFIG or /etc/postroom)
  --help          this text

Other -o options, -B, -L and -X are accepted and ignored. Exit status: 0 queued,
64 usage, 65 message too large, 66 no input, 73 cannot write the maildrop file,
75 try again later, 78 configuration."""


class UsageError(Exception):
    pass


def parse_args(argv: list[str]) -> dict:
    """Sendmail's option syntax: clustered flags, values attached or separate."""
    opts = {"t": False, "i": False, "f": None, "F": None, "mode": "m", "v": False, "C": None,
            "N": None, "R": None, "V": None, "q": False, "help": False, "rcpts": []}
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            opts["rcpts"] += argv[i:]
            break
        if arg == "--help":
            opts["help"] = True
            continue
        if not arg.startswith("-") or arg == "-":
            opts["rcpts"].append(arg)
            continue
        flag, rest = arg[1:2], arg[2:]

        def value():
            nonlocal i
            if rest:
                return rest
            if i >= len(argv):
                raise UsageError(f"option -{flag} needs a value")
            i += 1
            return argv[i - 1]

        if flag == "t":
            opts["t"] = True
            for ch in rest:
                if ch == "i":
                    opts["i"] = True
                elif ch != "t":
                    raise UsageError(f"unknown option -{ch}")
        elif flag == "i":
            opts["i"] = True
            if rest and rest.strip("it"):
                raise UsageError(f"unknown option {arg}")
            if "t" in rest:
                opts["t"] = True
        elif flag in ("f", "r"):
            opts["f"] = value()
        elif flag == "F":
            opts["F"] = value()
        elif flag == "o":
            if rest == "i":
                opts["i"] = True
            elif not rest:
                value()    # -o X: an option with a separate value; ignored
        elif flag == "b":
            if rest not in ("m", "s", "p", "d", "D"):
                raise UsageError(f"unsupported mode -b{rest}")
            opts["mode"] = rest if rest in ("m", "s", "p") else "m"
        elif flag == "v":
            opts["v"] = True
        elif flag == "q":
            opts["q"] = True
        elif flag == "C":
            opts["C"] = value()
        elif flag == "N":
            opts["N"] = value()
        elif flag == "R":
            opts["R"] = value()
        elif flag == "V":
            opts["V"] = value()
        elif flag in ("B", "L", "X", "O"):
            if not rest:
                value()
        elif flag in ("n", "U", "m", "e", "h"):
            pass   # legacy no-ops
        else:
            raise UsageError(f"unknown option -{flag}")
    return opts


def read_message(stream, dot_ends: bool, limit: int) -> bytes:
    """Standard input up to EOF (or a lone dot line without -i), bounded by limit."""
    if not dot_ends:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise ValueError("message too large")
        return data
    out = bytearray()
    while True:
        line = stream.readline(limit + 1)
        if not line or line.rstrip(b"\r\n") == b".":
            return bytes(out)
        out += line
        if len(out) > limit:
            raise ValueError("message too large")


def split_header(message: bytes) -> tuple[bytes, bytes]:
    m = re.search(rb"\r?\n\r?\n", message)
    if not m:
        return message, b""
    cut = m.start() + (2 if message[m.start():m.start() + 1] == b"\r" else 1)
    return message[:cut], message[cut:]     # the body part starts with the empty line


def header_recipients(message: bytes) -> tuple[list[str], bytes]:
    """(addresses in To, Cc and Bcc; the message without its Bcc fields)."""
    head, body = split_header(message)
    fields: list[tuple[str, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] = (fields[-1][0], fields[-1][1] + line)
        else:
            fields.append((line.split(b":", 1)[0].strip().lower().decode("ascii", "replace"), line))
    values = [raw.split(b":", 1)[1].decode("utf-8", "replace") for name, raw in fields
              if name in ("to", "cc", "bcc") and b":" in raw]
    addrs = [a for _, a in email.utils.getaddresses(values) if a]
    kept = b"".join(raw for name, raw in fields if name != "bcc")
    return addrs, kept + body


def split_addresses(args: list[str]) -> list[str]:
    out = []
    for a in args:
        out += [addr for _, addr in email.utils.getaddresses([a]) if addr]
    return out


def drop(maildrop: Path, envelope: Envelope, message: bytes) -> str:
    """Write the maildrop file (temp name, fsync, rename, fsync dir); returns its name."""
    token = secrets.token_hex(16)
    tmp = maildrop / f".tmp.{token}"
    name = f"{envelope.queue_id}.{token}"
    # 0644 inside a folder others can write but not list: the name is the secret,
    # and the MTA's pickup (which owns the folder) must read the file.
    write_file_synced(tmp, encode(envelope, message), mode=0o644)
    try:
        os.rename(tmp, maildrop / name)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise
    try:
        fsync_dir(maildrop)
    except PermissionError:
        # An ordinary user cannot open maildrop/ (no read permission) to fsync it:
        # flush the whole filesystem that holds the new name instead.
        _syncfs(maildrop / name)
    return name


def _syncfs(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    except OSError:
        os.sync()
    finally:
        os.close(fd)


def _load_config(opts):
    from common.config import ConfigError, config_dir, load

    try:
        return load(config_dir(opts["C"]), "mta")
    except ConfigError as e:
        print(f"postroom-sendmail: {e}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None


def request_flush(spool: Path) -> None:
    flag = spool / "maildrop" / FLUSH_FLAG
    fd = os.open(flag, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        opts = parse_args(argv)
    except UsageError as e:
        print(f"postroom-sendmail: {e}\n{USAGE}", file=sys.stderr)
        return EX_USAGE
    if opts["help"]:
        print(HELP)
        return EX_OK
    if opts["mode"] == "p" or os.path.basename(sys.argv[0]) == "mailq":
        from .queuetool import main as queue_main
        return queue_main((["-C", opts["C"]] if opts["C"] else []) + ["list"])
    cfg = _load_config(opts)
    spool = cfg.core.paths.spool
    if opts["q"]:
        try:
            request_flush(spool)
        except OSError as e:
            print(f"postroom-sendmail: cannot request a queue run: {e.strerror}", file=sys.stderr)
            return EX_CANTCREAT
        return EX_OK
    user = getpass.getuser()
    domain = cfg.daemon.queue.sendmail_domain or cfg.core.hostname
    limit = int(cfg.daemon.limits.max_message_size)
    if opts["mode"] == "s":
        return smtp_session(cfg, spool / "maildrop", user, domain, limit)
    try:
        message = read_message(sys.stdin.buffer, not opts["i"], limit)
    except ValueError:
        print(f"postroom-sendmail: message larger than {limit} bytes", file=sys.stderr)
        return EX_DATAERR
    except OSError as e:
        print(f"postroom-sendmail: cannot read the message: {e.strerror}", file=sys.stderr)
        return EX_NOINPUT
    rcpts = split_addresses(opts["rcpts"])
    if opts["t"]:
        found, message = header_recipients(message)
        rcpts += found
    rcpts = list(dict.fromkeys(a if "@" in a else f"{a}@{domain}" for a in rcpts))
    if not rcpts:
        print("postroom-sendmail: no recipients given (use -t or name them)", file=sys.stderr)
        return EX_USAGE
    sender = opts["f"] if opts["f"] is not None else f"{user}@{domain}"
    sender = sender.strip().strip("<>")
    if sender and "@" not in sender:
        sender = f"{sender}@{domain}"
    if opts["F"] is not None:
        head, _ = split_header(message)
        if not re.search(rb"(?im)^from:", head):
            name = opts["F"].replace('"', "").replace("\n", " ").replace("\r", " ")
            message = f'From: "{name}" <{sender or user + "@" + domain}>\n'.encode() + message
    notify = None
    if opts["N"]:
        words = tuple(w.strip().upper() for w in opts["N"].split(","))
        if any(w not in ("NEVER", "SUCCESS", "FAILURE", "DELAY") for w in words):
            print("postroom-sendmail: -N takes never or some of success,failure,delay", file=sys.stderr)
            return EX_USAGE
        notify = words
    ret = opts["R"].upper() if opts["R"] else None
    if ret not in (None, "FULL", "HDRS"):
        print("postroom-sendmail: -R takes full or hdrs", file=sys.stderr)
        return EX_USAGE
    env = Envelope(sender=sender, recipients=[Recipient(a, notify=notify) for a in rcpts], source="sendmail",
                   ret=ret, envid=opts["V"], queue_id=new_queue_id())
    try:
        drop(spool / "maildrop", env, message)
    except OSError as e:
        print(f"postroom-sendmail: cannot queue the message in {spool / 'maildrop'}: {e.strerror}",
              file=sys.stderr)
        return EX_TEMPFAIL if e.errno not in (13, 1) else EX_CANTCREAT
    if opts["v"]:
        print(f"postroom-sendmail: queued as {env.queue_id} for {', '.join(rcpts)}", file=sys.stderr)
    return EX_OK


def smtp_session(cfg, maildrop: Path, user: str, domain: str, limit: int) -> int:
    """-bs: SMTP on standard input/output (the shared server core), each message into maildrop/."""
    from common.smtp.server import Close, Message, ServerSettings, SmtpServerConn

    conn = SmtpServerConn(ServerSettings(hostname=cfg.core.hostname, max_message_size=limit, chunking=False,
                                         require_helo=False))
    out = sys.stdout.buffer
    conn.greet()
    out.write(conn.data_to_send())
    out.flush()
    stdin = sys.stdin.buffer
    while not conn.closed:
        data = stdin.read1(65536) if hasattr(stdin, "read1") else stdin.read(1)
        if not data:
            break
        events = conn.receive(data)
        while events:
            ev = events.pop(0)
            if isinstance(ev, Close) or conn.waiting is not ev:
                continue    # only events the core waits for need an answer
            if isinstance(ev, Message):
                params = ev.mail_params
                env = Envelope(sender=ev.sender, source="sendmail",
                               recipients=[Recipient(r.address, notify=r.params.get("NOTIFY"),
                                                     orcpt=r.params.get("ORCPT")) for r in ev.recipients],
                               ret=params.get("RET"), envid=params.get("ENVID"))
                try:
                    drop(maildrop, env, ev.data)
                except OSError:
                    from common.smtp.replies import Reply
                    events += conn.reject(Reply(451, "4.3.0", "Cannot queue the message, try again later"))
                    continue
                events += conn.accept(f"queued as {env.queue_id}")
            else:
                events += conn.accept()
        out.write(conn.data_to_send())
        out.flush()
    return EX_OK


if __name__ == "__main__":
    sys.exit(main())
