"""bench/imap_load.py -- how fast an IMAP server (postroom-imapd, Dovecot, ...) answers.

Against a running server (any host and port; users user0..userN with one password):

    /work/venv/bin/python bench/imap_load.py --port 143 --user-format 'user{n}@example.test' \\
        --password secret --only select,envelope,search,mixed,idle,latency --pid 1234

Or with a throwaway postroom-imapd on loopback (configuration under /tmp, fsync on,
mailbox filled by --populate first):

    /work/venv/bin/python bench/imap_load.py --sandbox --messages 20000 --runs 3

Fill one mailbox quickly (maildir files written straight into cur/ through
`common.storage` names, then a single sync assigns the UIDs):

    /work/venv/bin/python bench/imap_load.py --populate 100000 --maildir /path/to/Maildir

What is measured (each --runs times; the median is printed):

select     SELECT of the big mailbox (user 0), then UID FETCH 1:* (FLAGS).
cold       (--sandbox only) the server restarted, then SELECT of the big mailbox:
           with its index on disk, and with the index deleted (rebuilt).
envelope   FETCH 1:1000 (ENVELOPE BODYSTRUCTURE).
search     SEARCH over the first 10,000 messages (a header and a flag key), and
           SORT (REVERSE DATE) over them when the server advertises SORT.
mixed      --clients clients (users 1..clients) for --seconds each, in two modes:
           "relogin" (LOGIN ... LOGOUT every round, like imaptest's default) and
           "stay" (one login, then rounds without LOGIN/LOGOUT). A round follows
           the default command mix of Dovecot's imaptest stress mode: LOGIN 100%,
           LIST 50%, STATUS 50%, SELECT 100%, FETCH 100% (UID FLAGS of all),
           FETCH2 100% (BODY.PEEK[] of one message), STORE 50% (a keyword on a
           few), DELETE 100% (\\Deleted on one), EXPUNGE 100%, APPEND 100%,
           LOGOUT 100%. Commands per second over all clients (and, with --pid,
           per CPU second of the server process).
idle       --idle connections logged in, INBOX selected, in IDLE; the server's
           VmRSS (from /proc/PID/status, --pid, with its worker processes) before
           and after.
latency    --watchers sessions in IDLE on one mailbox; a message is delivered
           (through common.storage into --deliver-maildir when given, else by
           APPEND on another connection); time until every session saw EXISTS.

The clients are asyncio coroutines in this one process: on a small machine the
client side costs CPU too, so the figures are a lower bound of the server's speed.
Everything is bounded in time (--timeout per command).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_LITERAL = re.compile(rb"\{(\d+)\+?\}\r\n\Z")
TIMEOUT = 60.0

# ------------------------------------------------------------------ populate

NAMES = ["Alice Arden", "Bob Brown", "Carol Chen", "Dave Dunn", "Eve Evans", "Frank Ford",
         "Grace Gómez", "Heidi Hahn", "Ivan Ivanov", "Judy Jones", "Mallory Marx", "Oscar Olsen"]
TOPICS = ["Quarterly report", "Lunch on Friday", "Server upgrade", "Invoice 4711", "Holiday plans",
          "Release 2.0 checklist", "Meeting notes", "Re: budget", "Broken build", "Welcome aboard",
          "Conference travel", "Password reset policy", "Café opening hours", "Board slides"]
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which "
         "but have an they you were her she there been one all we their has would when if so no "
         "mailbox server client message folder index deliver quota thread sort search").split()


def _addr(rng: random.Random) -> str:
    name = rng.choice(NAMES)
    local = name.split()[0].lower()
    if any(ord(c) > 127 for c in name):
        import email.header
        name = email.header.Header(name, "utf-8").encode()
    return f"{name} <{local}@example.test>"


def make_message(i: int, rng: random.Random, when: float) -> bytes:
    """One message of realistic variety: replies with References, Cc, 8-bit and
    encoded headers, plain and multipart bodies with an attachment, 1-60 KB."""
    thread = rng.randrange(max(1, i // 4 + 1))
    subject = TOPICS[thread % len(TOPICS)] + ("" if thread < len(TOPICS) else f" #{thread}")
    reply = rng.random() < 0.4 and i > 0
    if reply:
        subject = rng.choice(["Re: ", "RE: ", "Fwd: ", "Re: Re: "]) + subject
    date = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime(when - rng.randrange(0, 3600)))
    head = [f"From: {_addr(rng)}", f"To: {_addr(rng)}", f"Subject: {subject}", f"Date: {date}",
            f"Message-ID: <{i}.{thread}@bench.example.test>"]
    if rng.random() < 0.3:
        head.append(f"Cc: {_addr(rng)}, {_addr(rng)}")
    if reply:
        parent = rng.randrange(i)
        head.append(f"In-Reply-To: <{parent}.{thread}@bench.example.test>")
        head.append(f"References: <{parent}.{thread}@bench.example.test>")
    size = int(rng.paretovariate(1.5) * 1500) % 60000 + 300
    text = " ".join(rng.choice(WORDS) for _ in range(size // 6))
    body_lines = "\n".join(text[k:k + 72] for k in range(0, len(text), 72))
    head.append("MIME-Version: 1.0")
    if rng.random() < 0.25:
        b = f"b{i}x"
        head.append(f'Content-Type: multipart/mixed; boundary="{b}"')
        attach = os.urandom(min(size, 8000)).hex()
        attach = "\n".join(attach[k:k + 76] for k in range(0, len(attach), 76))
        body = (f"--{b}\nContent-Type: text/plain; charset=utf-8\n\n{body_lines}\n"
                f"--{b}\nContent-Type: application/octet-stream; name=\"data{i}.bin\"\n"
                f"Content-Disposition: attachment; filename=\"data{i}.bin\"\nContent-Transfer-Encoding: base64\n\n"
                f"{attach}\n--{b}--\n")
    else:
        head.append("Content-Type: text/plain; charset=utf-8")
        body = body_lines + "\n"
    return ("\n".join(head) + "\n\n" + body).encode("utf-8")


def populate(maildir: Path, count: int, folder: str = "INBOX", seed: int = 1) -> float:
    """Write `count` messages into the mailbox's cur/ and sync once; returns seconds."""
    from common.fsutil import fsync_dir
    from common.storage import MailStore
    t0 = time.monotonic()
    store = MailStore(maildir)
    if folder != "INBOX" and not store.mailbox_exists(folder):
        store.create_mailbox(folder)
    cur = store.mailbox_path(folder) / "cur"
    rng = random.Random(seed)
    now = time.time()
    host = os.uname().nodename.replace("/", "_").replace(":", "_")
    for i in range(count):
        when = now - (count - i) * 60
        data = make_message(i, rng, when)
        crlf = len(data) + data.count(b"\n")
        flags = "S" if rng.random() < 0.7 else ""
        if rng.random() < 0.05:
            flags = "F" + flags
        name = f"{int(when)}.M{i}P{os.getpid()}.{host},S={len(data)},W={crlf}:2,{flags}"
        path = cur / name
        with open(path, "wb") as f:
            f.write(data)
        os.utime(path, (when, when))
    os.sync()
    fsync_dir(cur)
    box = store.open_mailbox(folder)  # the one sync: UIDs for all of them
    box.close()
    return time.monotonic() - t0


# ------------------------------------------------------------------ a small IMAP client

class ImapError(Exception):
    pass


class Client:
    """Just enough IMAP: tagged commands, literals in answers, counting of what came.
    Reads in large chunks and splits lines itself: with asyncio's readline per line
    the client, not the server, is what a 100,000-line answer measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.n = 0
        self.commands = 0
        self.capabilities: set[str] = set()
        self._buf = b""
        self._lines: list[bytes] = []

    @classmethod
    async def connect(cls, host: str, port: int) -> "Client":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 22), TIMEOUT)
        c = cls(reader, writer)
        greeting = await c.line()
        c._caps(greeting)
        return c

    def _caps(self, line: bytes) -> None:
        m = re.search(rb"CAPABILITY ([^\]\r\n]*)", line)
        if m:
            self.capabilities = set(m.group(1).decode().upper().split())

    async def _fill(self) -> None:
        data = await asyncio.wait_for(self.reader.read(1 << 20), TIMEOUT)
        if not data:
            raise ImapError("connection closed")
        self._buf += data
        parts = self._buf.split(b"\r\n")
        self._buf = parts.pop()
        self._lines.extend(p + b"\r\n" for p in parts)
        self._lines.reverse()  # consumed from the end

    async def line(self) -> bytes:
        while not self._lines:
            await self._fill()
        return self._lines.pop()

    async def _skip(self, n: int) -> None:
        """Drop n literal octets (which may hold CRLFs) from what was read."""
        data = b"".join(reversed(self._lines)) + self._buf
        self._lines = []
        while len(data) < n:
            more = await asyncio.wait_for(self.reader.read(1 << 20), TIMEOUT)
            if not more:
                raise ImapError("connection closed")
            data += more
        rest = data[n:]
        parts = rest.split(b"\r\n")
        self._buf = parts.pop()
        self._lines = [p + b"\r\n" for p in parts]
        self._lines.reverse()

    async def response_line(self) -> bytes:
        """One response with its literals (the literal bytes are skipped)."""
        line = await self.line()
        while line.endswith(b"}\r\n"):
            m = _LITERAL.search(line)
            if not m:
                return line
            await self._skip(int(m.group(1)))
            line = await self.line()
        return line

    async def cmd(self, text: str, literal: bytes | None = None, ok: bool = True) -> list[bytes]:
        """Send a command, return its untagged responses (first line of each)."""
        self.n += 1
        self.commands += 1
        tag = f"b{self.n}"
        if literal is None:
            self.writer.write(f"{tag} {text}\r\n".encode())
        else:
            self.writer.write(f"{tag} {text} {{{len(literal)}}}\r\n".encode())
            while True:
                line = await self.line()
                if line.startswith(b"+"):
                    break
                if line.startswith(tag.encode() + b" "):
                    raise ImapError(line.decode(errors="replace").strip())
            self.writer.write(literal + b"\r\n")
        untagged = []
        prefix = tag.encode() + b" "
        while True:
            line = await self.response_line()
            if line.startswith(prefix):
                if ok and not line[len(prefix):].startswith(b"OK"):
                    raise ImapError(f"{text.split()[0]}: {line.decode(errors='replace').strip()}")
                self._caps(line)
                return untagged
            untagged.append(line)

    async def login(self, user: str, password: str) -> None:
        await self.cmd(f'LOGIN "{user}" "{password}"')
        if not any(c.startswith("IMAP4") for c in self.capabilities) or "SORT" not in self.capabilities:
            for line in await self.cmd("CAPABILITY"):
                if line.startswith(b"* CAPABILITY"):
                    self.capabilities = set(line[13:].decode().upper().split())

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (asyncio.TimeoutError, OSError):
            pass


# ------------------------------------------------------------------ scenarios

async def t_select(a) -> dict:
    c = await Client.connect(a.host, a.port)
    await c.login(a.user_format.format(n=0), a.password)
    t0 = time.perf_counter()
    got = await c.cmd(f"SELECT {a.mailbox}")
    t1 = time.perf_counter()
    lines = await c.cmd("UID FETCH 1:* (FLAGS)")
    t2 = time.perf_counter()
    await c.cmd("LOGOUT")
    await c.close()
    exists = next((int(x.split()[1]) for x in got if x.endswith(b"EXISTS\r\n")), 0)
    return {"select_s": t1 - t0, "uid_fetch_flags_s": t2 - t1, "messages": exists, "fetched": len(lines)}


async def t_envelope(a) -> dict:
    c = await Client.connect(a.host, a.port)
    await c.login(a.user_format.format(n=0), a.password)
    got = await c.cmd(f"EXAMINE {a.mailbox}")
    exists = next((int(x.split()[1]) for x in got if x.endswith(b"EXISTS\r\n")), 0)
    t0 = time.perf_counter()
    lines = await c.cmd(f"FETCH 1:{min(1000, exists)} (ENVELOPE BODYSTRUCTURE)")
    t1 = time.perf_counter()
    await c.cmd("LOGOUT")
    await c.close()
    return {"envelope_bodystructure_1000_s": t1 - t0, "fetched": len(lines)}


async def t_search(a) -> dict:
    c = await Client.connect(a.host, a.port)
    await c.login(a.user_format.format(n=0), a.password)
    await c.cmd(f"EXAMINE {a.mailbox}")
    out = {}
    t0 = time.perf_counter()
    lines = await c.cmd('SEARCH 1:10000 FROM "alice" UNSEEN')
    out["search_10000_s"] = time.perf_counter() - t0
    out["search_hits"] = len(lines[0].split()) - 2 if lines else 0
    t0 = time.perf_counter()
    await c.cmd('SEARCH 1:10000 SUBJECT "report"')
    out["search_subject_10000_s"] = time.perf_counter() - t0
    if "SORT" in c.capabilities:
        t0 = time.perf_counter()
        await c.cmd("SORT (REVERSE DATE) UTF-8 1:10000")
        out["sort_date_10000_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        await c.cmd("SORT (SUBJECT) UTF-8 1:10000")
        out["sort_subject_10000_s"] = time.perf_counter() - t0
    await c.cmd("LOGOUT")
    await c.close()
    return out


async def _mixed_round(c: Client, rng: random.Random, n: int, mailbox: str, user: str, a) -> None:
    """One pass of the imaptest-like mix in the selected state and around it."""
    if rng.random() < 0.5:
        await c.cmd('LIST "" *')
    if rng.random() < 0.5:
        await c.cmd(f"STATUS {mailbox} (MESSAGES UNSEEN UIDNEXT)")
    got = await c.cmd(f"SELECT {mailbox}")
    exists = next((int(x.split()[1]) for x in got if x.endswith(b"EXISTS\r\n")), 0)
    if exists:
        await c.cmd("UID FETCH 1:* (UID FLAGS)")
        await c.cmd(f"FETCH {rng.randint(1, exists)} (UID BODY.PEEK[])")
        if rng.random() < 0.5:
            lo = rng.randint(1, exists)
            await c.cmd(f"STORE {lo}:{min(exists, lo + 3)} +FLAGS ($Bench{rng.randint(1, 5)})")
        await c.cmd(f"STORE {rng.randint(1, exists)} +FLAGS (\\Deleted)")
        await c.cmd("EXPUNGE")
    await c.cmd(f"APPEND {mailbox} (\\Seen)", make_message(n, rng, time.time()))


async def _mixed_client(a, idx: int, stay: bool, deadline: float) -> int:
    rng = random.Random(idx)
    user = a.user_format.format(n=idx + 1)
    commands = 0
    n = 0
    c = None
    try:
        while time.monotonic() < deadline:
            if c is None:
                c = await Client.connect(a.host, a.port)
                await c.cmd(f'LOGIN "{user}" "{a.password}"')
            await _mixed_round(c, rng, n, "INBOX", user, a)
            n += 1
            if not stay:
                await c.cmd("LOGOUT")
                commands += c.commands
                await c.close()
                c = None
        if c is not None:
            await c.cmd("LOGOUT")
            commands += c.commands
            await c.close()
    except (ImapError, OSError, asyncio.TimeoutError) as e:
        print(f"  client {idx}: {e}", file=sys.stderr)
        if c is not None:
            commands += c.commands
    return commands


async def _prefill(a) -> None:
    """Give each mixed-load user a few messages (by APPEND), once."""
    async def one(i):
        c = await Client.connect(a.host, a.port)
        await c.cmd(f'LOGIN "{a.user_format.format(n=i + 1)}" "{a.password}"')
        got = await c.cmd("STATUS INBOX (MESSAGES)")
        have = int(re.search(rb"MESSAGES (\d+)", got[0]).group(1)) if got else 0
        rng = random.Random(1000 + i)
        for k in range(have, 20):
            await c.cmd("APPEND INBOX (\\Seen)", make_message(k, rng, time.time()))
        await c.cmd("LOGOUT")
        await c.close()
    await _gather_bounded([one(i) for i in range(a.clients)])


async def t_mixed(a) -> dict:
    await _prefill(a)
    out = {}
    for mode, stay in (("relogin", False), ("stay", True)):
        deadline = time.monotonic() + a.seconds
        t0, cpu0 = time.monotonic(), cpu_seconds(a.pid)
        counts = await asyncio.gather(*(_mixed_client(a, i, stay, deadline) for i in range(a.clients)))
        out[f"mixed_{mode}_cmds_per_s"] = sum(counts) / (time.monotonic() - t0)
        cpu1 = cpu_seconds(a.pid)
        if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
            # what one fully used core of the server would answer (the clients share the machine)
            out[f"mixed_{mode}_cmds_per_server_cpu_s"] = sum(counts) / (cpu1 - cpu0)
    return out


def _tree(pid: int) -> list[int]:
    """pid and its children (a server's worker processes), from /proc."""
    pids = [pid]
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                pids.append(int(entry))
    return pids


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a server process and its workers, from /proc."""
    if not pid:
        return None
    total = 0.0
    try:
        for p in _tree(pid):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None
    return total


def vmrss_kib(pid: int | None) -> int | None:
    """Resident memory of a server process and its workers, in KiB."""
    if not pid:
        return None
    total = 0
    try:
        for p in _tree(pid):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    except OSError:
        return None
    return total


async def _idler(a, n: int) -> Client:
    c = await Client.connect(a.host, a.port)
    await c.cmd(f'LOGIN "{a.user_format.format(n=n)}" "{a.password}"')
    await c.cmd("SELECT INBOX")
    c.writer.write(b"idle IDLE\r\n")
    while not (await c.line()).startswith(b"+"):
        pass
    return c


async def _gather_bounded(coros, limit: int = 8):
    """At most `limit` at once: servers limit logins in progress per address (8 here)."""
    sem = asyncio.Semaphore(limit)

    async def run(coro):
        async with sem:
            return await coro
    return await asyncio.gather(*(run(x) for x in coros))


async def t_idle(a) -> dict:
    before = vmrss_kib(a.pid)
    t0 = time.monotonic()
    clients = await _gather_bounded([_idler(a, 1 + i % max(1, a.clients)) for i in range(a.idle)])
    setup = time.monotonic() - t0
    await asyncio.sleep(1.0)
    after = vmrss_kib(a.pid)
    for c in clients:
        c.writer.write(b"DONE\r\n")
        c.writer.close()
    await asyncio.sleep(0.5)
    out = {"idle_connections": len(clients), "idle_setup_s": setup}
    if before is not None and after is not None:
        out.update(server_rss_before_mib=before / 1024, server_rss_idle_mib=after / 1024,
                   kib_per_idle_connection=(after - before) / max(1, len(clients)))
    return out


async def t_latency(a) -> dict:
    user_n = max(1, a.clients) + 1
    user = a.user_format.format(n=user_n)
    watchers = await _gather_bounded([_idler(a, user_n) for _ in range(a.watchers)])
    await asyncio.sleep(0.3)

    async def until_exists(c: Client) -> float:
        while True:
            line = await c.line()
            if line.endswith(b"EXISTS\r\n"):
                return time.perf_counter()

    waits = [asyncio.ensure_future(until_exists(c)) for c in watchers]
    t0 = time.perf_counter()
    if a.deliver_maildir:
        from common.storage import MailStore
        MailStore(Path(a.deliver_maildir)).deliver(make_message(1, random.Random(), time.time()))
    else:
        c = await Client.connect(a.host, a.port)
        await c.cmd(f'LOGIN "{user}" "{a.password}"')
        await c.cmd("APPEND INBOX", make_message(1, random.Random(), time.time()))
        await c.cmd("LOGOUT")
        await c.close()
    seen = await asyncio.wait_for(asyncio.gather(*waits), 10)
    for c in watchers:
        c.writer.write(b"DONE\r\n")
        c.writer.close()
    return {"watchers": len(watchers), "delivery_to_exists_max_s": max(seen) - t0,
            "delivery_to_exists_median_s": statistics.median(seen) - t0}


async def t_cold(a) -> dict:
    """SELECT of the big mailbox by a freshly started server: with its index on disk,
    and with the index (and cache) deleted first, so it is rebuilt from the maildir."""
    if a.restart is None:
        raise SystemExit("the cold scenario needs --sandbox (it restarts the server)")
    out = {}
    for label, delete in (("select_after_restart_s", False), ("select_after_index_deleted_s", True)):
        if delete:
            for name in ("postroom-index", "postroom-index.log", "postroom-cache"):
                try:
                    (Path(a.big_maildir) / name).unlink()
                except FileNotFoundError:
                    pass
        a.restart()
        c = await Client.connect(a.host, a.port)
        await c.login(a.user_format.format(n=0), a.password)
        t0 = time.perf_counter()
        got = await c.cmd(f"SELECT {a.mailbox}")
        out[label] = time.perf_counter() - t0
        out["messages"] = next((int(x.split()[1]) for x in got if x.endswith(b"EXISTS\r\n")), 0)
        await c.cmd("LOGOUT")
        await c.close()
    return out


SCENARIOS = {"select": t_select, "cold": t_cold, "envelope": t_envelope, "search": t_search, "mixed": t_mixed,
             "idle": t_idle, "latency": t_latency}


# ------------------------------------------------------------------ running

def report(name: str, runs: list[dict]) -> None:
    keys = [k for k in runs[0] if all(k in r for r in runs)]
    for k in keys:
        values = [r[k] for r in runs]
        med = statistics.median(values)
        shown = ", ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in values)
        print(f"{name:9s} {k:32s} median {med:12.3f}   runs: {shown}" if isinstance(med, float)
              else f"{name:9s} {k:32s} median {med:12}   runs: {shown}")


def start_sandbox(a):
    """A throwaway postroom-imapd with users user0.. and user0's INBOX filled."""
    from tests.support import Daemon, free_port
    from tests.support.config import base_config
    tmp = Path(tempfile.mkdtemp(prefix="imap-bench-"))
    users = {a.user_format.format(n=i): a.password for i in range(max(a.clients, 1) + 3)}
    etc = base_config(tmp, users=users)
    core = etc / "postroom.yaml"  # many clients of one address log in at once here
    core.write_text(core.read_text().replace("auth:\n", "auth:\n  max_logins_in_progress: 1000\n", 1))
    port = free_port()
    (etc / "imapd.yaml").write_text(f"""\
listeners:
  imap:
    endpoint: tcp:{port}:interface=127.0.0.1
    tls: none
workers: {a.workers}
limits:
  max_connections: {a.idle + a.watchers + a.clients + 100}
  max_connections_per_client: {a.idle + a.watchers + a.clients + 100}
""")
    local, _, domain = a.user_format.format(n=0).partition("@")
    took = populate(tmp / "mail" / domain / local / "Maildir", a.messages)
    print(f"populate  {a.messages} messages in {took:.1f} s")
    daemon = Daemon("imapd.main", etc).start(wait_ports=(port,))
    a.port, a.host, a.pid = port, "127.0.0.1", daemon.proc.pid
    a.big_maildir = str(tmp / "mail" / domain / local / "Maildir")

    def restart():
        daemon.stop()
        daemon.start(wait_ports=(port,))
        a.pid = daemon.proc.pid
    a.restart = restart
    if not a.deliver_maildir:
        local, _, domain = a.user_format.format(n=max(1, a.clients) + 1).partition("@")
        a.deliver_maildir = str(tmp / "mail" / domain / local / "Maildir")
    return daemon, tmp


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=143)
    ap.add_argument("--user-format", default="user{n}@example.test", help="user names; {n} is 0, 1, ...")
    ap.add_argument("--password", default="postroom")
    ap.add_argument("--mailbox", default="INBOX", help="the big mailbox of user 0")
    ap.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each mixed-load mode")
    ap.add_argument("--idle", type=int, default=1000, help="connections held in IDLE")
    ap.add_argument("--watchers", type=int, default=50, help="IDLE sessions waiting for one delivery")
    ap.add_argument("--pid", type=int, help="the server's process, for VmRSS")
    ap.add_argument("--deliver-maildir", help="deliver the latency test's message into this maildir")
    ap.add_argument("--sandbox", action="store_true", help="start a throwaway postroom-imapd")
    ap.add_argument("--messages", type=int, default=20000, help="messages in the sandbox's big mailbox")
    ap.add_argument("--workers", type=int, default=1, help="the sandbox's imapd.yaml workers (0: one per CPU)")
    ap.add_argument("--populate", type=int, metavar="N", help="only fill --maildir with N messages")
    ap.add_argument("--maildir", help="with --populate: the Maildir++ root")
    ap.add_argument("--folder", default="INBOX", help="with --populate: the mailbox to fill")
    a = ap.parse_args()
    a.restart = None
    if a.populate is not None:
        if not a.maildir:
            ap.error("--populate needs --maildir")
        print(f"populated {a.populate} messages in {populate(Path(a.maildir), a.populate, a.folder):.1f} s")
        return 0
    daemon = tmp = None
    if a.sandbox:
        daemon, tmp = start_sandbox(a)
    try:
        for name in a.only.split(","):
            fn = SCENARIOS[name.strip()]
            runs = [asyncio.run(fn(a)) for _ in range(a.runs)]
            report(name, runs)
    finally:
        if daemon is not None:
            daemon.stop()
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
