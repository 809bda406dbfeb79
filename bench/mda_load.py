"""bench/mda_load.py -- how fast postroom-mda delivers into maildirs.

    /work/venv/bin/python bench/mda_load.py [--runs 3] [--messages 3000] [--users 20]
        [--sessions 10] [--only consumer|lmtp]

Starts a real postroom-mda (a throwaway configuration under /tmp, fsync on, as in
production). Every user has a one-rule Sieve script (fileinto a folder when the
subject matches, which it does for half of the messages). Messages are 2 KB.

1. spool consumer: --messages spool files and hand-offs (one recipient each, users
   in turn) are prepared aside, then renamed into mda/ at once; the time runs from
   the first rename until every answer is in mda-done/ and mda/ is empty.
   Target: at least 1,500 messages/s.
2. LMTP: --sessions parallel sessions over the unix socket, each sending its share
   of --messages messages pipelined (MAIL, RCPT, DATA; one recipient each); the
   time runs from the first connect to the last reply. Target: at least 1,000/s.
3. end to end (--only e2e, or with the others): a real postroom-mta and postroom-mda;
   --smtp-sessions SMTP sessions send --messages messages to local users, pipelining
   MAIL, RCPT and DATA as a sending MTA does (--smtplib: with smtplib, one command
   at a time)
   (the MTA with --receive-processes receiving processes, an mx listener with
   checks off as for the SMTP target, or with --checks its default listeners);
   the time runs from the first connect until the last file is in a maildir.
   Target: at least 1,200/s with 20 sessions.

Each scenario runs --runs times; the median is reported. Before each run after the
first the disk is synced and the bench waits --pause seconds (default 30), so that a
run does not pay for the removal of the previous run's files (ext4 without a
journal, as here, passes over inodes freed in the last seconds when it allocates
new ones, and writes back and discards in the background). Clients run in this
process (threads), so the client side costs CPU on the same machine too.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.spool import Envelope, Handoff, Recipient, Spool  # noqa: E402
from tests.support import Daemon, wait_for  # noqa: E402
from tests.support.config import base_config  # noqa: E402

#: the consumer's threads per process and processes (BENCH_WORKERS, BENCH_PROCESSES override)
WORKERS = int(os.environ.get("BENCH_WORKERS", "1"))
PROCESSES = int(os.environ.get("BENCH_PROCESSES", "0"))

SCRIPT = 'require "fileinto";\nif header :contains "subject" "odd" { fileinto "Odd"; }\n'


def message(i: int, size: int = 2048) -> bytes:
    head = (f"From: bench@remote.test\r\nTo: user@example.test\r\nSubject: bench {'odd' if i % 2 else 'even'} {i}\r\n"
            f"Message-ID: <{i}@bench.remote.test>\r\nDate: Sun, 22 Nov 2026 01:00:00 +0000\r\n\r\n").encode()
    line = b"x" * 70 + b"\r\n"
    body = line * ((size - len(head)) // len(line))
    return head + body + b"y" * (size - len(head) - len(body) - 2) + b"\r\n"


def setup(tmp: Path, users: int, mda_yaml: str) -> tuple[Path, list[str]]:
    names = {f"user{i}@example.test": "postroom" for i in range(users)}
    etc = base_config(tmp, users=names)
    (etc / "mda.yaml").write_text(mda_yaml)
    for name in names:
        home = tmp / "mail" / "example.test" / name.split("@")[0]
        home.mkdir(parents=True, exist_ok=True)
        (home / ".sieve").write_text(SCRIPT)
    Spool(tmp / "spool", create=True)
    return etc, list(names)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user + system, user) CPU seconds of a process and its children (the consumer
    processes), from /proc (Linux; zeros elsewhere), for BENCH_VERBOSE."""
    times = cpu_by_process(pid).values()
    return sum(u + s for u, s in times), sum(u for u, _ in times)


def cpu_by_process(pid: int) -> dict[int, tuple[float, float]]:
    """(user, system) CPU seconds of a process and of each of its children, by pid."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(entry) == pid or int(fields[1]) == pid:
            out[int(entry)] = (int(fields[11]) / tick, int(fields[12]) / tick)
    return out


def count_files(tmp: Path) -> int:
    n = 0
    for dirpath, _dirs, files in os.walk(tmp / "mail"):
        if os.path.basename(dirpath) in ("new", "cur"):
            n += len(files)
    return n


def run_consumer(n: int, users: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="mda-bench-"))
    try:
        etc, names = setup(tmp, users, f"consumer:\n  enabled: true\n  workers: {WORKERS}\n  processes: {PROCESSES}\n")
        spool = Spool(tmp / "spool")
        staging = tmp / "spool" / "staging"
        staging.mkdir()
        for i in range(n):
            data = message(i)
            env = Envelope(sender="bench@remote.test", recipients=[Recipient(names[i % len(names)])])
            env.size = len(data)
            path = spool.write(env, [data], queue="active", sync_dir=False)
            hid = f"{env.queue_id}.b"
            (staging / hid).write_bytes(Handoff(hid, env.queue_id, str(path), [0]).to_json())
        os.sync()
        daemon = Daemon("mda.main", etc).start()
        try:
            time.sleep(3)   # let it start (no port to wait for)
            cpu_before = cpu_seconds(daemon.proc.pid)
            start = time.perf_counter()
            for name in os.listdir(staging):
                os.rename(staging / name, spool.dir("mda") / name)
            wait_for(lambda: not spool.list("mda") and len(spool.list("mda-done")) == n, timeout=300,
                     interval=0.01, what="every answer")
            elapsed = time.perf_counter() - start
            if os.environ.get("BENCH_VERBOSE"):
                total, user = (a - b for a, b in zip(cpu_seconds(daemon.proc.pid), cpu_before))
                print(f"  consumer: {elapsed:.2f}s; daemon CPU {total * 1000 / n:.2f} ms per message "
                      f"({user * 1000 / n:.2f} user, {(total - user) * 1000 / n:.2f} system)")
        finally:
            daemon.stop()
        assert count_files(tmp) == n, (count_files(tmp), n)
        return n / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def lmtp_client(sock_path: str, msgs: list[tuple[str, bytes]], errors: list) -> None:
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock_path)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"LHLO bench\r\n")
        while f.readline()[3:4] != b" ":
            pass
        for rcpt, data in msgs:
            s.sendall(b"MAIL FROM:<bench@remote.test>\r\nRCPT TO:<%s>\r\nDATA\r\n" % rcpt.encode() + data + b".\r\n")
            replies = [f.readline()[:3] for _ in range(4)]
            if replies != [b"250", b"250", b"354", b"250"]:
                errors.append(replies)
        s.sendall(b"QUIT\r\n")
        f.readline()
        s.close()
    except Exception as e:  # noqa: BLE001 - reported by the caller
        errors.append(repr(e))


def smtp_client(port: int, msgs: list[tuple[str, bytes]], errors: list) -> None:
    """One SMTP session sending msgs as a sending MTA does: MAIL, RCPT and DATA in one
    write when the server offers PIPELINING (RFC 2920; Postfix's smtp client does
    the same), the message after the 354, one round trip for each."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=60)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"EHLO bench.remote.test\r\n")
        pipelining = False
        while True:
            line = f.readline()
            pipelining = pipelining or line[4:].strip().upper() == b"PIPELINING"
            if line[3:4] != b"-":
                break
        for rcpt, data in msgs:
            data = (b"." + data if data.startswith(b".") else data).replace(b"\r\n.", b"\r\n..")
            commands = [b"MAIL FROM:<bench@remote.test>\r\n", b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"DATA\r\n"]
            replies = []
            if pipelining:
                s.sendall(b"".join(commands))
                replies = [f.readline()[:3] for _ in commands]
            else:
                for command in commands:
                    s.sendall(command)
                    replies.append(f.readline()[:3])
            if replies != [b"250", b"250", b"354"]:
                errors.append(replies)
                return
            s.sendall(data + b".\r\n")
            if f.readline()[:3] != b"250":
                errors.append("message refused")
                return
        s.sendall(b"QUIT\r\n")
        f.readline()
        s.close()
    except Exception as e:  # noqa: BLE001 - reported by the caller
        errors.append(repr(e))


def run_lmtp(n: int, users: int, sessions: int) -> float:
    tmp = Path(tempfile.mkdtemp(prefix="mda-bench-"))
    try:
        sock = tmp / "run" / "lmtp.sock"
        etc, names = setup(tmp, users, f"consumer:\n  enabled: false\nlisteners:\n  lmtp:\n"
                                       f"    endpoint: unix:{sock}:mode=660\n    tls: none\n")
        daemon = Daemon("mda.main", etc).start()
        try:
            wait_for(sock.exists, timeout=20, what="the socket")
            per = [[] for _ in range(sessions)]
            for i in range(n):
                per[i % sessions].append((names[i % len(names)], message(i)))
            errors: list = []
            threads = [threading.Thread(target=lmtp_client, args=(str(sock), p, errors)) for p in per]
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - start
        finally:
            daemon.stop()
        assert not errors, errors[:3]
        assert count_files(tmp) == n
        return n / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_e2e(n: int, users: int, sessions: int, receive_processes: int = 2, checks: bool = False,
            use_smtplib: bool = False) -> float:
    import smtplib

    from tests.mta.smtpd_fixture import start_mta
    tmp = Path(tempfile.mkdtemp(prefix="mda-bench-"))
    try:
        listeners = None
        if not checks:
            from tests.support import free_port
            listeners = (f"  mx:\n    endpoint: tcp:{free_port()}:interface=127.0.0.1\n    role: mx\n"
                         f"    tls: none\n    checks: false\n")
        mta = start_mta(tmp, extra_yaml=f"receive_processes: {receive_processes}\n", listeners=listeners)
        etc = tmp / "etc"
        names = [f"user{i}@example.test" for i in range(users)]
        from tests.support.config import _hash
        with open(etc / "users", "a") as f:
            for name in names:
                f.write(f"{name}:{_hash('postroom')}::::{tmp / 'mail' / 'example.test' / name.split('@')[0]}::\n")
        for name in names:
            home = tmp / "mail" / "example.test" / name.split("@")[0]
            home.mkdir(parents=True, exist_ok=True)
            (home / ".sieve").write_text(SCRIPT)
        (etc / "mda.yaml").write_text(f"consumer:\n  enabled: true\n  workers: {WORKERS}\n  processes: {PROCESSES}\n")
        mda = Daemon("mda.main", etc).start()
        try:
            time.sleep(3)
            per = [[] for _ in range(sessions)]
            for i in range(n):
                per[i % sessions].append((names[i % len(names)], message(i)))
            errors: list = []

            def client(msgs):
                if not use_smtplib:
                    smtp_client(mta.ports["mx"], msgs, errors)
                    return
                try:
                    with smtplib.SMTP("127.0.0.1", mta.ports["mx"], timeout=60) as c:
                        c.ehlo("bench.remote.test")
                        for rcpt, data in msgs:
                            c.sendmail("bench@remote.test", [rcpt], data)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

            before = count_files(tmp)
            threads = [threading.Thread(target=client, args=(p,)) for p in per]
            cpu_before = (cpu_by_process(mta.daemon.proc.pid), cpu_by_process(mda.proc.pid), os.times())
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if os.environ.get("BENCH_VERBOSE"):
                print(f"  SMTP done after {time.perf_counter() - start:.1f}s, {count_files(tmp) - before} delivered")
            wait_for(lambda: count_files(tmp) - before >= n, timeout=600, interval=0.05, what="every file")
            elapsed = time.perf_counter() - start
            if os.environ.get("BENCH_VERBOSE"):
                print_e2e_cpu(n, elapsed, mta.daemon.proc.pid, mda.proc.pid, cpu_before)
        finally:
            mda.stop()
            mta.daemon.stop()
        assert not errors, errors[:3]
        return n / elapsed
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def print_e2e_cpu(n: int, elapsed: float, mta_pid: int, mda_pid: int, before) -> None:
    """BENCH_VERBOSE: CPU milliseconds per message of each process of the e2e run."""
    mta_before, mda_before, times_before = before
    mta_now, mda_now, times_now = cpu_by_process(mta_pid), cpu_by_process(mda_pid), os.times()

    def per_message(now, was, pids):
        user = sum(now[p][0] - was.get(p, (0.0, 0.0))[0] for p in pids) * 1000 / n
        system = sum(now[p][1] - was.get(p, (0.0, 0.0))[1] for p in pids) * 1000 / n
        return f"{user + system:.2f} ({system:.2f} sys)"

    receivers = [p for p in mta_now if p != mta_pid]
    consumers = list(mda_now)
    client = (times_now.user + times_now.system - times_before.user - times_before.system) * 1000 / n
    print(f"  e2e: {elapsed:.2f}s ({n / elapsed:.0f}/s), load {os.getloadavg()[0]:.2f}; CPU ms per message: "
          f"queue manager {per_message(mta_now, mta_before, [mta_pid])}, "
          f"receiving {per_message(mta_now, mta_before, receivers)} ({len(receivers)} processes), "
          f"MDA {per_message(mda_now, mda_before, consumers)}, client {client:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=3000)
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=10)
    ap.add_argument("--smtp-sessions", type=int, default=20)
    ap.add_argument("--receive-processes", type=int, default=2, help="postroom-mta receive_processes (e2e)")
    ap.add_argument("--checks", action="store_true",
                    help="e2e: the MTA's default mx listener (STARTTLS offered, SPF/DKIM/DMARC checks on) "
                         "instead of one with tls: none and checks: false, the condition of the SMTP target")
    ap.add_argument("--only", choices=("consumer", "lmtp", "e2e"))
    ap.add_argument("--smtplib", action="store_true",
                    help="e2e: send with smtplib (a command at a time) instead of pipelining as a sending MTA does")
    ap.add_argument("--pause", type=float, default=30.0,
                    help="seconds to wait (after a sync) before each run but the first")
    args = ap.parse_args()
    first = [True]

    def pause():
        if not first[0]:
            os.sync()
            time.sleep(args.pause)
        first[0] = False

    if args.only in (None, "consumer"):
        rates = [pause() or run_consumer(args.messages, args.users) for _ in range(args.runs)]
        print(f"spool consumer: {args.messages} x 2 KB, {args.users} users with a one-rule script: "
              f"median {statistics.median(rates):.0f} msg/s (runs: {', '.join(f'{r:.0f}' for r in rates)}; target 1500)")
    if args.only in (None, "lmtp"):
        rates = [pause() or run_lmtp(args.messages, args.users, args.sessions) for _ in range(args.runs)]
        print(f"LMTP: {args.sessions} sessions, {args.messages} x 2 KB: "
              f"median {statistics.median(rates):.0f} msg/s (runs: {', '.join(f'{r:.0f}' for r in rates)}; target 1000)")
    if args.only in (None, "e2e"):
        rates = [pause() or run_e2e(args.messages, args.users, args.smtp_sessions, args.receive_processes,
                                    args.checks, args.smtplib) for _ in range(args.runs)]
        client = "smtplib" if args.smtplib else "pipelining"
        print(f"end to end: {args.smtp_sessions} SMTP sessions ({client}) into postroom-mta, "
              f"{args.messages} x 2 KB to maildirs: "
              f"median {statistics.median(rates):.0f} msg/s (runs: {', '.join(f'{r:.0f}' for r in rates)}; target 1200)")


if __name__ == "__main__":
    main()
