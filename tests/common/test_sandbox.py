"""postroom-dev: the configuration it writes passes `postroom-config check`, and a short
start and stop with a port offset starts whatever daemons exist and stops them cleanly."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from common.config import DAEMONS
from common.config.core import SandboxContext
from common.config.loader import load_file
from tests.support import ROOT, wait_for, wait_for_port


def dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.tools.dev", *args], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=60)


def test_no_start_writes_a_configuration_that_checks(tmp_path):
    sandbox = tmp_path / "sb"
    result = dev("--no-start", "--dir", str(sandbox), "--users", "3", "--password", "s3cret")
    assert result.returncode == 0, result.stderr
    etc = sandbox / "etc" / "postroom"
    check = subprocess.run([sys.executable, "-m", "common.tools.configtool", "check", "--config", str(etc)],
                           capture_output=True, text=True, cwd=str(ROOT), timeout=60)
    assert (check.returncode, check.stdout, check.stderr) == (0, "configuration OK\n", "")
    for sub in ("spool", "mail", "state", "run"):
        assert (sandbox / sub).is_dir()

    from common.config import load
    from common.passwords import verify_password
    from common.users import UserDB

    cfg = load(etc)
    assert cfg.core.hostname == "localhost" and cfg.core.local_domains == ("example.test",)
    assert cfg.core.paths.spool == sandbox / "spool" and cfg.core.log.target == "stderr"
    users = UserDB(etc / "users")
    for name in ("demo", "alice", "bob", "user1", "user2", "user3"):
        record = users.lookup(f"{name}@example.test")
        assert record is not None, name
        assert record.home == sandbox / "mail" / "example.test" / name
    assert verify_password(users.lookup("demo@example.test").password, "s3cret")
    assert verify_password(users.lookup("user3@example.test").password, "s3cret")
    assert users.lookup("user4@example.test") is None
    assert (etc / "key.pem").stat().st_mode & 0o077 == 0

    # Run again: nothing duplicated; a new offset rewrites the daemon files.
    result = dev("--no-start", "--dir", str(sandbox), "--users", "4", "--port-offset", "1000")
    assert result.returncode == 0, result.stderr
    names = [line.split(":")[0] for line in (etc / "users").read_text().splitlines()]
    assert len(names) == len(set(names)) == 7
    written = {name for name, (filename, _) in DAEMONS.items() if (etc / filename).exists()}
    if "mta" in written:
        assert f"tcp:{2525 + 1000}:interface=127.0.0.1" in (etc / "mta.yaml").read_text()


def tcp_ports(etc: Path, daemon: str) -> list[int]:
    filename, schema = DAEMONS[daemon]
    cfg = load_file(etc / filename, schema)
    ports = [lst.endpoint.port for lst in getattr(cfg, "listeners", {}).values()]
    return [p for p in ports if p]


def free_offset() -> int:
    """An offset for which every sandbox port is free on 127.0.0.1."""
    for offset in range(31000, 60000, 997):
        try:
            for port in SandboxContext.BASE_PORTS.values():
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port + offset))
            return offset
        except OSError:
            continue
    raise RuntimeError("no free port range")


def test_start_and_stop_with_a_port_offset(tmp_path):
    sandbox = tmp_path / "sb"
    offset = free_offset()
    log = open(tmp_path / "dev.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "common.tools.dev", "--dir", str(sandbox),
                             "--port-offset", str(offset)], stdout=log, stderr=subprocess.STDOUT,
                            cwd=str(ROOT), start_new_session=True)
    try:
        output = lambda: (tmp_path / "dev.log").read_text()  # noqa: E731
        wait_for(lambda: "Ctrl-C stops everything" in output() or proc.poll() is not None,
                 timeout=30, what="postroom-dev to start")
        etc = sandbox / "etc" / "postroom"
        started = [n for n in DAEMONS if (ROOT / n / "main.py").exists() and (etc / DAEMONS[n][0]).exists()]
        ports = [p for n in started for p in tcp_ports(etc, n)]
        assert all(p > offset for p in ports)
        for port in ports:
            wait_for_port(port, timeout=30, proc=proc)
        for name in started:
            wait_for(lambda: f"postroom-{name} started" in output(), timeout=30, what=f"{name} to start")
            assert f"{name:<6}| {name}[" in output()  # its lines, prefixed with its name

        started_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert time.monotonic() - started_at < 15
        text = output()
        assert "dev   | stopping" in text
        stopped = text.rsplit("dev   | stopped: ", 1)[1].splitlines()[0]
        assert stopped == (", ".join(f"{n} 0" for n in ("mda", "mta", "imapd", "pop3d") if n in started)
                           or "nothing was running"), text
        for port in ports:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", port)) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        log.close()
