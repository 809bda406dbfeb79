"""mta.queuetool -- postroom-queue (also run as mailq): look at and act on the mail queue.

    postroom-queue [-C DIR] list [--json]           what is queued (the default; mailq)
    postroom-queue [-C DIR] show [--message] ID     one message's envelope and recipients
    postroom-queue [-C DIR] flush                   retry every deferred message now
    postroom-queue [-C DIR] delete ID... | ALL      remove messages
    postroom-queue [-C DIR] hold ID... | ALL        keep messages from delivery
    postroom-queue [-C DIR] release ID... | ALL     let held messages go again

list shows, like Postfix's mailq, each message's ID (followed by * while it is
being delivered, ! while held), size, arrival time and sender, then each recipient
still to be delivered with the last reason it was not.

flush creates maildrop/.flush; the running queue manager sees it within a second,
forgets destination back-offs and retries every deferred message; the deferred
files are also marked due, so a manager started later retries them at once.
A message being delivered right now (in active/) cannot be deleted or held: the
command says so and exits 75; try again a moment later.

Exit status: 0 done, 64 usage, 67 no such message, 75 a message was busy,
77 no permission on the spool, 78 configuration.

SECURITY: run by the administrator (root or the MTA user); reads spool files
written by the MTA and prints envelope data only, never message bodies unless
--message is asked for.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from common.errors import EX_CONFIG, EX_NOPERM, EX_NOUSER, EX_OK, EX_TEMPFAIL, EX_USAGE
from common.spool import DEFERRED, PENDING, CorruptSpoolFile, Spool, parse

LISTED = ("active", "incoming", "deferred", "hold")
MARK = {"active": "*", "hold": "!", "incoming": "", "deferred": ""}


def _spool(args) -> Spool:
    from common.config import ConfigError, config_dir, load

    try:
        cfg = load(config_dir(args.config), "mta")
    except ConfigError as e:
        print(f"postroom-queue: {e}", file=sys.stderr)
        raise SystemExit(EX_CONFIG) from None
    spool = Spool(cfg.core.paths.spool)
    if spool.dir("deferred").exists() and not os.access(spool.dir("deferred"), os.R_OK | os.X_OK):
        print(f"postroom-queue: no permission to read {spool.root}; run as root or the MTA user",
              file=sys.stderr)
        raise SystemExit(EX_NOPERM)
    return spool


def entries(spool: Spool):
    """(queue, SpoolFile) for every listed message, oldest first; unreadable ones skipped."""
    out = []
    for q in LISTED:
        for sf in spool.walk(q):
            if isinstance(sf, tuple):
                continue
            out.append((q, sf))
    out.sort(key=lambda e: e[1].queue_id)
    return out


def _as_dict(queue: str, sf) -> dict:
    env = sf.envelope
    return {
        "queue_id": env.queue_id, "queue": queue, "size": env.size, "arrival": env.arrival,
        "sender": env.sender, "source": env.source,
        "recipients": [{"address": r.address, "state": r.state, "reason": r.reason, "status": r.status,
                        "attempts": r.attempts, "next_attempt": r.next_attempt}
                       for r in env.recipients],
    }


def cmd_list(spool: Spool, args) -> int:
    items = entries(spool)
    if args.json:
        print(json.dumps([_as_dict(q, sf) for q, sf in items], indent=1))
        return EX_OK
    if not items:
        print("Mail queue is empty")
        return EX_OK
    print(f"{'-Queue ID-':<24}{'--Size--':>8} {'----Arrival Time----':<20}  -Sender/Recipient-------")
    total = 0
    for q, sf in items:
        env = sf.envelope
        total += env.size
        arrival = time.strftime("%a %b %d %H:%M:%S", time.localtime(env.arrival))
        print(f"{env.queue_id + MARK[q]:<24}{env.size:>8} {arrival:<20}  {env.sender or 'MAILER-DAEMON'}")
        for r in env.recipients:
            if r.state not in (PENDING, DEFERRED):
                continue
            if r.reason:
                print(f"{'':<24}({_clip(r.reason)})")
            print(f"{'':<55}{r.address}")
        print()
    print(f"-- {(total + 1023) // 1024} Kbytes in {len(items)} Request{'s' if len(items) != 1 else ''}.")
    return EX_OK


def _clip(text: str, width: int = 76) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _find(spool: Spool, qid: str, queues=LISTED + ("corrupt",)):
    for q in queues:
        if spool.path(q, qid).exists():
            return q
    return None


def cmd_show(spool: Spool, args) -> int:
    q = _find(spool, args.id)
    if q is None:
        print(f"postroom-queue: {args.id}: no such message", file=sys.stderr)
        return EX_NOUSER
    try:
        sf = parse(spool.path(q, args.id))
    except (CorruptSpoolFile, OSError) as e:
        print(f"postroom-queue: {args.id}: {e}", file=sys.stderr)
        return EX_NOUSER
    d = _as_dict(q, sf)
    env = sf.envelope
    d.update({"trace_id": env.trace_id, "client_address": env.client_address, "helo": env.helo,
              "auth_user": env.auth_user, "body": env.body, "smtputf8": env.smtputf8, "ret": env.ret,
              "envid": env.envid})
    print(json.dumps(d, indent=1, ensure_ascii=False))
    if args.message:
        sys.stdout.flush()
        sys.stdout.buffer.write(sf.read_message())
    return EX_OK


def _targets(spool: Spool, ids: list[str], queues) -> tuple[list[tuple[str, str]], int]:
    if ids == ["ALL"]:
        return [(q, qid) for q in queues for qid in spool.list(q)], EX_OK
    out, status = [], EX_OK
    for qid in ids:
        q = _find(spool, qid)
        if q is None:
            print(f"postroom-queue: {qid}: no such message", file=sys.stderr)
            status = EX_NOUSER
        elif q == "active":
            print(f"postroom-queue: {qid}: being delivered right now; try again in a moment", file=sys.stderr)
            status = EX_TEMPFAIL
        elif q in queues:
            out.append((q, qid))
    return out, status


def cmd_delete(spool: Spool, args) -> int:
    todo, status = _targets(spool, args.ids, ("incoming", "deferred", "hold", "corrupt"))
    n = 0
    for q, qid in todo:
        try:
            spool.remove(q, qid)
            n += 1
        except FileNotFoundError:
            pass
    print(f"postroom-queue: {n} message{'s' if n != 1 else ''} deleted", file=sys.stderr)
    return status


def _move(spool: Spool, todo, dst: str, done: str, status: int) -> int:
    n = 0
    for q, qid in todo:
        try:
            spool.move(qid, q, dst)
            n += 1
        except FileNotFoundError:
            pass   # taken by the queue manager just now
    print(f"postroom-queue: {n} message{'s' if n != 1 else ''} {done}", file=sys.stderr)
    return status


def cmd_hold(spool: Spool, args) -> int:
    todo, status = _targets(spool, args.ids, ("incoming", "deferred"))
    return _move(spool, todo, "hold", "on hold", status)


def cmd_release(spool: Spool, args) -> int:
    # To incoming/: the queue manager takes it at once; delivery state is in the file.
    todo, status = _targets(spool, args.ids, ("hold",))
    return _move(spool, todo, "incoming", "released", status)


def request_flush(spool: Spool) -> None:
    now = time.time()
    for qid in spool.list("deferred"):
        try:
            os.utime(spool.path("deferred", qid), (now, now))
        except FileNotFoundError:
            pass
    from .sendmail import request_flush as create_flag
    create_flag(spool.root)


def cmd_flush(spool: Spool, args) -> int:
    try:
        request_flush(spool)
    except OSError as e:
        print(f"postroom-queue: cannot request a flush: {e}", file=sys.stderr)
        return EX_TEMPFAIL
    print("postroom-queue: flush requested", file=sys.stderr)
    return EX_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_mailq = os.path.basename(sys.argv[0]) == "mailq"
    ap = argparse.ArgumentParser(prog="mailq" if as_mailq else "postroom-queue",
                                 description="Look at and act on the postroom mail queue.")
    ap.add_argument("-C", "--config", help="configuration folder (default $POSTROOM_CONFIG or /etc/postroom)")
    sub = ap.add_subparsers(dest="command")
    p = sub.add_parser("list", help="list queued messages (the default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = sub.add_parser("show", help="one message's envelope and recipients")
    p.add_argument("--message", action="store_true", help="print the message too")
    p.add_argument("id")
    sub.add_parser("flush", help="retry every deferred message now")
    for name, text in (("delete", "remove messages"), ("hold", "keep messages from delivery"),
                       ("release", "let held messages go again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="+", metavar="ID", help="queue IDs, or ALL")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else EX_OK
    if args.command is None:
        args.command, args.json = "list", False
    spool = _spool(args)
    return {"list": cmd_list, "show": cmd_show, "flush": cmd_flush, "delete": cmd_delete,
            "hold": cmd_hold, "release": cmd_release}[args.command](spool, args)


if __name__ == "__main__":
    sys.exit(main())
