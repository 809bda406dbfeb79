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
mixed      --clients clients (users 1..clients) for --seconds each, in two modes
           (--modes): "relogin" (LOGIN ... LOGOUT every round, imaptest's default)
           and "stay" (one login, SELECT once, then rounds; imaptest logout=0).
           A round is Dovecot's imaptest default stress run as its state machine
           goes (states and percentages from its client-state.c): LIST 50%,
           STATUS 50%, SELECT, FETCH of random fields (UID FLAGS ENVELOPE
           INTERNALDATE BODY BODYSTRUCTURE RFC822.SIZE, header fields) of up to 100
           random messages, FETCH2 (one of BODY.PEEK[HEADER], RFC822.HEADER,
           BODY.PEEK[], BODY.PEEK[1], BODY.PEEK[TEXT] of one message; again 30%),
           STORE 50% (+, - or replace, .SILENT half of the time), DELETE (\\Deleted
           on 0-4 messages), EXPUNGE, APPEND (while the mailbox holds fewer than
           30; a second message by MULTIAPPEND 5%), LOGOUT; COPY stays off as in
           imaptest without a copybox. Commands are pipelined as imaptest does (up
           to 10; one that names messages by number waits until no command that
           may expunge is pending), with LITERAL+ when the server offers it. The
           clients are one lean non-blocking loop (--client-procs processes), so
           that the client side costs little CPU (reported per command).
           Commands per second over all clients (and, with --pid, per CPU second of
           the server with its workers, and the server's cores in use).
idle       --idle connections logged in, INBOX selected, in IDLE; the server's
           VmRSS (from /proc/PID/status, --pid, with its worker processes) before
           and after.
latency    --watchers sessions in IDLE on one mailbox; a message is delivered
           (through common.storage into --deliver-maildir when given, else by
           APPEND on another connection); time until every session saw EXISTS.

The clients run on this machine: on a small machine the client side costs CPU too,
so the figures are a lower bound of the server's speed.
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


class _MixConn:
    """One client of the mixed load: a non-blocking socket and a script (a generator
    that yields batches of pipelined commands and is sent their answers).
    Deliberately lean -- parsing only what the script needs, messages prepared
    before the clock starts -- so that on a small machine the server, not the load
    generator, is what is measured (imaptest, which the targets come from, is C)."""

    __slots__ = ("sock", "script", "buf", "n", "answers", "untagged", "literal_plus", "pending", "waiting",
                 "closing", "last")

    def __init__(self, sock):
        self.sock = sock
        self.script = None
        self.buf = b""
        self.n = 0
        self.answers: list[bytes] = []      # tagged lines of the batch, in order
        self.untagged: list[bytes] = []
        self.literal_plus = False
        self.pending: bytes | None = None   # a literal waiting for the server's "+"
        self.waiting = 0                    # tagged answers still to come
        self.closing = False
        self.last = b""

    def send(self, batch: list[tuple[bytes, bytes | None]]) -> None:
        out = []
        for command, literal in batch:
            self.n += 1
            self.last = command
            if literal is None:
                out.append(b"m%d %s\r\n" % (self.n, command))
            elif self.literal_plus:  # literal: [(what goes before it, message), ...] (MULTIAPPEND)
                out.append(b"m%d %s" % (self.n, command))
                out.extend(b"%s {%d+}\r\n%s" % (before, len(data), data) for before, data in literal)
                out.append(b"\r\n")
            else:  # one message, alone in its batch (the script sees to it)
                before, data = literal[0]
                self.pending = data + b"\r\n"
                out.append(b"m%d %s%s {%d}\r\n" % (self.n, command, before, len(data)))
        self.waiting = len(batch)
        self.sock.sendall(b"".join(out))

    def feed(self, data: bytes) -> bool:
        """Take what was read; True once every answer of the batch is in."""
        buf = self.buf + data if self.buf else data
        pos = 0
        while True:
            end = buf.find(b"\r\n", pos)
            if end < 0:
                break
            line = buf[pos:end]
            if line.endswith(b"}"):
                m = _LITERAL.search(line + b"\r\n")
                if m:
                    size = int(m.group(1))
                    if len(buf) < end + 2 + size:
                        break  # the rest of the literal is still to come
                    self.untagged.append(line)
                    pos = end + 2 + size  # the response goes on after the literal
                    nxt = buf.find(b"\r\n", pos)
                    if nxt < 0:
                        break
                    pos = nxt + 2
                    continue
            pos = end + 2
            first = line[:1]
            if first == b"m":
                self.answers.append(line)
                self.waiting -= 1
                if not self.waiting:
                    self.buf = buf[pos:]
                    return True
            elif first == b"+" and self.pending is not None:
                self.sock.sendall(self.pending)
                self.pending = None
            else:
                self.untagged.append(line)
        self.buf = buf[pos:]
        return False


# imaptest's states (its client-state.c): (name, percent, again percent, flags).
# MSGSET: names messages by number, so it is not pipelined behind a command that may
# expunge or change the state; EXPUNGES: may change the numbers; STATE: changes the
# login state (sent once the commands before it are answered). COPY is left out:
# imaptest only copies when given a copybox, which its default run has none.
_MSGSET, _EXPUNGES, _STATE = 1, 2, 4
_IMAPTEST_STATES = [("LIST", 50, 0, _EXPUNGES), ("STATUS", 50, 0, _EXPUNGES), ("SELECT", 100, 0, _STATE),
                    ("FETCH", 100, 0, _MSGSET), ("FETCH2", 100, 30, _MSGSET), ("STORE", 50, 0, _MSGSET),
                    ("DELETE", 100, 0, _MSGSET), ("EXPUNGE", 100, 0, _EXPUNGES),
                    ("APPEND", 100, 5, _EXPUNGES)]
_FETCH_FIELDS = [b"UID", b"FLAGS", b"ENVELOPE", b"INTERNALDATE", b"BODY", b"BODYSTRUCTURE", b"RFC822.SIZE"]
_HEADER_FIELDS = [b"From", b"To", b"Cc", b"Subject", b"References", b"In-Reply-To", b"Message-ID",
                  b"Delivered-To"]
_FETCH2_FIELDS = [b"BODY.PEEK[HEADER]", b"RFC822.HEADER", b"BODY.PEEK[]", b"BODY.PEEK[1]", b"BODY.PEEK[TEXT]"]
_FLAGS = [b"\\Seen", b"\\Flagged", b"\\Answered", b"\\Draft", b"$Label1", b"$Label2"]
_MAX_PIPELINE = 10      # imaptest's command queue per connection
_MESSAGE_THRESHOLD = 30  # imaptest's "msgs": APPEND below it, DELETE more above it


def _seq_set(seqs) -> bytes:
    seqs = sorted(set(seqs))
    out, i = [], 0
    while i < len(seqs):
        j = i
        while j + 1 < len(seqs) and seqs[j + 1] == seqs[j] + 1:
            j += 1
        out.append(b"%d" % seqs[i] if i == j else b"%d:%d" % (seqs[i], seqs[j]))
        i = j + 1
    return b",".join(out)


def _mix_script(conn: _MixConn, user: str, password: str, stay: bool, rng: random.Random,
                messages: list[bytes]):
    """imaptest's default stress run, as its state machine goes (see the module's
    help): yields batches of pipelined (command, literal) pairs, is sent their
    (tagged lines, untagged lines), and yields None to be connected anew."""
    rand = rng.randrange
    appended = 0
    while True:
        tagged, lines = yield [(b'LOGIN "%s" "%s"' % (user.encode(), password.encode()), None)]
        caps = b" ".join(tagged + lines)
        if b"CAPABILITY" not in caps:
            tagged, lines = yield [(b"CAPABILITY", None)]
            caps = b" ".join(lines)
        conn.literal_plus = b"LITERAL+" in caps
        condstore = b"CONDSTORE" in caps
        exists, selected = 0, False
        batch: list[tuple[bytes, bytes | None]] = []
        pending = 0  # flags of the commands in the batch

        def account(lines):
            nonlocal exists
            for x in lines:
                if x.endswith(b" EXISTS"):
                    exists = int(x.split()[1])
                elif x.endswith(b" EXPUNGE"):
                    exists -= 1
        while True:
            for name, percent, again, flags in _IMAPTEST_STATES:
                if rand(100) >= percent:
                    continue
                while True:
                    if name == "SELECT" and selected:
                        break
                    if (flags & _STATE or pending & _STATE or len(batch) >= _MAX_PIPELINE
                            or (flags & _MSGSET and pending & (_EXPUNGES | _STATE))
                            or (name == "APPEND" and not conn.literal_plus)) and batch:
                        _tagged, lines = yield batch
                        account(lines)
                        batch, pending = [], 0
                    if flags & _MSGSET and not exists:
                        break
                    msgs = exists
                    if name == "LIST":
                        batch.append((b'LIST "" *', None))
                    elif name == "STATUS":
                        batch.append((b'STATUS "INBOX" (MESSAGES UNSEEN RECENT)', None))
                    elif name == "SELECT":
                        batch.append((b'SELECT "INBOX"' + (b" (CONDSTORE)" if condstore else b""), None))
                        selected = True
                    elif name == "FETCH":
                        items = []
                        for _ in range(rand(4) + 1):
                            if rand(4):
                                items.append(_FETCH_FIELDS[rand(len(_FETCH_FIELDS))])
                            else:
                                names = b" ".join(_HEADER_FIELDS[rand(len(_HEADER_FIELDS))]
                                                  for _ in range(rand(4) + 1))
                                items.append(b"BODY.PEEK[HEADER.FIELDS (%s)]" % names)
                        seqs = _seq_set(rand(msgs) + 1 for _ in range(min(msgs, 100)))
                        batch.append((b"FETCH %s (%s)" % (seqs, b" ".join(items)), None))
                    elif name == "FETCH2":
                        batch.append((b"FETCH %d (UID %s)" % (rand(msgs) + 1, _FETCH2_FIELDS[rand(5)]), None))
                    elif name == "STORE":
                        count = rand(msgs if msgs < 10 else min(msgs // 5, 50)) if msgs > 1 else 0
                        if count:
                            flags_ = b" ".join(_FLAGS[rand(len(_FLAGS))] for _ in range(rand(3) + 1))
                            batch.append((b"STORE %s %sFLAGS%s (%s)" % (
                                _seq_set(rand(msgs) + 1 for _ in range(count)), (b"+", b"-", b"")[rand(3)],
                                b".SILENT" if rand(2) else b"", flags_), None))
                    elif name == "DELETE":
                        count = rand(msgs - _MESSAGE_THRESHOLD) if msgs > _MESSAGE_THRESHOLD + 5 else rand(5)
                        if count:
                            batch.append((b"STORE %s +FLAGS%s \\Deleted" % (
                                _seq_set(rand(msgs) + 1 for _ in range(count)),
                                b".SILENT" if rand(2) else b""), None))
                    elif name == "EXPUNGE":
                        batch.append((b"EXPUNGE", None))
                    elif name == "APPEND" and msgs < _MESSAGE_THRESHOLD:
                        parts = []
                        while not parts or (conn.literal_plus and rand(100) < again):  # MULTIAPPEND
                            appended += 1
                            flags_ = b" (%s)" % b" ".join(_FLAGS[rand(4)] for _ in range(rand(2) + 1)) \
                                if rand(2) else b""
                            date = b' "01-Dec-2026 10:00:00 +0000"' if rand(2) else b""
                            parts.append((flags_ + date, messages[appended % len(messages)]))
                        batch.append((b'APPEND "INBOX"', parts))
                    pending |= flags
                    if name == "APPEND":
                        break  # its "again" is a second message in the same command
                    if flags & _STATE:
                        _tagged, lines = yield batch
                        account(lines)
                        batch, pending = [], 0
                    if not again or rand(100) >= again:
                        break
            if not stay:
                break
        if batch:
            yield batch
        yield [(b"LOGOUT", None)]
        yield None  # connect anew


def _mixed_run(a, stay: bool, seconds: float, messages: list[bytes], first: int,
               count: int) -> tuple[int, int]:
    """Run clients first..first+count-1 for `seconds`; (commands, errors)."""
    import selectors
    import socket
    sel = selectors.DefaultSelector()
    rngs = {i: random.Random(i) for i in range(first, first + count)}

    def connect(i):
        s = socket.create_connection((a.host, a.port), timeout=TIMEOUT)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        greeting = b""
        while b"\r\n" not in greeting:
            more = s.recv(4096)
            if not more:
                raise ImapError("connection closed before the greeting")
            greeting += more
        s.setblocking(False)
        conn = _MixConn(s)
        conn.script = _mix_script(conn, a.user_format.format(n=i + 1), a.password, stay, rngs[i], messages)
        conn.send(next(conn.script))
        sel.register(s, selectors.EVENT_READ, (i, conn))
        return conn

    commands = errors = 0
    for i in range(first, first + count):
        connect(i)
    deadline = time.monotonic() + seconds
    live = count
    while live:
        now = time.monotonic()
        events = sel.select(timeout=min(TIMEOUT, max(0.0, deadline + TIMEOUT - now)))
        if not events:
            raise ImapError("no answer within the timeout")
        closing = now >= deadline
        for key, _ in events:
            i, conn = key.data
            try:
                data = conn.sock.recv(1 << 18)
            except BlockingIOError:
                continue
            if not data:
                raise ImapError(f"client {i}: connection closed")
            if not conn.feed(data):
                continue
            answers, conn.answers = conn.answers, []
            lines, conn.untagged = conn.untagged, []
            commands += len(answers)
            for tagged in answers:
                if tagged.split(b" ", 2)[1] != b"OK":
                    errors += 1
                    print(f"  client {i}: {tagged.decode(errors='replace')}", file=sys.stderr)
            if closing and not conn.closing:
                conn.closing = True  # time is up: log out from wherever the script is
                if conn.last != b"LOGOUT":
                    conn.send([(b"LOGOUT", None)])
                    continue
            if conn.closing:
                sel.unregister(conn.sock)
                conn.sock.close()
                live -= 1
                continue
            batch = conn.script.send((answers, lines))
            if batch is None:  # logged out: a new connection for the next round
                sel.unregister(conn.sock)
                conn.sock.close()
                connect(i)
            else:
                conn.send(batch)
    sel.close()
    return commands, errors


def _mixed_worker(a, stay, seconds, messages, first, count, out) -> None:
    try:
        out.send(_mixed_run(a, stay, seconds, messages, first, count))
    except Exception as e:  # reported by the parent
        out.send(e)


def _mixed_messages(n: int = 200) -> list[bytes]:
    """A fixed pool of messages to APPEND (as imaptest takes them from an mbox), CRLF."""
    rng = random.Random(7)
    now = time.time()
    return [make_message(10_000 + k, rng, now).replace(b"\n", b"\r\n") for k in range(n)]


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
    import multiprocessing
    await _prefill(a)
    messages = _mixed_messages()
    out = {}
    procs = max(1, min(a.client_procs, a.clients))
    for mode in a.modes.split(","):
        stay = {"relogin": False, "stay": True}[mode.strip()]
        t0, cpu0 = time.monotonic(), cpu_seconds(a.pid)
        if procs == 1:
            own0 = time.process_time()
            commands, errors = _mixed_run(a, stay, a.seconds, messages, 0, a.clients)
            out[f"mixed_{mode}_client_us_per_cmd"] = (time.process_time() - own0) / max(1, commands) * 1e6
        else:
            share = [a.clients // procs + (1 if k < a.clients % procs else 0) for k in range(procs)]
            ctx = multiprocessing.get_context("fork")
            jobs, first = [], 0
            for k in range(procs):
                mine, theirs = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_mixed_worker,
                                args=(a, stay, a.seconds, messages, first, share[k], theirs))
                p.start()
                jobs.append((p, mine))
                first += share[k]
            commands = errors = 0
            for p, mine in jobs:
                hung = ImapError("a client process hung")
                got = mine.recv() if mine.poll(a.seconds + 2 * TIMEOUT) else hung
                p.join(5)
                if isinstance(got, Exception):
                    raise got
                commands, errors = commands + got[0], errors + got[1]
        elapsed = time.monotonic() - t0
        out[f"mixed_{mode}_cmds_per_s"] = commands / elapsed
        out[f"mixed_{mode}_errors"] = errors
        cpu1 = cpu_seconds(a.pid)
        if cpu0 is not None and cpu1 is not None and cpu1 > cpu0:
            # what one fully used core of the server would answer (the clients share the machine)
            out[f"mixed_{mode}_cmds_per_server_cpu_s"] = commands / (cpu1 - cpu0)
            out[f"mixed_{mode}_server_cores"] = (cpu1 - cpu0) / elapsed
    return out


def _tree(pid: int) -> list[int]:
    """pid and its descendants (a server's worker processes and their helpers), from /proc."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parent_of[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    pids, frontier = [pid], [pid]
    while frontier and len(pids) < 10_000:
        frontier = [p for p, ppid in parent_of.items() if ppid in frontier]
        pids.extend(frontier)
    return pids


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a server process and its descendants, from /proc."""
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
    """Resident memory of a server process and its descendants, in KiB."""
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
    ap.add_argument("--modes", default="relogin,stay", help="the mixed load's modes, comma-separated")
    ap.add_argument("--client-procs", type=int, default=1,
                    help="processes the mixed load's clients are spread over")
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
