"""postroom-dev, the thing an administrator tries first: the configuration it writes
passes `postroom-config check`; --password tells the truth on an existing sandbox;
and one whole run as an unprivileged user (no root needed): every listener on its
exact port (base + offset) on 127.0.0.1, LMTP on a socket inside DIR, the users and
password it prints work for IMAP over STARTTLS and for submission with STARTTLS and
AUTH, a message submitted reaches alice's maildir, and SIGTERM stops it all."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import sys
import tempfile
import time
from email.message import EmailMessage
from pathlib import Path

import pytest

from common.config import DAEMONS
from common.config.core import SandboxContext
from common.config.loader import load_file
from tests.common.daemons import tls_context
from tests.support import IN_CI, ROOT, require, require_tool, wait_for, wait_for_port

NOBODY = 65534


def dev(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "common.tools.dev", *args], capture_output=True, text=True,
                          cwd=str(ROOT), timeout=120)


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
    assert (etc / "users").stat().st_mode & 0o077 == 0

    # Run again: nothing duplicated; a new offset rewrites the daemon files.
    result = dev("--no-start", "--dir", str(sandbox), "--users", "4", "--port-offset", "1000", "--password", "s3cret")
    assert result.returncode == 0, result.stderr
    names = [line.split(":")[0] for line in (etc / "users").read_text().splitlines()]
    assert len(names) == len(set(names)) == 7
    written = {name for name, (filename, _) in DAEMONS.items() if (etc / filename).exists()}
    if "mta" in written:
        assert f"tcp:{2525 + 1000}:interface=127.0.0.1" in (etc / "mta.yaml").read_text()


def test_password_of_an_existing_sandbox_is_the_one_in_effect(tmp_path):
    """The password printed is the one that works: a sandbox made with one password and
    started with another (or with none: postroom) has its users' password changed, and
    says so; the same password again changes nothing."""
    from common.passwords import verify_password
    from common.users import UserDB

    sandbox = tmp_path / "sb"
    users_file = sandbox / "etc" / "postroom" / "users"

    def passwords_ok(password: str) -> bool:
        db = UserDB(users_file)
        return all(verify_password(db.lookup(f"{n}@example.test").password, password)
                   for n in ("demo", "alice", "bob", "user1", "user2"))

    made = dev("--no-start", "--dir", str(sandbox), "--users", "2")
    assert made.returncode == 0, made.stderr
    assert "another password" not in made.stdout and passwords_ok("postroom")
    (users_file.parent / "users").write_text(users_file.read_text() + "carol@example.test:{PLAIN}mine::::/x::\n")

    changed = dev("--no-start", "--dir", str(sandbox), "--password", "n3w-pass")
    assert changed.returncode == 0, changed.stderr
    assert f"postroom-dev: 5 existing users in {users_file} had another password; now: n3w-pass" in changed.stdout
    assert passwords_ok("n3w-pass") and not passwords_ok("postroom")
    assert "carol@example.test:{PLAIN}mine::::/x::" in users_file.read_text()  # not a sandbox user: kept
    assert users_file.stat().st_mode & 0o077 == 0

    before = users_file.read_bytes()
    same = dev("--no-start", "--dir", str(sandbox), "--password", "n3w-pass")
    assert same.returncode == 0 and "another password" not in same.stdout
    assert users_file.read_bytes() == before

    back = dev("--no-start", "--dir", str(sandbox))
    assert "5 existing users" in back.stdout and "now: postroom" in back.stdout
    assert passwords_ok("postroom")


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


#: daemon -> listener -> the SandboxContext port name it must use
EXPECTED_LISTENERS = {
    "mta": {"smtp": "smtp", "submission": "submission", "submissions": "submissions"},
    "imapd": {"imap": "imap", "imaps": "imaps"},
    "pop3d": {"pop3": "pop3", "pop3s": "pop3s"},
}


def reachable_by_others(path: str) -> bool:
    """Whether a user with no rights of its own can run path (every folder on the way
    searchable by others)."""
    real = Path(os.path.realpath(path))
    return all(p.stat().st_mode & 0o001 for p in real.parents) and real.stat().st_mode & 0o001 != 0


def unprivileged_command(directory: Path) -> tuple[list[str], dict[str, str], int]:
    """How to run Python as nobody (as root: setpriv, with directory handed to nobody),
    the environment for it, and the uid the sandbox will have. Not root: as we are.

    The venv's interpreter is used when nobody can run it (a fresh Debian's venv
    points at /usr/bin/python3). A venv made from an interpreter under a private home
    (pyenv in /root) cannot be run by nobody; then the system's python3 of the same
    version runs with the venv's packages on PYTHONPATH."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    if os.geteuid() != 0:
        return [sys.executable], env, os.geteuid()
    setpriv = require_tool("setpriv")
    os.chown(directory, NOBODY, NOBODY)
    python = sys.executable
    if not reachable_by_others(python):
        import site

        python = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
        require(os.path.exists(python) and reachable_by_others(python),
                f"{sys.executable} cannot be run by nobody, and {python} is missing")
        env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *site.getsitepackages()])
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", python], env, NOBODY


def maildir_messages(sandbox: Path, user: str) -> list[bytes]:
    new = sandbox / "mail" / "example.test" / user / "Maildir" / "new"
    cur = new.parent / "cur"
    return [p.read_bytes() for d in (new, cur) if d.is_dir() for p in d.iterdir()]


def test_sandbox_run_as_an_unprivileged_user(tmp_path):
    require(os.geteuid() == 0 or not IN_CI, "root, to run the sandbox as nobody (CI runs as root)")
    # nobody must reach DIR: pytest's tmp_path lives in a folder only root may enter.
    base = Path(tempfile.mkdtemp(prefix="postroom-sandbox-", dir="/tmp"))
    python, env, uid = unprivileged_command(base)
    sandbox, offset, password = base / "sb", free_offset(), "pw-" + os.urandom(4).hex()
    ctx = SandboxContext(sandbox, offset)
    log_path = tmp_path / "dev.log"
    log = open(log_path, "w+")
    proc = subprocess.Popen([*python, "-m", "common.tools.dev", "--dir", str(sandbox),
                             "--port-offset", str(offset), "--password", password],
                            stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), start_new_session=True, env=env)
    try:
        output = log_path.read_text
        wait_for(lambda: "Ctrl-C stops everything" in output() or proc.poll() is not None,
                 timeout=60, what="postroom-dev to start")
        etc = sandbox / "etc" / "postroom"
        started = [n for n in ("mda", "mta", "imapd", "pop3d") if (ROOT / n / "main.py").exists()]
        assert started == ["mda", "mta", "imapd", "pop3d"]
        for name in started:
            wait_for(lambda: f"postroom-{name} started" in output() or proc.poll() is not None,
                     timeout=60, what=f"{name} to start")
            # The runner logs the uid it runs with: the unprivileged one, no root anywhere.
            assert re.search(rf"postroom-{name} started \(pid \d+, uid {uid}\)", output()), output()
            assert f"{name:<6}| {name}[" in output()  # its lines, prefixed with its name
        text = output()

        # Every listener on its exact port, loopback only, and listening.
        for daemon, expected in EXPECTED_LISTENERS.items():
            filename, schema = DAEMONS[daemon]
            listeners = load_file(etc / filename, schema).listeners
            assert set(listeners) == set(expected), (daemon, set(listeners))
            for name, port_name in expected.items():
                port = ctx.port(port_name)
                assert port == SandboxContext.BASE_PORTS[port_name] + offset
                assert str(listeners[name].endpoint) == f"tcp:{port}:interface=127.0.0.1"
                assert f"127.0.0.1:{port}" in text  # and the tool printed it
                wait_for_port(port, timeout=30, proc=proc)

        # LMTP on a unix socket inside DIR, the daemon user's, speaking LMTP.
        lmtp = load_file(etc / "mda.yaml", DAEMONS["mda"][1]).listeners["lmtp"]
        assert str(lmtp.endpoint) == f"unix:{sandbox / 'run' / 'lmtp.sock'}:mode=660"
        assert ctx.lmtp_socket == sandbox / "run" / "lmtp.sock" and str(ctx.lmtp_socket) in text
        st = ctx.lmtp_socket.stat()
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == uid
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(ctx.lmtp_socket))
            greeting = s.recv(512)
            assert greeting.startswith(b"220 ") and b"LMTP" in greeting, greeting
            s.sendall(b"QUIT\r\n")

        # The users and the password it printed.
        assert (f"users: demo@example.test, alice@example.test, bob@example.test   password: {password}"
                in text), text

        # IMAP with STARTTLS, as a mail client does it.
        imap = imaplib.IMAP4("127.0.0.1", ctx.port("imap"), timeout=15)
        imap.starttls(tls_context())
        imap.login("alice@example.test", password)
        assert imap.select("INBOX")[0] == "OK"

        # Submission with STARTTLS and AUTH, to alice, through the MTA and the MDA.
        subject = "sandbox " + os.urandom(6).hex()
        msg = EmailMessage()
        msg["From"], msg["To"], msg["Subject"] = "demo@example.test", "alice@example.test", subject
        msg.set_content("Hello from the sandbox test.\n")
        with smtplib.SMTP("127.0.0.1", ctx.port("submission"), timeout=15) as smtp:
            smtp.starttls(context=tls_context())
            smtp.login("demo@example.test", password)
            assert smtp.send_message(msg) == {}
        wait_for(lambda: any(subject.encode() in m for m in maildir_messages(sandbox, "alice")),
                 timeout=60, what="the message in alice's maildir")
        imap.noop()
        assert imap.select("INBOX")[1] == [b"1"]  # and IMAP sees it
        imap.logout()

        stopped_at = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert time.monotonic() - stopped_at < 20
        text = output()
        assert "dev   | stopping" in text
        assert text.rsplit("dev   | stopped: ", 1)[1].splitlines()[0] == "mda 0, mta 0, imapd 0, pop3d 0"
        assert "Traceback" not in text, text
        for port_name in SandboxContext.BASE_PORTS:
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", ctx.port(port_name))) != 0
    finally:
        stop_sandbox(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def children(pid: int) -> list[int]:
    """The processes whose parent is pid (the sandbox's daemons)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat_line = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat_line.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def stop_sandbox(proc: subprocess.Popen) -> None:
    """After a failed test: SIGTERM (the sandbox stops its daemons), else kill them all."""
    if proc.poll() is not None:
        return
    daemons = children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    for pid in daemons:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.parametrize("flag", ["--users", "--port-offset"])
def test_bad_numbers_are_refused(tmp_path, flag):
    result = dev("--no-start", "--dir", str(tmp_path / "sb"), flag, "-1")
    assert result.returncode == 2 and "must be between" in result.stderr
    assert not (tmp_path / "sb").exists()
