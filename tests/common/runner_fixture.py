"""A tiny daemon built on common.runner, for the runner, TLS and STARTTLS tests.

    python -m tests.common.runner_fixture --config DIR

reads DIR/postroom.yaml and DIR/fixture.yaml (its listeners) and speaks a small line
protocol whose core is sans-IO like the real ones (bytes in, events out):

    NOOP       250 noop            counts the NOOPs run in this session
    NOOPS      250 noops=N
    STARTTLS   220 go ahead        the core stops reading; common.tls.start_tls discards
                                   whatever was sent behind it
    TLS        250 TLSv1.3 cipher  or 250 none
    SECURE     250 yes|no          runner.secure_transport()
    PEER       250 127.0.0.1       runner.peer_ip()
    SLOW       (after slow_delay) 250 slow done
    RELOADS    250 reloads=N       how often SIGHUP called the service's reload()
    QUIT       221 bye

The greeting is "220 fixture ready".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from twisted.application.service import Service
from twisted.internet.protocol import Factory, Protocol

from common import runner
from common.config.core import Listener, doc
from common.config.loader import Duration, load_file
from common.log import get_logger
from common.tls import ServerTLS, start_tls, tls_info


@dataclass(frozen=True)
class FixtureConfig:
    listeners: Mapping[str, Listener] = doc("listening endpoints", default_factory=dict)
    slow_delay: Duration = doc("how long SLOW takes", default=Duration(1))


@dataclass
class Command:
    name: str


@dataclass
class StartTls:
    pass


class LineCore:
    """Splits CRLF lines into events. At STARTTLS it stops reading and keeps the rest
    for discard_input(), as the daemons' cores do."""

    MAX_LINE = 512

    def __init__(self) -> None:
        self.buffer = b""

    def receive(self, data: bytes) -> list:
        self.buffer += data
        events: list = []
        while b"\r\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\r\n", 1)
            word = line.decode("ascii", "replace").strip().upper()
            if word == "STARTTLS":
                events.append(StartTls())
                break
            events.append(Command(word))
        if len(self.buffer) > self.MAX_LINE:
            self.buffer = b""
            events.append(Command("TOOLONG"))
        return events

    def discard_input(self) -> int:
        dropped, self.buffer = len(self.buffer), b""
        return dropped


class FixtureProtocol(Protocol):
    def __init__(self, service: "FixtureService", server_tls: ServerTLS | None):
        self.service = service
        self.server_tls = server_tls
        self.core = LineCore()
        self.noops = 0
        self.busy = False
        self.closing = False
        self.log = get_logger("fixture", session=f"s{id(self) % 10000}")

    def connectionMade(self):
        self.log.info("connection from {ip}", ip=runner.peer_ip(self.transport))
        self.send("220 fixture ready")

    def send(self, line: str) -> None:
        self.transport.write(line.encode() + b"\r\n")

    def dataReceived(self, data: bytes) -> None:
        for event in self.core.receive(data):
            if isinstance(event, StartTls):
                self.send("220 go ahead")
                start_tls(self.transport, self.server_tls, self.core, self.log)
                return
            self.handle(event.name)

    def handle(self, word: str) -> None:
        if word == "NOOP":
            self.noops += 1
            self.send("250 noop")
        elif word == "NOOPS":
            self.send(f"250 noops={self.noops}")
        elif word == "TLS":
            info = tls_info(self.transport)
            self.send(f"250 {info[0]} {info[1]}" if info else "250 none")
        elif word == "SECURE":
            self.send("250 yes" if runner.secure_transport(self.transport) else "250 no")
        elif word == "PEER":
            self.send(f"250 {runner.peer_ip(self.transport)}")
        elif word == "RELOADS":
            self.send(f"250 reloads={self.service.reloads}")
        elif word == "SLOW":
            self.busy = True
            from twisted.internet import reactor

            reactor.callLater(self.service.slow_delay, self.slow_done)
        elif word == "QUIT":
            self.send("221 bye")
            self.transport.loseConnection()
        else:
            self.send("500 unknown command")

    def slow_done(self) -> None:
        self.busy = False
        self.send("250 slow done")
        if self.closing:
            self.send("421 shutting down")
            self.transport.loseConnection()

    def graceful_shutdown(self) -> None:
        """The runner asks: close now if idle, else after the command in flight."""
        self.closing = True
        if not self.busy:
            self.send("421 shutting down")
            self.transport.loseConnection()


class FixtureService(Service):
    name = "fixture"

    def __init__(self, slow_delay: float):
        self.reloads = 0
        self.slow_delay = slow_delay
        self.log = get_logger("fixture")

    def reload(self) -> None:
        self.reloads += 1
        self.log.info("fixture reloaded ({n})", n=self.reloads)


class FixtureFactory(Factory):
    def __init__(self, service: FixtureService, server_tls: ServerTLS | None):
        self.service = service
        self.server_tls = server_tls

    def buildProtocol(self, addr):
        return FixtureProtocol(self.service, self.server_tls)


def build(cfg, parent, reactor) -> None:
    own = load_file(cfg.path("fixture.yaml"), FixtureConfig)
    service = FixtureService(float(own.slow_delay))
    service.setServiceParent(parent)
    needs_tls = any(lst.tls != "none" for lst in own.listeners.values())
    server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml")) if needs_tls else None
    for listener in own.listeners.values():
        runner.listen(parent, listener, FixtureFactory(service, server_tls),
                      server_tls, reactor)


def main(argv=None):
    runner.run("fixture", build, argv, description="postroom runner test daemon")



# -- for the tests --------------------------------------------------------------

MODULE = "tests.common.runner_fixture"


def fixture_config(tmp_path, fixture_yaml: str, core_extra: str = ""):
    """A test configuration folder with fixture.yaml next to postroom.yaml."""
    from tests.support.config import base_config

    etc = base_config(tmp_path, core_extra=core_extra)
    (etc / "fixture.yaml").write_text(fixture_yaml)
    return etc


def set_core(etc, old: str, new: str) -> None:
    """Replace one line of postroom.yaml (e.g. the user: line)."""
    path = etc / "postroom.yaml"
    text = path.read_text()
    lines = [new if line.startswith(old) else line for line in text.splitlines()]
    path.write_text("\n".join(line for line in lines if line is not None and line != "") + "\n")


if __name__ == "__main__":
    main()
