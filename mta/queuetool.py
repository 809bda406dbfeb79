"""mta.queuetool -- postroom-queue (also run as mailq): look at and act on the mail queue.

    postroom-queue [-C DIR] list [--json] [ID...]           what is queued (the default; mailq)
    postroom-queue [-C DIR] show [--message] ID... | ALL    envelopes and recipients (JSON)
    postroom-queue [-C DIR] flush [ID... | ALL]             retry deferred messages now (default ALL)
    postroom-queue [-C DIR] delete ID... | ALL              remove messages
    postroom-queue [-C DIR] hold ID... | ALL                keep messages from delivery
    postroom-queue [-C DIR] release ID... | ALL             let held messages go again

list shows, like Postfix's mailq, each message's ID (followed by * while it is
being delivered, ! while held), size, arrival time and sender, then each recipient
still to be delivered with the last reason it was not. show prints one JSON object
for one ID, a JSON array for several or ALL.

flush (or flush ALL) creates maildrop/.flush; the running queue manager sees it at
once, forgets destination back-offs and retries every deferred message; the
deferred files are also marked due, so a manager started later retries them too.
flush ID moves those messages from deferred/ to incoming/, where the queue manager
takes them at once (a destination that is backed off stays so, as with Postfix's
postqueue -i); a held message must be released instead.

Messages in active/ belong to the running queue manager: delete and hold leave them
alone, name each on standard error and exit 75 (try again in a moment), whether
the message was named or matched by ALL. When no queue manager runs (the tool can
tell: it then gets the spool lock of mta/queue/lock.py, and keeps it while it acts
so none starts meanwhile), messages in active/ are deleted and held like any other,
except one whose hand-off is still at the MDA: the queue manager must apply that
answer first (75 too). This is Postfix's postsuper, which acts on the active queue
safely only while Postfix is stopped.

Exit status: 0 done, 64 usage, 67 no such message (flush: not deferred), 75 a
message was busy, 77 no permission on the spool, 78 configuration.

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

from .queue.lock import manager_stopped

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


def _find(spool: Spool, qid: str, queues=LISTED + ("corrupt",)):
    for q in queues:
        if spool.path(q, qid).exists():
            return q
    return None


def _named(spool: Spool, ids: list[str], queues=LISTED) -> tuple[list[tuple[str, str]], int]:
    """(queue, ID) of each message named, or of every one in queues for ALL; 67 when
    a named one is not there."""
    if ids == ["ALL"]:
        return [(q, qid) for q in queues for qid in spool.list(q)], EX_OK
    out, status = [], EX_OK
    for qid in ids:
        q = _find(spool, qid)
        if q is None:
            print(f"postroom-queue: {qid}: no such message", file=sys.stderr)
            status = EX_NOUSER
        else:
            out.append((q, qid))
    return out, status


def cmd_list(spool: Spool, args) -> int:
    items = entries(spool)
    status = EX_OK
    if args.ids:
        named, status = _named(spool, args.ids)
        wanted = {qid for _, qid in named}
        items = [(q, sf) for q, sf in items if sf.queue_id in wanted]
    if args.json:
        print(json.dumps([_as_dict(q, sf) for q, sf in items], indent=1))
        return status
    if not items:
        print("Mail queue is empty")
        return status
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
    return status


def _clip(text: str, width: int = 76) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def cmd_show(spool: Spool, args) -> int:
    named, status = _named(spool, args.ids, LISTED + ("corrupt",))
    shown = []
    for q, qid in named:
        try:
            sf = parse(spool.path(q, qid))
        except (CorruptSpoolFile, OSError) as e:
            print(f"postroom-queue: {qid}: {e}", file=sys.stderr)
            status = EX_NOUSER
            continue
        d = _as_dict(q, sf)
        env = sf.envelope
        d.update({"trace_id": env.trace_id, "client_address": env.client_address, "helo": env.helo,
                  "auth_user": env.auth_user, "body": env.body, "smtputf8": env.smtputf8, "ret": env.ret,
                  "envid": env.envid})
        shown.append((d, sf))
    if len(args.ids) == 1 and args.ids != ["ALL"]:
        if shown:
            print(json.dumps(shown[0][0], indent=1, ensure_ascii=False))
    else:
        print(json.dumps([d for d, _ in shown], indent=1, ensure_ascii=False))
    if args.message:
        for _, sf in shown:
            sys.stdout.flush()
            sys.stdout.buffer.write(sf.read_message())
    return status


def _at_mda(spool: Spool, qid: str) -> bool:
    """A hand-off of qid is at the MDA, or its answer waits for the queue manager."""
    return any(name.startswith(qid + ".") for q in ("mda", "mda-done") for name in spool.list(q))


def _act(spool: Spool, ids: list[str], sources: tuple[str, ...], action, done: str) -> int:
    """delete and hold: action(queue, ID) on each message named (or ALL in sources),
    and on those in active/ only while no queue manager runs (see the module docstring)."""
    lock = manager_stopped(spool.root)
    try:
        todo, status = _named(spool, ids, sources + ("active",))
        n, busy = 0, 0
        for q, qid in todo:
            if q not in sources + ("active",):
                print(f"postroom-queue: {qid}: in {q}/, left as it is", file=sys.stderr)
                continue
            if q == "active" and (lock is None or _at_mda(spool, qid)):
                why = ("being delivered right now" if lock is None
                       else "its hand-off to the MDA is unanswered; start the queue manager first")
                print(f"postroom-queue: {qid}: {why}; try again in a moment", file=sys.stderr)
                busy += 1
                continue
            try:
                action(q, qid)
                n += 1
            except FileNotFoundError:
                if spool.path("active", qid).exists():    # taken by the queue manager just now
                    print(f"postroom-queue: {qid}: being delivered right now; try again in a moment",
                          file=sys.stderr)
                    busy += 1
        print(f"postroom-queue: {n} message{'s' if n != 1 else ''} {done}", file=sys.stderr)
        if busy:
            print(f"postroom-queue: {busy} message{'s' if busy != 1 else ''} busy, left as they are",
                  file=sys.stderr)
            status = EX_TEMPFAIL
        return status
    finally:
        if lock is not None:
            os.close(lock)


def cmd_delete(spool: Spool, args) -> int:
    return _act(spool, args.ids, ("incoming", "deferred", "hold", "corrupt"),
                lambda q, qid: spool.remove(q, qid), "deleted")


def cmd_hold(spool: Spool, args) -> int:
    return _act(spool, args.ids, ("incoming", "deferred"), lambda q, qid: spool.move(qid, q, "hold"), "on hold")


def cmd_release(spool: Spool, args) -> int:
    # To incoming/: the queue manager takes it at once; delivery state is in the file.
    todo, status = _named(spool, args.ids, ("hold",))
    n = 0
    for q, qid in todo:
        if q != "hold":
            print(f"postroom-queue: {qid}: not on hold", file=sys.stderr)
            continue
        try:
            spool.move(qid, "hold", "incoming")
            n += 1
        except FileNotFoundError:
            pass    # released or deleted by another run just now
    print(f"postroom-queue: {n} message{'s' if n != 1 else ''} released", file=sys.stderr)
    return status


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
    if not args.ids or args.ids == ["ALL"]:
        try:
            request_flush(spool)
        except OSError as e:
            print(f"postroom-queue: cannot request a flush: {e}", file=sys.stderr)
            return EX_TEMPFAIL
        print("postroom-queue: flush requested", file=sys.stderr)
        return EX_OK
    named, status = _named(spool, args.ids, ())
    n = 0
    for q, qid in named:
        if q == "deferred":
            try:
                spool.move(qid, "deferred", "incoming")
                n += 1
            except FileNotFoundError:
                pass    # the queue manager took it just now: it is being attempted
        elif q in ("incoming", "active"):
            print(f"postroom-queue: {qid}: already being delivered", file=sys.stderr)
        else:
            print(f"postroom-queue: {qid}: {'on hold; release it instead' if q == 'hold' else 'corrupt'}",
                  file=sys.stderr)
            status = EX_NOUSER
    print(f"postroom-queue: {n} message{'s' if n != 1 else ''} to be retried now", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    as_mailq = os.path.basename(sys.argv[0]) == "mailq"
    ap = argparse.ArgumentParser(prog="mailq" if as_mailq else "postroom-queue",
                                 description="Look at and act on the postroom mail queue.")
    ap.add_argument("-C", "--config", help="configuration folder (default $POSTROOM_CONFIG or /etc/postroom)")
    sub = ap.add_subparsers(dest="command")
    p = sub.add_parser("list", help="list queued messages (the default)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("ids", nargs="*", metavar="ID", help="only these messages")
    p = sub.add_parser("show", help="messages' envelopes and recipients (JSON)")
    p.add_argument("--message", action="store_true", help="print the messages too")
    p.add_argument("ids", nargs="+", metavar="ID", help="queue IDs, or ALL")
    p = sub.add_parser("flush", help="retry deferred messages now (all of them by default)")
    p.add_argument("ids", nargs="*", metavar="ID", help="queue IDs, or ALL (the default)")
    for name, text in (("delete", "remove messages"), ("hold", "keep messages from delivery"),
                       ("release", "let held messages go again")):
        p = sub.add_parser(name, help=text)
        p.add_argument("ids", nargs="+", metavar="ID", help="queue IDs, or ALL")
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:
        return EX_USAGE if e.code else EX_OK
    if args.command is None:
        args.command, args.json, args.ids = "list", False, []
    spool = _spool(args)
    return {"list": cmd_list, "show": cmd_show, "flush": cmd_flush, "delete": cmd_delete,
            "hold": cmd_hold, "release": cmd_release}[args.command](spool, args)


if __name__ == "__main__":
    sys.exit(main())
