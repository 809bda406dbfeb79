"""Shared by the postroom-mta tests: a configured daemon process and a raw SMTP client."""

from __future__ import annotations

import re
import socket
import ssl
import time
from pathlib import Path

from common import spool as spoolmod
from tests.support import Daemon, free_port
from tests.support.config import base_config
from tests.support.dnsserver import DnsServer

_empty_dns: DnsServer | None = None


def loopback_dns_yaml() -> str:
    """A `dns:` section naming an empty DNS server on loopback (every name NXDOMAIN),
    shared by the whole test process, so no test ever asks the machine's resolver."""
    global _empty_dns
    if _empty_dns is None:
        import atexit

        _empty_dns = DnsServer({}).start()
        atexit.register(_empty_dns.stop)
    return f"dns:\n  nameservers: [127.0.0.1]\n  port: {_empty_dns.port}\n  timeout: 3s\n"

ALIASES = """\
# test aliases
postmaster: demo
team: alice,
      bob@example.test
outside: someone@elsewhere.example
"""


class MtaInstance:
    def __init__(self, tmp: Path, daemon: Daemon, ports: dict[str, int]):
        self.tmp = tmp
        self.daemon = daemon
        self.ports = ports
        self.spool = spoolmod.Spool(tmp / "spool")

    def find(self, queue_id: str) -> spoolmod.SpoolFile:
        """The spool file of queue_id in whichever queue it is now, its message read at
        once (the queue manager may move the file on right after)."""
        for _attempt in range(5):
            for queue in ("incoming", "active", "deferred", "hold"):
                p = self.spool.path(queue, queue_id)
                try:
                    sf = spoolmod.parse(p)
                    data = sf.read_message()
                except FileNotFoundError:
                    continue
                sf.read_message = lambda data=data: data
                return sf
        raise AssertionError(f"{queue_id} not in the spool")

    def queued_ids(self) -> set[str]:
        return {qid for q in ("incoming", "active", "deferred", "hold") for qid in self.spool.list(q)}


def listener(name: str, port: int, role: str = "mx", tls: str = "starttls", **settings: str) -> str:
    """One entry of `listeners:` on 127.0.0.1 (indented for start_mta's listeners=);
    settings are more lines of it, their values written as given."""
    return (f"  {name}:\n    endpoint: tcp:{port}:interface=127.0.0.1\n    role: {role}\n    tls: {tls}\n"
            + "".join(f"    {key}: {value}\n" for key, value in settings.items()))


def start_mta(tmp: Path, extra_yaml: str = "", core_extra: str = "", listeners: str | None = None,
              aliases: str = ALIASES, wait: bool = True, recipients_yaml: str = "") -> MtaInstance:
    """A postroom-mta process on free loopback ports. listeners replaces the three
    default listeners (mx, submission, submissions); recipients_yaml is added under
    `recipients:`; extra_yaml is appended at the top level."""
    etc = base_config(tmp, core_extra=core_extra)
    ports = {"mx": free_port(), "submission": free_port(), "submissions": free_port()}
    listeners_given = listeners is not None
    if listeners is None:
        listeners = (listener("mx", ports["mx"]) + listener("submission", ports["submission"], "submission")
                     + listener("submissions", ports["submissions"], "submission", "implicit"))
    if "queue:" not in extra_yaml:
        # Remote mail waits in deferred/ (nothing listens on port 1) so tests can read it.
        extra_yaml += 'queue:\n  transports:\n    "*": "smtp:[127.0.0.1]:1"\n'
    if "dns:" not in extra_yaml:
        extra_yaml += loopback_dns_yaml()
    if "receive_processes" not in extra_yaml:
        extra_yaml += "receive_processes: 1\n"
    (etc / "mta.yaml").write_text(
        f"listeners:\n{listeners}recipients:\n  aliases_file: aliases\n{recipients_yaml}{extra_yaml}")
    (etc / "aliases").write_text(aliases)
    daemon = Daemon("mta.main", etc)
    if listeners_given:
        ports = {name: int(port) for name, port in re.findall(r"^  (\w+):\n    endpoint: tcp:(\d+)", listeners, re.M)}
    daemon.start(wait_ports=tuple(ports.values()) if wait else ())
    return MtaInstance(tmp, daemon, ports)


def queue_id_of(reply_text: str | bytes) -> str:
    if isinstance(reply_text, bytes):
        reply_text = reply_text.decode()
    m = re.search(r"queued as ([0-9A-F]+)", reply_text)
    assert m, reply_text
    return m.group(1)


def greeted(port: int, source: str | None = None) -> "RawClient":
    """A RawClient (from source) whose greeting was read: 220."""
    c = RawClient(port, source=source)
    code, text = c.reply()
    assert code == 220, (code, text)
    return c


class RawClient:
    """Bytes on a socket, replies read whole (multi-line aware)."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, tls: bool = False,
                 source: str | None = None):
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        if tls:
            self.sock = _client_context().wrap_socket(self.sock, server_hostname="mail.example.test")
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self) -> tuple[int, str]:
        """One whole reply: (code, text of every line joined by newlines)."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed; got so far {lines!r} {self.buf!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            lines.append(line.decode())
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(l[4:] for l in lines)

    def replies(self, n: int) -> list[tuple[int, str]]:
        return [self.reply() for _ in range(n)]

    def cmd(self, line: bytes) -> tuple[int, str]:
        self.send(line + b"\r\n")
        return self.reply()

    def starttls(self) -> None:
        self.sock = _client_context().wrap_socket(self.sock, server_hostname="mail.example.test")

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionError, ssl.SSLError):
            return True
        except socket.timeout:
            return False
        return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def _client_context() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


client_tls_context = _client_context
