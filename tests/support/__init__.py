"""Test support shared by every package's tests: ports, required tools, config
directories, a raw line client, and daemons run as real processes.

Under CI=true a missing tool or peer is a failure, never a skip (`require`).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
ROOT = Path(__file__).resolve().parents[2]


def require(condition: bool, what: str) -> None:
    """Skip when a peer or tool is missing on a developer machine; fail under CI=true."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"required for this test but missing under CI: {what}")
    pytest.skip(f"missing: {what}")


def require_tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    require(path is not None, f"the program {name!r} (see .ci/run for the package)")
    return path  # type: ignore[return-value]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


def wait_for(predicate, timeout: float = 10.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class LineSocket:
    """A TCP connection to host: exact bytes out, CRLF-terminated lines in."""

    def __init__(self, port: int, timeout: float, host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line, without its CRLF."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed by the server; buffered {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def close(self) -> None:
        self.sock.close()


class Daemon:
    """A postroom daemon run as its own process: `python -m PACKAGE.main --config DIR`."""

    def __init__(self, module: str, config_dir: Path, *args: str, env: dict | None = None):
        self.module = module
        self.config_dir = config_dir
        self.args = args
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.log_path = config_dir / f"{module.replace('.', '_')}.log"

    def start(self, wait_ports: tuple[int, ...] = (), timeout: float = 20.0) -> "Daemon":
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", self.module, "--config", str(self.config_dir), *self.args],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, cwd=str(ROOT),
        )
        for port in wait_ports:
            wait_for_port(port, timeout=timeout, proc=self.proc)
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self.log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def run_json_script(script: str, *args: str, timeout: float = 60) -> dict:
    """Run `python -c script args...` from the project's root (a fresh reactor each
    time) and return the JSON object on the last line it printed."""
    import json
    import sys
    result = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True,
                            timeout=timeout, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])
