"""A minimal SMTP sink for the queue manager's tests: a real server on a loopback
address, in a thread, that records what it was given.

It is the *peer* of the code under test (the outbound client), written with the
standard library only so it shares no code with postroom. Features are switched on
per test: STARTTLS, AUTH PLAIN/LOGIN (or only some mechanisms), a greeting code,
EHLO refused (HELO only), per-recipient refusals, and a delay before the final
reply to DATA (a message counts as received only once that reply was sent, like a
real MTA's commit). It records each message, which greeting command and AUTH
mechanism the client used, and when each transaction ran (MAIL to the final reply),
so tests can measure concurrency and latency."""

from __future__ import annotations

import base64
import contextlib
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field


@dataclass
class Received:
    sender: str
    recipients: list[str]
    data: bytes
    mail_params: str
    rcpt_params: list[str]
    tls: bool
    auth: str | None
    helo: str
    hello_verb: str = "EHLO"
    auth_mechanism: str | None = None
    received_at: float = 0.0                  # time.monotonic() when the final reply was sent


@dataclass
class SinkOptions:
    greeting: str = "220 sink.example ESMTP"      # "" = say nothing at all
    extensions: tuple[str, ...] = ("PIPELINING", "8BITMIME", "SIZE 10485760", "DSN", "SMTPUTF8", "ENHANCEDSTATUSCODES")
    certfile: str | None = None
    keyfile: str | None = None
    auth: dict[str, str] | None = None        # username -> password; AUTH offered after TLS only
    refuse: dict[str, str] = field(default_factory=dict)   # recipient -> reply line
    data_delay: float = 0.0
    data_reply: str = "250 2.0.0 Ok: queued"
    broken_tls: bool = False                  # STARTTLS answers 220, then the handshake fails
    ehlo_refused: bool = False                # EHLO gets 502: a client must fall back to HELO
    auth_mechanisms: tuple[str, ...] = ("PLAIN", "LOGIN")


class Sink:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, **opts):
        self.options = SinkOptions(**opts)
        self.messages: list[Received] = []
        self.connections = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.transactions: list[tuple[float, float]] = []   # (MAIL, final reply) in time.monotonic()
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            timeout = 30

            def handle(self):
                with sink.lock:
                    sink.connections += 1
                    sink.concurrent += 1
                    sink.max_concurrent = max(sink.max_concurrent, sink.concurrent)
                try:
                    sink._session(self.request)
                except (OSError, ValueError, ssl.SSLError):
                    pass
                finally:
                    with sink.lock:
                        sink.concurrent -= 1

        class Server(socketserver.ThreadingTCPServer):
            allow_reuse_address = True
            request_queue_size = 128
            daemon_threads = True
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

        self.server = Server((host, port), Handler)
        self.host = host
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, n: int, timeout: float = 15.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= n:
                    return list(self.messages)
            time.sleep(0.05)
        raise TimeoutError(f"sink got {len(self.messages)} messages, wanted {n}")

    def _session(self, sock: socket.socket) -> None:
        o = self.options
        f = sock.makefile("rb")
        tls = False
        auth = None
        mechanism = None
        helo = ""
        verb_used = "EHLO"
        started = 0.0

        def send(line: str) -> None:
            sock.sendall(line.encode() + b"\r\n")

        if not o.greeting:
            f.readline()     # silent: wait until the client gives up
            return
        send(o.greeting)
        if not o.greeting.startswith("220"):
            return
        sender, rcpts, mparams, rparams = None, [], "", []
        while True:
            line = f.readline(4096)
            if not line:
                return
            cmd = line.decode("utf-8", "replace").rstrip("\r\n")
            verb = cmd.split(" ", 1)[0].upper()
            if verb == "EHLO" and o.ehlo_refused:
                send("502 5.5.2 Command not recognized")
            elif verb == "HELO":
                helo, verb_used = cmd[5:], "HELO"
                send("250 sink.example")
            elif verb == "EHLO":
                helo, verb_used = cmd[5:], "EHLO"
                exts = list(o.extensions)
                if (o.certfile or o.broken_tls) and not tls:
                    exts.append("STARTTLS")
                if o.auth and tls:
                    exts.append("AUTH " + " ".join(o.auth_mechanisms))
                lines = ["sink.example"] + exts
                sock.sendall("".join(f"250{'-' if i < len(lines) - 1 else ' '}{l}\r\n"
                                     for i, l in enumerate(lines)).encode())
            elif verb == "STARTTLS" and (o.certfile or o.broken_tls) and not tls:
                send("220 2.0.0 Ready to start TLS")
                if o.broken_tls:
                    sock.sendall(b"this is not a TLS record\r\n")
                    return
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.load_cert_chain(o.certfile, o.keyfile)
                sock = ctx.wrap_socket(sock, server_side=True)
                f = sock.makefile("rb")
                tls = True
            elif verb == "AUTH" and o.auth and tls:
                parts = cmd.split()
                mechanism = parts[1].upper()
                if mechanism not in o.auth_mechanisms:
                    send("504 5.5.4 Unrecognized authentication type")
                    continue
                if mechanism == "PLAIN":
                    _, user, pw = base64.b64decode(parts[2]).split(b"\0")
                else:
                    send("334 VXNlcm5hbWU6")
                    user = base64.b64decode(f.readline().strip())
                    send("334 UGFzc3dvcmQ6")
                    pw = base64.b64decode(f.readline().strip())
                if o.auth.get(user.decode()) == pw.decode():
                    auth = user.decode()
                    send("235 2.7.0 Authentication successful")
                else:
                    send("535 5.7.8 Authentication failed")
            elif verb == "MAIL":
                if o.auth and not auth:
                    send("530 5.7.0 Authentication required")
                    continue
                addr, _, mparams = cmd[10:].partition(">")
                sender, rcpts, rparams = addr.lstrip("<"), [], []
                mparams = mparams.strip()
                started = time.monotonic()
                send("250 2.1.0 Ok")
            elif verb == "RCPT":
                addr, _, params = cmd[8:].partition(">")
                addr = addr.lstrip("<")
                if addr in o.refuse:
                    send(o.refuse[addr])
                else:
                    rcpts.append(addr)
                    rparams.append(params.strip())
                    send("250 2.1.5 Ok")
            elif verb == "DATA":
                if sender is None or not rcpts:
                    send("554 5.5.1 No valid recipients")
                    continue
                send("354 End data with <CR><LF>.<CR><LF>")
                chunks = []
                while True:
                    l = f.readline(2000)
                    if not l:
                        return
                    if len(l) > 1000:
                        raise ValueError("line too long")
                    if l == b".\r\n":
                        break
                    chunks.append(l[1:] if l.startswith(b".") else l)
                if o.data_delay:
                    time.sleep(o.data_delay)
                    if _peer_closed(sock):
                        return   # the client is gone: nothing was committed
                send(o.data_reply)
                now = time.monotonic()
                with self.lock:
                    self.transactions.append((started, now))
                    if o.data_reply.startswith("2"):
                        self.messages.append(Received(sender, rcpts, b"".join(chunks), mparams, rparams,
                                                      tls, auth, helo, verb_used, mechanism, now))
                sender, rcpts = None, []
            elif verb == "RSET":
                sender, rcpts = None, []
                send("250 2.0.0 Ok")
            elif verb == "QUIT":
                send("221 2.0.0 Bye")
                return
            elif verb == "NOOP":
                send("250 2.0.0 Ok")
            else:
                send("502 5.5.2 Command not recognized")


def max_overlap(intervals) -> int:
    """The largest number of (start, end) intervals that overlap at one moment."""
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def _peer_closed(sock) -> bool:
    import select

    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ssl.SSLError):
        return True


# --- helpers for running the queue manager against sinks --------------------------

def mta_config(tmp_path, queue_yaml: str, extra_yaml: str = "", local_domains=("example.test",)):
    """A config directory whose mta.yaml has `queue:` = queue_yaml (indented for you)."""
    import textwrap

    from tests.support.config import base_config

    etc = base_config(tmp_path, local_domains=local_domains)
    (etc / "mta.yaml").write_text("queue:\n" + textwrap.indent(textwrap.dedent(queue_yaml).strip(), "  ")
                                  + "\n" + textwrap.dedent(extra_yaml))
    return etc


def sink_config(tmp_path, port: int, settings: str = "tls: none", extra_yaml: str = "",
                host: str = "127.0.0.3"):
    """mta_config whose queue sends all remote mail to the sink at host:port; settings
    are more `queue:` lines after that transport map (indented for you)."""
    import textwrap

    return mta_config(tmp_path, f'transports:\n  "*": "smtp:[{host}]:{port}"\n' + textwrap.dedent(settings),
                      extra_yaml)


@contextlib.contextmanager
def sink_scanned_hourly(tmp_path):
    """A Sink on 127.0.0.3 and a config sending all remote mail there without TLS,
    deferred/ scanned once an hour (nothing deferred is retried unless asked):
    yields (sink, etc, spool root)."""
    with Sink("127.0.0.3") as sink:
        yield sink, sink_config(tmp_path, sink.port, "tls: none\nscan_interval: 1h"), tmp_path / "spool"


def tls_sink(tmp_path, host: str = "127.0.0.3", **opts) -> Sink:
    """A Sink offering STARTTLS with the test certificate that base_config (through
    mta_config) writes to tmp_path/etc."""
    etc = tmp_path / "etc"
    return Sink(host, certfile=str(etc / "cert.pem"), keyfile=str(etc / "key.pem"), **opts)


def spool_message(spool_root, sender: str, rcpts, message: bytes | None = None, queue: str = "incoming",
                  **env) -> str:
    """Queue a message the way the receiving side does (a durable file in incoming/,
    or in the queue given)."""
    from common.spool import Envelope, Recipient, Spool, encode

    spool = Spool(spool_root, create=True)
    recipients = [r if isinstance(r, Recipient) else Recipient(r) for r in rcpts]
    if message is None:
        message = (f"From: <{sender}>\r\nTo: {', '.join(r.address for r in recipients)}\r\n"
                   f"Subject: test\r\nMessage-ID: <{time.time_ns()}@example.test>\r\n\r\nHello.\r\n").encode()
    envelope = Envelope(sender=sender, recipients=recipients, **env)
    chunks = encode(envelope, message)
    spool.write(envelope, [chunks[1]], queue)
    return envelope.queue_id


def start_queue(etc, timeout: float = 15.0):
    """The queue manager as its own process (python -m mta.queue)."""
    from tests.support import Daemon, wait_for

    d = Daemon("mta.queue", etc).start()
    wait_for(lambda: "started" in d.output() or d.proc.poll() is not None, timeout, what="queue manager start")
    assert d.proc.poll() is None, d.output()
    return d


def spool_files(spool_root, queue: str) -> list[str]:
    import os

    try:
        return sorted(n for n in os.listdir(f"{spool_root}/{queue}") if not n.startswith("."))
    except FileNotFoundError:
        return []


def receiving_mta_yaml(host: str, port: int, extra: str = "",
                       queue: str = 'transports:\n  "*": "smtp:[127.0.0.1]:1"\n') -> str:
    """mta.yaml of a receiving postroom-mta: an mx listener with STARTTLS and no
    checks, `queue:` = queue (indented for you), then extra. By default its own
    remote mail (bounces) waits in deferred/ (nothing on port 1)."""
    import textwrap

    return f"""\
listeners:
  mx:
    endpoint: tcp:{port}:interface={host}
    role: mx
    tls: starttls
    checks: false
receive_processes: 1
recipients:
  aliases_file: aliases
queue:
{textwrap.indent(queue, "  ")}{extra}"""


class PostroomMta:
    """A whole postroom-mta (python -m mta.main) on one loopback address."""

    def __init__(self, tmp, host: str, local_domains, users, mta_yaml: str, core_extra: str = ""):
        from tests.support import Daemon
        from tests.support.config import base_config

        tmp.mkdir(parents=True, exist_ok=True)
        self.etc = base_config(tmp, users=users, local_domains=tuple(local_domains), core_extra=core_extra)
        (self.etc / "aliases").write_text("")
        (self.etc / "mta.yaml").write_text(mta_yaml)
        self.tmp = tmp
        self.host = host
        self.spool = tmp / "spool"
        self.daemon = Daemon("mta.main", self.etc)

    def start(self, *ports: int):
        from tests.support import wait_for_port

        self.daemon.start()
        for port in ports:
            wait_for_port(port, host=self.host, proc=self.daemon.proc)
        return self

    def stop(self):
        self.daemon.stop()

    def files(self, *queues: str):
        """SpoolFiles in the given queues (default: every queue a message can be in)."""
        from common.spool import parse

        out = []
        for q in queues or ("incoming", "active", "deferred", "hold"):
            for name in spool_files(self.spool, q):
                try:
                    out.append(parse(self.spool / q / name))
                except (OSError, ValueError):
                    pass
        return out


def submit(host: str, port: int, sender: str, rcpts, message: bytes, user: str | None = None,
           password: str = "postroom") -> None:
    """Send one message with smtplib (STARTTLS, AUTH when user is given)."""
    import smtplib
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.starttls(context=ctx)
        if user:
            s.login(user, password)
        s.sendmail(sender, list(rcpts), message)

