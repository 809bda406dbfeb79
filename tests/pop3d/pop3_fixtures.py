"""Shared helpers for the POP3 daemon tests: a config directory with pop3d.yaml,
the users' maildirs, and a raw line-based client for what poplib cannot send."""

from __future__ import annotations

import poplib
import ssl
from pathlib import Path

from common.storage import MailStore
from tests.support import Daemon, LineSocket, free_port
from tests.support.config import base_config

PASSWORD = "postroom"
USERS = {f"{name}@example.test": PASSWORD for name in
         ("demo", "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
          "kate", "liam", "mona")}


def pop3d_config(tmp_path: Path, extra: str = "", core_auth: str = "", users: dict | None = None) -> tuple[Path, int, int]:
    """Config folder with a STLS listener and an implicit-TLS one; returns (etc, pop3, pop3s)."""
    etc = base_config(tmp_path, users=users or USERS)
    if core_auth:
        text = (etc / "postroom.yaml").read_text().replace("auth:\n", "auth:\n" + core_auth, 1)
        (etc / "postroom.yaml").write_text(text)
    pop3, pop3s = free_port(), free_port()
    (etc / "pop3d.yaml").write_text(f"""listeners:
  pop3:
    endpoint: tcp:{pop3}:interface=127.0.0.1
    tls: starttls
  pop3s:
    endpoint: tcp:{pop3s}:interface=127.0.0.1
    tls: implicit
{extra}""")
    return etc, pop3, pop3s


def start(etc: Path, *ports: int) -> Daemon:
    return Daemon("pop3d.main", etc).start(ports)


def maildir(tmp_path: Path, user: str) -> Path:
    local = user.split("@")[0]
    return tmp_path / "mail" / "example.test" / local / "Maildir"


def store_for(tmp_path: Path, user: str) -> MailStore:
    return MailStore(maildir(tmp_path, user))


def store_with(tmp_path: Path, user: str, count: int, body: str = "x") -> MailStore:
    """The user's store with count messages delivered, "Subject: <i>" over body (in
    which "{i}" stands for i)."""
    store = store_for(tmp_path, user)
    for i in range(count):
        store.deliver(f"Subject: {i}\n\n{body.format(i=i)}\n".encode())
    return store


class LineClient(LineSocket):
    """A raw POP3 client: send exact bytes, read replies (optionally through STLS)."""

    def __init__(self, port: int, implicit_tls: bool = False, timeout: float = 10.0, prelude: bytes = b""):
        super().__init__(port, timeout)
        if prelude:  # a PROXY protocol header, say
            self.sock.sendall(prelude)
        if implicit_tls:
            self.sock = tls_context().wrap_socket(self.sock)
        self.greeting = self.line()

    def multiline(self) -> list[bytes]:
        lines = []
        while (line := self.line()) != b".":
            lines.append(line)
        return lines

    def cmd(self, text: str) -> bytes:
        self.send(text.encode() + b"\r\n")
        return self.line()

    def starttls(self) -> None:
        assert self.cmd("STLS").startswith(b"+OK")
        assert self.buf == b""
        self.sock = tls_context().wrap_socket(self.sock)

    def closed_by_server(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, ssl.SSLError):
            return True


def login(port: int, user: str, tls: str = "stls") -> poplib.POP3:
    """poplib logged in with USER/PASS; tls: "stls", "implicit" or "none"."""
    if tls == "implicit":
        client = poplib.POP3_SSL("127.0.0.1", port, context=tls_context(), timeout=10)
    else:
        client = poplib.POP3("127.0.0.1", port, timeout=10)
        if tls == "stls":
            client.stls(tls_context())
    client.user(user)
    client.pass_(PASSWORD)
    return client


def tls_context() -> ssl.SSLContext:
    """A client context that accepts the test's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
