"""Fixtures for the IMAP tests: a configuration directory and postroom-imapd
running as a real process on loopback ports."""

from __future__ import annotations

import imaplib
import itertools
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from tests.support import ROOT, Daemon, free_port
from tests.support.config import base_config


USERS = {f"user{i}@example.test": "postroom" for i in range(40)}
USERS["alice@example.test"] = "postroom"
USERS["quota@example.test"] = "postroom"
USER_EXTRA = {"quota@example.test": "userdb_quota_rule=*:storage=2K"}


@dataclass
class ImapServer:
    etc: Path
    tmp: Path
    port: int
    tls_port: int
    daemon: Daemon
    user: str = "alice@example.test"

    def maildir(self, user: str | None = None) -> Path:
        local, _, domain = (user or self.user).partition("@")
        return self.tmp / "mail" / domain / local / "Maildir"

    def client(self, user: str | None = "", password: str = "postroom") -> imaplib.IMAP4:
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        if user is not None:
            c.login(user or self.user, password)
        return c

    def deliver(self, message: bytes, user: str | None = None) -> float:
        """Deliver with postroom-deliver, the MDA's pipe command, as an MTA runs it, on
        this server's configuration; returns the monotonic time the process exited."""
        proc = subprocess.Popen([sys.executable, "-m", "mda.deliver", "-c", str(self.etc), "-d", user or self.user],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(ROOT))
        out, err = proc.communicate(message, timeout=60)
        exited = time.monotonic()
        assert proc.returncode == 0, (proc.returncode, out, err)
        return exited

    def tls_client(self) -> imaplib.IMAP4_SSL:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return imaplib.IMAP4_SSL("127.0.0.1", self.tls_port, ssl_context=ctx, timeout=10)


def write_imapd_yaml(etc: Path, port: int, tls_port: int, extra: str = "") -> None:
    (etc / "imapd.yaml").write_text(f"""\
listeners:
  imap:
    endpoint: tcp:{port}:interface=127.0.0.1
    tls: starttls
  imaps:
    endpoint: tcp:{tls_port}:interface=127.0.0.1
    tls: implicit
{extra}""")


def start_imapd(tmp_path: Path, extra: str = "", core_extra: str = "") -> ImapServer:
    etc = base_config(tmp_path, users=USERS, core_extra=core_extra, user_extra=USER_EXTRA)
    port, tls_port = free_port(), free_port()
    write_imapd_yaml(etc, port, tls_port, extra)
    # For postroom-deliver (the MDA's pipe command), which tests run to deliver mail.
    (etc / "mda.yaml").write_text("consumer:\n  enabled: false\n")
    daemon = Daemon("imapd.main", etc).start(wait_ports=(port, tls_port))
    return ImapServer(etc, tmp_path, port, tls_port, daemon)


@pytest.fixture(scope="module")
def imapd_server(tmp_path_factory):
    server = start_imapd(tmp_path_factory.mktemp("imapd"))
    try:
        yield server
    finally:
        code = server.daemon.stop()
        assert code == 0, server.daemon.output()
        assert "Traceback" not in server.daemon.output(), server.daemon.output()


class Raw:
    """A line-level client: exact bytes out, answers line by line in the order sent."""

    def __init__(self, port: int, timeout: float = 5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until(self, tag: bytes) -> list[bytes]:
        """Every line up to and including the one tagged `tag`."""
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + b" "):
                return lines

    def cmd(self, tag: bytes, command: bytes) -> list[bytes]:
        self.send(tag + b" " + command + b"\r\n")
        return self.until(tag)

    def send(self, data: bytes):
        self.sock.sendall(data)

    def starttls(self):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.sock = ctx.wrap_socket(self.sock)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True


_next_user: dict[int, itertools.count] = {}


@pytest.fixture
def imapd(imapd_server):
    """The module's server, with a user of this test's own (a fresh, empty maildir)."""
    n = next(_next_user.setdefault(id(imapd_server), itertools.count()))
    assert n < 40, "more tests than users in USERS"
    return replace(imapd_server, user=f"user{n}@example.test")
