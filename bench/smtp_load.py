#!/usr/bin/env python3
"""bench/smtp_load.py -- drive any SMTP server with concurrent sessions; print the
accepted messages per second and the latency percentiles.

    python bench/smtp_load.py --port 2525 --sessions 20 --messages 5000 --size 2048 --mode new
    python bench/smtp_load.py --port 2525 --sessions 20 --messages 5000 --mode persistent

Each session sends messages one after another: with --mode new a fresh connection
per message (greeting, EHLO, MAIL, RCPT, DATA, QUIT), with --mode persistent one
connection for all its messages (RSET-free: MAIL after the previous 250). MAIL,
RCPT and DATA are pipelined when the server offers PIPELINING, as Postfix's own
smtp client does. Latency is per message, from connect (new) or MAIL (persistent)
to the 250 after the data. Only 250 counts as accepted; anything else is counted
as refused and reported.

--procs spreads the sessions over several client processes (the client is Python
too and can be the bottleneck on a small machine). Standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import statistics
import sys
import time


class Stats:
    def __init__(self):
        self.latencies: list[float] = []
        self.accepted = 0
        self.refused = 0
        self.errors: dict[str, int] = {}


async def read_reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            return int(line[:3]), b"".join(lines)


def make_message(size: int, n: int, rcpt: str, sender: str) -> bytes:
    head = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: load test {n}\r\n"
            f"Message-ID: <bench.{os.getpid()}.{n}@smtp-load>\r\nDate: Thu, 1 Jan 2026 00:00:00 +0000\r\n\r\n").encode()
    line = b"x" * 76 + b"\r\n"
    body = bytearray()
    while len(head) + len(body) < size:
        body += line
    return head + bytes(body[: max(0, size - len(head))]).rstrip(b"\r\nx") + b"\r\n"


async def transaction(reader, writer, pipelining: bool, sender: str, rcpt: str, message: bytes) -> bool:
    cmds = [b"MAIL FROM:<%s>\r\n" % sender.encode(), b"RCPT TO:<%s>\r\n" % rcpt.encode(), b"DATA\r\n"]
    if pipelining:
        writer.write(b"".join(cmds))
        codes = [(await read_reply(reader))[0] for _ in cmds]
    else:
        codes = []
        for c in cmds:
            writer.write(c)
            codes.append((await read_reply(reader))[0])
            if codes[-1] >= 400:
                break
    if codes[-1] != 354 or len(codes) != 3:
        return False
    writer.write(message + b".\r\n")
    code, _ = await read_reply(reader)
    return code == 250


async def hello(reader, writer) -> bool:
    code, _ = await read_reply(reader)
    if code != 220:
        raise ConnectionError(f"greeting {code}")
    writer.write(b"EHLO smtp-load.example\r\n")
    code, text = await read_reply(reader)
    if code != 250:
        raise ConnectionError(f"EHLO {code}")
    return b"PIPELINING" in text.upper()


async def session(args, stats: Stats, count: int, sid: int) -> None:
    message = make_message(args.size, sid, args.rcpt, args.sender)
    if args.mode == "persistent":
        reader, writer = await asyncio.open_connection(args.host, args.port)
        pipelining = await hello(reader, writer) and not args.no_pipelining
        for _ in range(count):
            t0 = time.perf_counter()
            try:
                ok = await transaction(reader, writer, pipelining, args.sender, args.rcpt, message)
            except (ConnectionError, OSError) as e:
                stats.errors[str(e)] = stats.errors.get(str(e), 0) + 1
                return
            record(stats, ok, t0)
        writer.write(b"QUIT\r\n")
        try:
            await read_reply(reader)
        except ConnectionError:
            pass
        writer.close()
        return
    for _ in range(count):
        t0 = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(args.host, args.port)
            pipelining = await hello(reader, writer) and not args.no_pipelining
            ok = await transaction(reader, writer, pipelining, args.sender, args.rcpt, message)
            record(stats, ok, t0)
            writer.write(b"QUIT\r\n")
            await read_reply(reader)
            writer.close()
        except (ConnectionError, OSError) as e:
            stats.errors[str(e)] = stats.errors.get(str(e), 0) + 1


def record(stats: Stats, ok: bool, t0: float) -> None:
    if ok:
        stats.accepted += 1
        stats.latencies.append(time.perf_counter() - t0)
    else:
        stats.refused += 1


async def run_sessions(args, sessions: int, messages: int) -> Stats:
    stats = Stats()
    per = [messages // sessions + (1 if i < messages % sessions else 0) for i in range(sessions)]
    await asyncio.gather(*(session(args, stats, n, i) for i, n in enumerate(per) if n))
    return stats


def worker(args, sessions, messages, start_at, queue):
    while time.time() < start_at:
        time.sleep(0.001)
    t0 = time.perf_counter()
    stats = asyncio.run(run_sessions(args, sessions, messages))
    queue.put((stats.accepted, stats.refused, stats.latencies, stats.errors, time.perf_counter() - t0))


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(p / 100 * (len(values) - 1)))))
    return values[k]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=25)
    p.add_argument("--sessions", type=int, default=20, help="concurrent sessions (default 20)")
    p.add_argument("--messages", type=int, default=2000, help="messages in total (default 2000)")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes (default 2048)")
    p.add_argument("--mode", choices=("new", "persistent"), default="new",
                   help="new connection per message, or one per session")
    p.add_argument("--procs", type=int, default=1, help="client processes sharing the sessions")
    p.add_argument("--sender", default="load@bench.example")
    p.add_argument("--rcpt", default="demo@example.test")
    p.add_argument("--no-pipelining", action="store_true", help="wait for each reply even if PIPELINING is offered")
    args = p.parse_args(argv)

    procs = max(1, min(args.procs, args.sessions))
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    start_at = time.time() + 0.3
    children = []
    for i in range(procs):
        s = args.sessions // procs + (1 if i < args.sessions % procs else 0)
        m = args.messages // procs + (1 if i < args.messages % procs else 0)
        proc = ctx.Process(target=worker, args=(args, s, m, start_at, queue))
        proc.start()
        children.append(proc)
    results = [queue.get(timeout=600) for _ in children]
    for proc in children:
        proc.join(10)
    accepted = sum(r[0] for r in results)
    refused = sum(r[1] for r in results)
    latencies = [x for r in results for x in r[2]]
    errors: dict[str, int] = {}
    for r in results:
        for k, v in r[3].items():
            errors[k] = errors.get(k, 0) + v
    elapsed = max(r[4] for r in results)
    rate = accepted / elapsed if elapsed else 0.0
    print(f"mode={args.mode} sessions={args.sessions} size={args.size} procs={procs} "
          f"accepted={accepted} refused={refused} errors={sum(errors.values())} elapsed={elapsed:.2f}s")
    print(f"messages/s={rate:.0f} latency_ms p50={percentile(latencies, 50) * 1000:.1f} "
          f"p90={percentile(latencies, 90) * 1000:.1f} p99={percentile(latencies, 99) * 1000:.1f}"
          + (f" mean={statistics.mean(latencies) * 1000:.1f}" if latencies else ""))
    for k, v in sorted(errors.items(), key=lambda kv: -kv[1])[:5]:
        print(f"  error x{v}: {k}", file=sys.stderr)
    return 0 if accepted and not errors and not refused else 1


if __name__ == "__main__":
    sys.exit(main())
