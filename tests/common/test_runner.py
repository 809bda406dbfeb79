"""The runner, driven through a tiny daemon (tests/common/runner_fixture.py) run as a real
process: privilege drop after binding a port below 1024, root refused without a user,
SIGTERM graceful stop, SIGHUP reload, pid file, bind errors; and the log format with
its redaction of secrets."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.common.runner_fixture import MODULE, fixture_config, set_core
from tests.support import ROOT, Daemon, free_port, require, wait_for


def plain_listener(port: int) -> str:
    return f"listeners:\n  main:\n    endpoint: tcp:{port}:interface=127.0.0.1\n    tls: none\n"


class Client:
    """A line client for the fixture protocol."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.sock.makefile("rb")
        assert self.readline() == "220 fixture ready"

    def readline(self) -> str:
        return self.file.readline().decode().rstrip("\r\n")

    def ask(self, command: str) -> str:
        self.sock.sendall(command.encode() + b"\r\n")
        return self.readline()

    def close(self):
        self.file.close()
        self.sock.close()


def start(etc, port, *args) -> Daemon:
    return Daemon(MODULE, etc, *args).start(wait_ports=(port,))


def proc_ids(pid: int) -> dict[str, list[int]]:
    out = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, rest = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            out[key] = [int(x) for x in rest.split()]
    return out


def free_low_port() -> int:
    for port in range(700, 1000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise RuntimeError("no free port below 1024")


@pytest.mark.root
def test_binds_below_1024_then_drops_to_the_configured_user(tmp_path):
    require(os.geteuid() == 0, "root, to bind a port below 1024 and drop privileges")
    nobody = pwd.getpwnam("nobody")
    port = free_low_port()
    sock_path = tmp_path / "run" / "fixture.sock"
    etc = fixture_config(tmp_path, plain_listener(port) + f"  local:\n    endpoint: unix:{sock_path}:mode=660\n"
                                                          "    tls: none\n")
    set_core(etc, "user:", "user: nobody")
    # The pid file is written after the drop, so in a folder nobody can reach
    # (pytest's own tmp folders are root's alone).
    run_dir = tempfile.mkdtemp(prefix="postroom-pid-")
    os.chmod(run_dir, 0o777)
    pidfile = Path(run_dir) / "fixture.pid"
    daemon = start(etc, port, "--pidfile", str(pidfile))
    try:
        ids = proc_ids(daemon.proc.pid)
        assert ids["Uid"] == [nobody.pw_uid] * 4, ids
        assert ids["Gid"] == [nobody.pw_gid] * 4, ids
        assert 0 not in ids["Groups"], ids
        client = Client(port)  # the port bound as root still answers
        assert client.ask("PEER") == "250 127.0.0.1"
        client.close()
        # The unix socket bound as root is handed to the daemon's user, its mode kept.
        st = sock_path.stat()
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (nobody.pw_uid, nobody.pw_gid, 0o660)
        assert pidfile.read_text() == f"{daemon.proc.pid}\n"
        assert daemon.stop() == 0
        assert not pidfile.exists()
    finally:
        daemon.kill()
        shutil.rmtree(run_dir, ignore_errors=True)


def test_root_without_user_is_refused(tmp_path):
    require(os.geteuid() == 0, "root, to see root refused")
    etc = fixture_config(tmp_path, plain_listener(free_port()))
    set_core(etc, "user:", "")
    result = subprocess.run([sys.executable, "-m", MODULE, "--config", str(etc)], capture_output=True,
                            text=True, cwd=str(ROOT), timeout=30)
    assert result.returncode == 78
    assert result.stderr.strip().splitlines() == [
        f"postroom-fixture: refusing to run as root: set 'user' (for example user: postroom) in "
        f"{etc / 'postroom.yaml'}"]


def test_port_in_use_is_one_line_and_exit_71(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        etc = fixture_config(tmp_path, plain_listener(port))
        result = subprocess.run([sys.executable, "-m", MODULE, "--config", str(etc)], capture_output=True,
                                text=True, cwd=str(ROOT), timeout=30)
    assert result.returncode == 71, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"postroom-fixture: cannot listen on 127.0.0.1:{port}")
    assert "Traceback" not in result.stderr


def test_help_names_the_flags():
    result = subprocess.run([sys.executable, "-m", MODULE, "--help"], capture_output=True, text=True,
                            cwd=str(ROOT), timeout=30)
    assert result.returncode == 0
    for flag in ("--config DIR", "--pidfile PATH", "SIGTERM", "SIGHUP"):
        assert flag in result.stdout


def test_sigterm_lets_the_session_in_flight_finish(tmp_path):
    port = free_port()
    etc = fixture_config(tmp_path, plain_listener(port) + "slow_delay: 1s\n", core_extra="shutdown_grace: 20s\n")
    daemon = start(etc, port)
    try:
        busy, idle = Client(port), Client(port)
        busy.sock.sendall(b"SLOW\r\n")
        time.sleep(0.2)
        daemon.signal(signal.SIGTERM)
        assert idle.readline() == "421 shutting down"  # idle sessions are asked to leave
        wait_for(lambda: _refused(port), timeout=5, what="the listener to close")
        assert busy.readline() == "250 slow done"  # the work in flight completes
        assert busy.readline() == "421 shutting down"
        assert daemon.proc.wait(10) == 0
        assert "SIGTERM: no new connections; 2 in flight" in daemon.output()
    finally:
        daemon.kill()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except OSError:
        return True


def test_sigterm_grace_is_bounded(tmp_path):
    port = free_port()
    etc = fixture_config(tmp_path, plain_listener(port) + "slow_delay: 60s\n", core_extra="shutdown_grace: 1s\n")
    daemon = start(etc, port)
    try:
        client = Client(port)
        client.sock.sendall(b"SLOW\r\n")
        time.sleep(0.2)
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert daemon.proc.wait(10) == 0
        assert time.monotonic() - started < 5
        assert client.file.read() == b""  # closed, the slow command never answered
        assert "1 sessions still open after 1.0s; closing them" in daemon.output()
    finally:
        daemon.kill()


def test_sighup_calls_reload_on_services(tmp_path):
    port = free_port()
    daemon = start(fixture_config(tmp_path, plain_listener(port)), port)
    try:
        client = Client(port)
        assert client.ask("RELOADS") == "250 reloads=0"
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: client.ask("RELOADS") == "250 reloads=1", timeout=5, what="the reload")
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: client.ask("RELOADS") == "250 reloads=2", timeout=5, what="the second reload")
        client.close()
        assert daemon.stop() == 0
        assert daemon.output().count("SIGHUP: reloading") == 2
    finally:
        daemon.kill()


# -- logging ----------------------------------------------------------------------

def _log_config(**kw):
    from common.config.core import LogConfig

    return LogConfig(**kw)


def _emit(observer, namespace="test", **context):
    from common.log import ContextLogger

    return ContextLogger(namespace, observer=observer, **context)


def test_log_line_format_and_level_filter():
    from common.log import make_observer

    out = io.StringIO()
    observer = make_observer(_log_config(level="info"), "mta", stream=out)
    log = _emit(observer, session="S1")
    log.debug("not shown")
    log.info("connection from {ip}", ip="192.0.2.1")
    log.bind(queue_id="Q42").warn("deferred: {why}", why="timeout")
    lines = out.getvalue().splitlines()
    pid = os.getpid()
    assert lines == [f"mta[{pid}]: session=S1 connection from 192.0.2.1",
                     f"mta[{pid}]: session=S1 queue_id=Q42 warn: deferred: timeout"]


def test_log_redacts_passwords_and_bodies():
    from common.log import make_observer

    out = io.StringIO()
    log = _emit(make_observer(_log_config(level="debug"), "imapd", stream=out), session="S2")
    log.info("login {user} {password}", user="alice@example.test", password="hunter2")
    log.info("data {body} {message_body} {secret} {pass}", body=b"Subject: private",
             message_body="private text", secret="s3cr3t", **{"pass": "pw"})
    text = out.getvalue()
    assert "hunter2" not in text and "private" not in text and "s3cr3t" not in text and " pw" not in text
    assert "login alice@example.test <redacted>" in text
    assert "data <redacted> <redacted> <redacted> <redacted>" in text


def test_log_failure_and_newlines_stay_on_one_line():
    from common.log import make_observer

    out = io.StringIO()
    log = _emit(make_observer(_log_config(level="info"), "mda", stream=out))
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        log.failure("delivery failed for {rcpt}", rcpt="a@b\r\nInjected: yes")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    assert "delivery failed for a@b\\r\\nInjected: yes: ValueError: bad\\nthing" in lines[0]


def test_syslog_rfc3164_over_a_unix_datagram_socket(tmp_path):
    from common.log import make_observer

    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        cfg = _log_config(target="syslog", syslog_facility="mail", syslog_socket=path)
        log = _emit(make_observer(cfg, "pop3d"), session="S3")
        log.warn("too many errors from {ip}", ip="192.0.2.7")
        log.info("login {password}", password="hunter2")
        first, second = server.recv(9000).decode(), server.recv(9000).decode()
    finally:
        server.close()
    # <PRI> = facility mail (2) * 8 + severity warning (4) = 20; info (6) = 22
    assert first.startswith("<20>")
    stamp, rest = first[4:19], first[20:]
    assert time.strptime(stamp.replace("  ", " 0"), "%b %d %H:%M:%S")
    assert rest.split(" ", 1)[1] == f"postroom-pop3d[{os.getpid()}]: session=S3 warn: too many errors from 192.0.2.7"
    assert second.startswith("<22>") and "hunter2" not in second and "<redacted>" in second


ACTIVATE = """
import os, socket, sys
port, module, etc = int(sys.argv[1]), sys.argv[2], sys.argv[3]
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port))
s.listen()
os.dup2(s.fileno(), 3)  # what systemd does: the sockets start at fd 3
os.set_inheritable(3, True)
os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()), LISTEN_FDNAMES="smtp")
os.execv(sys.executable, [sys.executable, "-m", module, "--config", etc])
"""


def test_systemd_socket_activation_endpoint(tmp_path):
    """A listener `systemd:domain=INET:name=smtp` adopts the socket systemd passes (here
    passed the way systemd does it: fd 3, LISTEN_FDS, LISTEN_PID, LISTEN_FDNAMES)."""
    port = free_port()
    etc = fixture_config(tmp_path, "listeners:\n  main:\n    endpoint: systemd:domain=INET:name=smtp\n    tls: none\n")
    log = open(tmp_path / "out.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", ACTIVATE, str(port), MODULE, str(etc)], cwd=str(ROOT),
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: b"postroom-fixture started" in (tmp_path / "out.log").read_bytes() or proc.poll() is not None,
                 timeout=20, what="the daemon to start")
        client = Client(port)
        assert client.ask("PEER") == "250 127.0.0.1"
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, (tmp_path / "out.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()


def test_daemon_logs_to_syslog_when_configured(tmp_path):
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(10)
    port = free_port()
    etc = fixture_config(tmp_path, plain_listener(port),
                         core_extra=f"log:\n  target: syslog\n  syslog_facility: local3\n  syslog_socket: {path}\n")
    daemon = start(etc, port)
    try:
        messages = []
        deadline = time.monotonic() + 10
        while not any("postroom-fixture started" in m for m in messages) and time.monotonic() < deadline:
            messages.append(server.recv(9000).decode())
        started = next(m for m in messages if "postroom-fixture started" in m)
        # local3 (19) * 8 + info (6) = 158
        assert started.startswith("<158>") and f"postroom-fixture[{daemon.proc.pid}]: " in started
        assert daemon.stop() == 0
        assert "postroom-fixture started" not in daemon.output()  # not on stderr as well
    finally:
        daemon.kill()
        server.close()


def test_daemon_uses_postroom_config_without_config_flag(tmp_path):
    """A real daemon (postroom-imapd) started with only POSTROOM_CONFIG set, no --config,
    reads that folder: it listens on the port written there and greets with its hostname."""
    from tests.support.config import base_config

    etc = base_config(tmp_path, core_extra="")
    core = etc / "postroom.yaml"
    core.write_text(core.read_text().replace("hostname: mail.example.test", "hostname: from-env.example.test"))
    port = free_port()
    (etc / "imapd.yaml").write_text(f"listeners:\n  imap:\n    endpoint: tcp:{port}:interface=127.0.0.1\n"
                                    "    tls: starttls\n")
    log = open(tmp_path / "imapd.log", "wb")
    env = {k: v for k, v in os.environ.items() if k != "POSTROOM_CONFIG"}
    proc = subprocess.Popen([sys.executable, "-m", "imapd.main"], stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(ROOT), env={**env, "POSTROOM_CONFIG": str(etc)})
    try:
        from tests.support import wait_for_port

        wait_for_port(port, proc=proc)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            greeting = s.makefile("rb").readline()
        assert greeting.startswith(b"* OK") and b"from-env.example.test" in greeting, greeting
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        log.close()
    assert "Traceback" not in (tmp_path / "imapd.log").read_text()
