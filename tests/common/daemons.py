"""The three daemons that talk to clients (postroom-mta, postroom-imapd, postroom-pop3d)
as real processes on loopback, for the tests of what common/ gives all of them:
the STARTTLS discard, authentication throttling, log redaction.

    etc = config(tmp_path, "pop3d", core_extra="log:\\n  level: debug\\n")
    daemon, ports = start(etc, "pop3d")
    c = LineClient(ports["plain"])

Every daemon gets two listeners: "plain" (STARTTLS offered) and "implicit" (TLS from
the first byte). The MTA's are submission listeners (AUTH after STARTTLS), except
with mx=True, where "plain" is an MX listener (port 25's role); its DNS goes to an
empty server on loopback, never to the machine's resolver.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from tests.support import Daemon, LineSocket, free_port
from tests.support.config import base_config

#: daemon -> (module run as the process, its file)
MODULES = {"mta": ("mta.main", "mta.yaml"), "imapd": ("imapd.main", "imapd.yaml"),
           "pop3d": ("pop3d.main", "pop3d.yaml")}


def config(tmp_path: Path, daemon: str, core_extra: str = "", auth_extra: str = "", mx: bool = False,
           users: dict[str, str] | None = None) -> Path:
    """A configuration folder for daemon with a plain (STARTTLS) and an implicit-TLS
    listener on free loopback ports, written in the daemon's file. core_extra is added
    to postroom.yaml at the top level, auth_extra (indented lines) under its auth:,
    replacing the settings of the same names. users: name -> password (default: the
    demo users with "postroom")."""
    etc = base_config(tmp_path, users=users, core_extra=core_extra)
    if auth_extra:
        core = etc / "postroom.yaml"
        given = {line.split(":")[0] for line in auth_extra.splitlines()}
        kept = [line for line in core.read_text().splitlines() if line.split(":")[0] not in given]
        core.write_text("\n".join(kept).replace("auth:", "auth:\n" + auth_extra.rstrip("\n"), 1) + "\n")
    plain, implicit = free_port(), free_port()
    if daemon == "mta":
        from tests.mta.smtpd_fixture import loopback_dns_yaml

        role = "mx\n    checks: false" if mx else "submission"
        body = (f"listeners:\n"
                f"  plain:\n    endpoint: tcp:{plain}:interface=127.0.0.1\n    role: {role}\n    tls: starttls\n"
                f"  implicit:\n    endpoint: tcp:{implicit}:interface=127.0.0.1\n    role: submission\n"
                f"    tls: implicit\n"
                f"recipients:\n  aliases_file: aliases\n"
                f"receive_processes: 1\n"
                # Remote mail would wait in deferred/: nothing listens on port 1.
                f"queue:\n  transports:\n    \"*\": \"smtp:[127.0.0.1]:1\"\n"
                + loopback_dns_yaml())
        (etc / "aliases").write_text("postmaster: demo\n")
    else:
        body = (f"listeners:\n"
                f"  plain:\n    endpoint: tcp:{plain}:interface=127.0.0.1\n    tls: starttls\n"
                f"  implicit:\n    endpoint: tcp:{implicit}:interface=127.0.0.1\n    tls: implicit\n")
    (etc / MODULES[daemon][1]).write_text(body)
    (etc / "ports").write_text(f"{plain} {implicit}\n")
    return etc


def start(etc: Path, daemon: str, env: dict | None = None) -> tuple[Daemon, dict[str, int]]:
    plain, implicit = map(int, (etc / "ports").read_text().split())
    d = Daemon(MODULES[daemon][0], etc, env=env).start(wait_ports=(plain, implicit), timeout=30)
    return d, {"plain": plain, "implicit": implicit}


def tls_context() -> ssl.SSLContext:
    """A client context for the test certificate (self-signed: not verified)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class LineClient(LineSocket):
    """Exact bytes out, CRLF lines in; STARTTLS on the same socket."""

    def __init__(self, port: int, timeout: float = 15.0, implicit: bool = False):
        super().__init__(port, timeout)
        if implicit:
            self.sock = tls_context().wrap_socket(self.sock)

    def smtp_reply(self) -> list[bytes]:
        """The lines of one SMTP reply (multi-line aware)."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return lines

    def until_tag(self, tag: bytes) -> list[bytes]:
        """IMAP: every line up to and including the one tagged tag."""
        lines = [self.line()]
        while not lines[-1].startswith(tag + b" "):
            lines.append(self.line())
        return lines

    def starttls(self) -> None:
        """The TLS handshake, after the server's go-ahead was read. Bytes already
        read past the go-ahead would be plaintext the server sent unasked."""
        assert self.buf == b"", f"the server sent more in clear after its go-ahead: {self.buf!r}"
        self.sock = tls_context().wrap_socket(self.sock)
