"""bench/relay_load.py -- how fast the queue manager relays to a local postroom MTA.

    python bench/relay_load.py [--messages 2000] [--size 2048] [--connections 20] [--runs 3] [--tls]
                               [--sink] [--receive-processes N]

Each run: a receiving postroom-mta (python -m mta.main) on 127.0.0.3 for the local
domain dest.test; N messages of SIZE bytes written into a fresh spool's hold/;
the queue manager alone (python -m mta.queue), limited to CONNECTIONS parallel
connections, is started; once it runs, every message is moved into incoming/ at
once (as `postroom-queue release ALL` does) and the time until the spool is empty
is measured, so the figure is the relay rate, not the program's start-up.

With --sink the destination is instead a minimal asyncio SMTP sink (no disk, one
process) that only counts: the queue manager's own ceiling, apart from the
receiving MTA's. Prints each run's messages per second and the CPU time per message
of the queue manager and of the receiving MTA (all its processes), from /proc (on a
shared machine the rate moves with the neighbours' load, the CPU time much less),
and the medians. Everything lives in a temporary folder that is removed afterwards;
nothing listens beyond loopback.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOG = "log:\n  level: warn\n"
sys.path.insert(0, str(ROOT))

from common.spool import Envelope, Recipient, Spool  # noqa: E402
from tests.support import Daemon, free_port, wait_for, wait_for_port  # noqa: E402
from tests.support.config import base_config  # noqa: E402


def receiver(tmp: Path, port: int, processes: int = 1) -> Daemon:
    etc = base_config(tmp, users={"bob@dest.test": "x"}, local_domains=("dest.test",),
                      core_extra=LOG)
    (etc / "aliases").write_text("")
    (etc / "mta.yaml").write_text(f"""\
listeners:
  mx:
    endpoint: tcp:{port}:interface=127.0.0.3
    role: mx
    tls: starttls
    checks: false
receive_processes: {processes}
limits:
  max_connections_per_client: 500
recipients:
  aliases_file: aliases
""")
    return Daemon("mta.main", etc)


def sender(tmp: Path, port: int, connections: int, tls: bool) -> Path:
    etc = base_config(tmp, core_extra=LOG)
    (etc / "mta.yaml").write_text(f"""\
queue:
  transports:
    dest.test: "smtp:[127.0.0.3]:{port}"
  tls: {'may' if tls else 'none'}
  max_connections: {connections}
  max_per_destination: {connections}
  bind_address: 127.0.0.2
""")
    return etc


def fill(spool_root: Path, n: int, size: int) -> None:
    spool = Spool(spool_root, create=True)
    for i in range(n):
        head = (f"From: <alice@example.test>\r\nTo: <bob@dest.test>\r\nSubject: load {i}\r\n"
                f"Message-ID: <load-{i}-{time.time_ns()}@example.test>\r\n\r\n").encode()
        body = (b"x" * 76 + b"\r\n") * max(0, (size - len(head)) // 78)
        message = head + body
        env = Envelope(sender="alice@example.test", recipients=[Recipient("bob@dest.test")], size=len(message))
        spool.write(env, [message], "hold", sync_dir=False)
    spool.sync("hold")


SINK = r"""
import asyncio, sys

async def session(reader, writer):
    writer.write(b"220 sink ESMTP\r\n")
    while True:
        line = await reader.readline()
        if not line:
            break
        verb = line[:4].upper()
        if verb == b"EHLO":
            writer.write(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-CHUNKING\r\n250 SIZE 100000000\r\n")
        elif verb == b"BDAT":
            n = int(line.split()[1])
            await reader.readexactly(n)
            writer.write(b"250 2.0.0 ok\r\n")
        elif verb == b"QUIT":
            writer.write(b"221 bye\r\n")
            break
        else:
            writer.write(b"250 ok\r\n")
        await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(session, "127.0.0.3", int(sys.argv[1]), backlog=256)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of pid and of its children that ended, from /proc."""
    import os

    try:
        fields = open(f"/proc/{pid}/stat").read().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / ticks


def tree_cpu_seconds(pid: int) -> float:
    """CPU time of pid and its live children (the receiving processes)."""
    total = cpu_seconds(pid)
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        children = []
    return total + sum(tree_cpu_seconds(int(c)) for c in children)


def one_run(n: int, size: int, connections: int, tls: bool, sink: bool = False,
            processes: int = 1) -> tuple[float, float, float]:
    """(messages per second, queue manager CPU us per message, receiver CPU us per message)."""
    import subprocess

    tmp = Path(tempfile.mkdtemp(prefix="postroom-bench-"))
    rx = None
    q = None
    sink_proc = None
    try:
        port = free_port("127.0.0.3")
        if sink:
            sink_proc = subprocess.Popen([sys.executable, "-c", SINK, str(port)])
            wait_for_port(port, host="127.0.0.3", proc=sink_proc)
        else:
            rx = receiver(tmp / "rx", port, processes)
            rx.start()
            wait_for_port(port, host="127.0.0.3", proc=rx.proc)
        etc = sender(tmp / "tx", port, connections, tls)
        spool = tmp / "tx" / "spool"
        fill(spool, n, size)
        q = Daemon("mta.queue", etc)
        q.start()
        # Running: it has made maildrop/ sticky (and logs nothing below warn).
        wait_for(lambda: (spool / "maildrop").stat().st_mode & 0o1000, timeout=30, what="the queue manager")
        time.sleep(0.2)
        held = Spool(spool)
        q_cpu = cpu_seconds(q.proc.pid)
        rx_cpu = tree_cpu_seconds(rx.proc.pid) if rx is not None else 0.0
        start = time.monotonic()
        for qid in held.list("hold"):
            held.move(qid, "hold", "incoming", sync=False)

        def empty() -> bool:
            return not any(Spool(spool).list(d) for d in ("incoming", "active", "deferred"))

        wait_for(empty, timeout=max(60.0, n / 20), interval=0.02, what="the queue to drain")
        elapsed = time.monotonic() - start
        q_cpu = cpu_seconds(q.proc.pid) - q_cpu
        rx_cpu = tree_cpu_seconds(rx.proc.pid) - rx_cpu if rx is not None else 0.0
        deferred = Spool(spool).list("deferred")
        if deferred:
            print(f"  warning: {len(deferred)} deferred", file=sys.stderr)
        return n / elapsed, q_cpu / n * 1e6, rx_cpu / n * 1e6
    finally:
        if q is not None:
            q.stop()
        if rx is not None:
            rx.stop()
        if sink_proc is not None:
            sink_proc.terminate()
            sink_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--connections", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tls", action="store_true", help="opportunistic STARTTLS (tls: may) instead of none")
    ap.add_argument("--sink", action="store_true", help="a counting asyncio sink instead of a postroom MTA")
    ap.add_argument("--receive-processes", type=int, default=1, help="the receiving MTA's receive_processes")
    args = ap.parse_args()
    rates, q_cpus, rx_cpus = [], [], []
    for i in range(args.runs):
        rate, q_cpu, rx_cpu = one_run(args.messages, args.size, args.connections, args.tls, args.sink,
                                      args.receive_processes)
        rates.append(rate)
        q_cpus.append(q_cpu)
        rx_cpus.append(rx_cpu)
        print(f"run {i + 1}: {rate:.0f} messages/s; CPU per message: queue manager {q_cpu:.0f} us"
              + (f", receiver {rx_cpu:.0f} us" if not args.sink else ""))
    print(f"median: {statistics.median(rates):.0f} messages/s, queue manager {statistics.median(q_cpus):.0f} us"
          + (f", receiver {statistics.median(rx_cpus):.0f} us" if not args.sink else "") + " CPU per message "
          f"({args.messages} x {args.size} bytes, {args.connections} connections, tls={'may' if args.tls else 'none'}, "
          f"destination: {'asyncio sink' if args.sink else f'postroom-mta, receive_processes={args.receive_processes}'})")


if __name__ == "__main__":
    main()
