"""bench/pop3_load.py -- how fast postroom-pop3d serves mail.

    /work/venv/bin/python bench/pop3_load.py [--runs 3] [--messages 1000] [--clients 50]

Starts a real postroom-pop3d on loopback (a throwaway configuration under /tmp,
fsync on, as in production) and measures, over plain TCP:

1. one session retrieving --messages messages of 10 KB: USER, PASS, STAT, LIST,
   UIDL, then RETR one at a time (each waits for its answer, as fetchmail does),
   QUIT (which sets \\Seen on all of them). Target: under 1 s.
2. --clients sessions in parallel, one user each, logging in, listing and
   retrieving --per-client messages each. Target: at least 2,000 messages/s.

Each scenario runs --runs times; the median is reported. The clients are asyncio
coroutines in this process, so the client side costs CPU on the same machine too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common.storage import MailStore  # noqa: E402
from tests.support import Daemon, free_port  # noqa: E402
from tests.support.config import base_config  # noqa: E402

PASSWORD = "postroom"


def message(i: int, size: int = 10 * 1024) -> bytes:
    head = f"From: bench@example.test\nTo: user@example.test\nSubject: bench {i}\nMessage-ID: <{i}@bench>\n\n"
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return (head.encode() + body)[:size]


class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.commands = 0

    @classmethod
    async def connect(cls, port: int) -> "Client":
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        client = cls(reader, writer)
        await client.line()
        return client

    async def line(self) -> bytes:
        line = await self.reader.readline()
        if not line:
            raise ConnectionError("closed")
        return line

    async def cmd(self, text: str) -> bytes:
        self.commands += 1
        self.writer.write(text.encode() + b"\r\n")
        reply = await self.line()
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"{text.split()[0]}: {reply!r}")
        return reply

    async def multi(self, text: str) -> int:
        await self.cmd(text)
        size = 0
        while True:
            chunk = await self.reader.readuntil(b"\r\n.\r\n")
            size += len(chunk)
            return size

    async def multi_lines(self, text: str) -> int:
        await self.cmd(text)
        count = 0
        while (await self.line()) != b".\r\n":
            count += 1
        return count

    async def session(self, user: str) -> tuple[int, int]:
        await self.cmd(f"USER {user}")
        await self.cmd(f"PASS {PASSWORD}")
        count = int((await self.cmd("STAT")).split()[1])
        await self.multi_lines("LIST")
        await self.multi_lines("UIDL")
        octets = 0
        for n in range(1, count + 1):
            octets += await self.multi(f"RETR {n}")
        self.retrieved_at = time.perf_counter()
        await self.cmd("QUIT")
        self.writer.close()
        return count, octets


async def one_session(port: int, user: str) -> tuple[float, int, int, int]:
    started = time.perf_counter()
    client = await Client.connect(port)
    count, octets = await client.session(user)
    done = time.perf_counter()
    print(f"    (QUIT with \\Seen for all: {done - client.retrieved_at:.3f} s)")
    return done - started, count, octets, client.commands


async def parallel(port: int, users: list[str]) -> tuple[float, int, int]:
    started = time.perf_counter()
    clients = [await Client.connect(port) for _ in users]
    results = await asyncio.gather(*(c.session(u) for c, u in zip(clients, users)))
    elapsed = time.perf_counter() - started
    return elapsed, sum(r[0] for r in results), sum(c.commands for c in clients)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc), 0 elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--messages", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--per-client", type=int, default=100)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="postroom-pop3-bench-"))
    users = {"big@example.test": PASSWORD, **{f"u{i}@example.test": PASSWORD for i in range(args.clients)}}
    # 50 logins at once from one address: allow them (the default, 8, is for the wild).
    etc = base_config(tmp, users=users)
    conf = etc / "postroom.yaml"
    conf.write_text(conf.read_text().replace("auth:\n", f"auth:\n  max_logins_in_progress: {args.clients + 1}\n", 1))
    port = free_port()
    (etc / "pop3d.yaml").write_text(f"listeners:\n  pop3:\n    endpoint: tcp:{port}:interface=127.0.0.1\n"
                                    "    tls: none\n")
    print(f"filling maildirs under {tmp} ...", flush=True)
    big = MailStore(tmp / "mail" / "example.test" / "big" / "Maildir")
    for i in range(args.messages):
        big.deliver(message(i))
    for i in range(args.clients):
        store = MailStore(tmp / "mail" / "example.test" / f"u{i}" / "Maildir")
        for j in range(args.per_client):
            store.deliver(message(j))
    daemon = Daemon("pop3d.main", etc).start((port,))
    try:
        pid = daemon.proc.pid
        singles, rates, capacities = [], [], []
        for run in range(args.runs):
            cpu = cpu_seconds(pid)
            elapsed, count, octets, commands = asyncio.run(one_session(port, "big@example.test"))
            singles.append(elapsed)
            print(f"  one session: {count} messages, {octets / 1e6:.1f} MB, {commands} commands in {elapsed:.3f} s "
                  f"(server CPU {cpu_seconds(pid) - cpu:.2f} s)")
        for run in range(args.runs):
            cpu = cpu_seconds(pid)
            elapsed, count, commands = asyncio.run(parallel(port, [f"u{i}@example.test" for i in range(args.clients)]))
            used = cpu_seconds(pid) - cpu
            rates.append(count / elapsed)
            if used:
                capacities.append(count / used)
            print(f"  {args.clients} clients: {count} messages, {commands} commands in {elapsed:.3f} s = "
                  f"{count / elapsed:.0f} msg/s (server CPU {used:.2f} s)")
    finally:
        daemon.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    single, rate = statistics.median(singles), statistics.median(rates)
    print(f"median: one session retrieving {args.messages} x 10 KB: {single:.3f} s (target < 1 s) "
          f"{'OK' if single < 1 else 'SLOW'}")
    print(f"median: {args.clients} parallel clients: {rate:.0f} msg/s (target >= 2000) "
          f"{'OK' if rate >= 2000 else 'SLOW'}")
    if capacities:
        print(f"median: {statistics.median(capacities):.0f} messages per second of server CPU "
              "(logins with their password hashing included; independent of other load on the machine)")


if __name__ == "__main__":
    main()
