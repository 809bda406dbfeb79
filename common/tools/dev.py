"""postroom-dev -- a complete mail system on 127.0.0.1 for trying postroom out; no root.

    postroom-dev [--dir DIR] [--password PW] [--users N] [--port-offset N] [--no-start]

Creates, if missing, a configuration in DIR (default ./postroom-dev): etc/postroom/
with postroom.yaml, one file per daemon (each daemon schema's `sandbox_yaml()`), a
self-signed certificate, a user file with demo@, alice@ and bob@example.test, and
with --users N also user1..userN for load tests; and the spool, mail, state and run
folders. The sandbox's users have the password "postroom" unless --password says
otherwise, on every start: users already in DIR with another password get the one
in effect (and the tool says so), so the password printed is always the right one. Then it starts every daemon
that exists as its own process, prints how to connect, shows each daemon's log lines
prefixed with its name, and on Ctrl-C or SIGTERM stops them all and exits. A daemon
that dies is reported, not restarted. --port-offset N shifts every port so two
sandboxes can run side by side; --no-start only writes the configuration.

SECURITY: for development only: everything listens on 127.0.0.1, the certificate is
self-signed, and the demo passwords are printed on the terminal.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pwd
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from common.config import DAEMONS
from common.config.core import SandboxContext

DEMO_USERS = ("demo", "alice", "bob")
DOMAIN = "example.test"
DEFAULT_PASSWORD = "postroom"
#: Start order: the delivery agent first, so the MTA finds LMTP ready.
START_ORDER = ("mda", "mta", "imapd", "pop3d")
STOP_TIMEOUT = 10.0


def postroom_yaml(ctx: SandboxContext) -> str:
    d = ctx.dir
    return f"""\
# postroom-dev sandbox: everything on 127.0.0.1, every path under {d}.
hostname: localhost
local_domains: [{DOMAIN}]
# the sandbox runs as whoever starts it; the runner refuses root without a user
user: {pwd.getpwuid(os.geteuid()).pw_name}
paths:
  spool: {d / 'spool'}
  mail: {d / 'mail'}
  state: {d / 'state'}
  run: {d / 'run'}
tls:
  certificate: cert.pem
  key: key.pem
log:
  target: stderr
  level: info
auth:
  users_file: users
  # short delays after a failed login, for quick experiments
  failure_delay: 0.2s
  max_failure_delay: 2s
shutdown_grace: 5s
"""


def user_line(name: str, password: str, home: Path, scheme: str) -> str:
    from common.passwords import hash_password

    # Dovecot passwd-file: user:password:uid:gid:gecos:home:shell:extra
    return f"{name}:{hash_password(password, scheme)}::::{home}::"


def _is_load_user(name: str) -> bool:
    local, _, domain = name.partition("@")
    return domain == DOMAIN and local.startswith("user") and local[4:].isdigit()


def write_users(path: Path, mail_dir: Path, password: str, load_users: int) -> int:
    """Give the sandbox's users password: add the demo users and user1..userN that the
    file does not have yet, and set it for those it has with another one (the demo
    users one by one; the load-test users, made together, all when user1's differs).
    Returns how many users the file had with another password."""
    from common.passwords import hash_password, verify_password

    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    index = {line.split(":", 1)[0]: i for i, line in enumerate(lines) if ":" in line and not line.startswith("#")}

    def stored(name: str) -> str:
        return lines[index[name]].split(":")[1]

    stale = [f"{u}@{DOMAIN}" for u in DEMO_USERS
             if f"{u}@{DOMAIN}" in index and not verify_password(stored(f"{u}@{DOMAIN}"), password)]
    load_present = sorted((n for n in index if _is_load_user(n)), key=lambda n: int(n.partition("@")[0][4:]))
    if load_present and not verify_password(stored(load_present[0]), password):
        stale += load_present
    for name in stale:
        fields = lines[index[name]].split(":")
        fields[1] = hash_password(password, _scheme(name))
        lines[index[name]] = ":".join(fields)

    wanted = [f"{u}@{DOMAIN}" for u in DEMO_USERS] + [f"user{i}@{DOMAIN}" for i in range(1, load_users + 1)]
    added = [user_line(name, password, mail_dir / DOMAIN / name.split("@")[0], _scheme(name))
             for name in wanted if name not in index]
    if stale or added:
        lines += added
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return len(stale)


def _scheme(name: str) -> str:
    # The load-test users get a fast scheme so that creating thousands takes seconds.
    return "SHA512-CRYPT" if _is_load_user(name) else "ARGON2ID"


def _write_if_missing(path: Path, text: str) -> bool:
    if path.exists():
        return False
    path.write_text(text)
    return True


def daemon_modules() -> dict[str, object]:
    """daemon name -> its config module, for those that define sandbox_yaml()."""
    found = {}
    for name in DAEMONS:
        module = importlib.import_module(f"common.config.{name}")
        if hasattr(module, "sandbox_yaml"):
            found[name] = module
    return found


def has_main(name: str) -> bool:
    try:
        return importlib.util.find_spec(f"{name}.main") is not None
    except ImportError:
        return False


#: Remembers the port offset the daemon files were written with.
OFFSET_FILE = ".sandbox-port-offset"


def stored_offset(directory: Path) -> int | None:
    try:
        return int((directory.absolute() / "etc" / "postroom" / OFFSET_FILE).read_text().strip())
    except (OSError, ValueError):
        return None


def create(directory: Path, password: str, load_users: int, port_offset: int) -> tuple[Path, list[str], int]:
    """Write whatever is missing of the sandbox and give its users password; return
    (config folder, daemons configured, how many existing users got the password).

    The daemon files are written again when the port offset changed since they were
    written (they are generated; edit the generator, not the files)."""
    from common.selfsigned import make_self_signed

    directory = directory.absolute()
    etc = directory / "etc" / "postroom"
    etc.mkdir(parents=True, exist_ok=True)
    for sub in ("spool", "mail", "state", "run"):
        (directory / sub).mkdir(exist_ok=True)
    ctx = SandboxContext(directory, port_offset)
    _write_if_missing(etc / "postroom.yaml", postroom_yaml(ctx))
    if not (etc / "cert.pem").exists() or not (etc / "key.pem").exists():
        make_self_signed(etc / "cert.pem", etc / "key.pem", "localhost")
    changed = write_users(etc / "users", directory / "mail", password, load_users)
    rewrite = stored_offset(directory) not in (None, port_offset)
    configured = []
    for name, module in daemon_modules().items():
        path = etc / DAEMONS[name][0]
        if rewrite and path.exists():
            path.unlink()
        _write_if_missing(path, module.sandbox_yaml(ctx))
        configured.append(name)
    (etc / OFFSET_FILE).write_text(f"{port_offset}\n")
    if "mta" in configured:
        _write_if_missing(etc / "aliases", f"postmaster: demo@{DOMAIN}\nabuse: demo@{DOMAIN}\n")
    return etc, configured, changed


def how_to_connect(ctx: SandboxContext, etc: Path, running: list[str], users: list[str], password: str) -> str:
    p = ctx.port
    rows: list[tuple[str, str, str]] = []
    if "mta" in running:
        rows += [
            ("SMTP (MX)", f"127.0.0.1:{p('smtp')}", f"swaks --server 127.0.0.1:{p('smtp')} --to demo@{DOMAIN}"),
            ("submission", f"127.0.0.1:{p('submission')}",
             f"swaks --server 127.0.0.1:{p('submission')} -tls --auth-user demo@{DOMAIN} "
             f"--auth-password {password} --to alice@{DOMAIN}"),
            ("submissions", f"127.0.0.1:{p('submissions')}",
             f"openssl s_client -quiet -connect 127.0.0.1:{p('submissions')}"),
        ]
    if "mda" in running:
        rows.append(("LMTP", str(ctx.lmtp_socket), ""))
    if "imapd" in running:
        rows += [
            ("IMAP", f"127.0.0.1:{p('imap')}",
             f"python3 -c \"import imaplib, ssl; m=imaplib.IMAP4('127.0.0.1',{p('imap')}); "
             f"m.starttls(ssl._create_unverified_context()); "
             f"m.login('demo@{DOMAIN}','{password}'); print(m.select())\""),
            ("IMAPS", f"127.0.0.1:{p('imaps')}", f"openssl s_client -quiet -connect 127.0.0.1:{p('imaps')}"),
        ]
    if "pop3d" in running:
        rows += [
            ("POP3", f"127.0.0.1:{p('pop3')}",
             f"openssl s_client -quiet -starttls pop3 -connect 127.0.0.1:{p('pop3')}"),
            ("POP3S", f"127.0.0.1:{p('pop3s')}", f"openssl s_client -quiet -connect 127.0.0.1:{p('pop3s')}"),
        ]
    lines = [f"postroom-dev: configuration in {etc}", ""]
    width = max((len(addr) for _, addr, _ in rows), default=0)
    lines += [f"  {label:<12} {addr:<{width}}  {example}".rstrip() for label, addr, example in rows]
    if not rows:
        lines.append("  (no daemon exists yet to start)")
    shown = users[:3] + ([f"... user{len(users) - 3}@{DOMAIN}"] if len(users) > 3 else [])
    lines += ["", f"  users: {', '.join(shown)}   password: {password}",
              "  (the certificate is self-signed: tell clients not to verify it)",
              "  Ctrl-C stops everything.", ""]
    return "\n".join(lines)


class Sandbox:
    """The daemons as child processes, their output prefixed, stopped together."""

    def __init__(self, etc: Path, names: list[str], out=None):
        self.etc = etc
        self.names = names
        self.out = out or sys.stdout
        self.procs: dict[str, subprocess.Popen] = {}
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []
        self.stopping = threading.Event()

    def say(self, prefix: str, line: str) -> None:
        with self.lock:
            self.out.write(f"{prefix:<6}| {line}\n")
            self.out.flush()

    def start(self) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop("POSTROOM_CONFIG", None)
        for name in self.names:
            proc = subprocess.Popen(
                [sys.executable, "-m", f"{name}.main", "--config", str(self.etc)],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
            self.procs[name] = proc
            thread = threading.Thread(target=self._pump, args=(name, proc), daemon=True)
            thread.start()
            self.threads.append(thread)

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            self.say(name, raw.decode("utf-8", "replace").rstrip("\n"))
        code = proc.wait()
        if not self.stopping.is_set():
            self.say(name, f"exited with status {code} (not restarted)")

    def alive(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.poll() is None]

    def stop(self) -> dict[str, int]:
        """SIGTERM to each, SIGKILL to any still running after STOP_TIMEOUT seconds."""
        self.stopping.set()
        for name in reversed(self.names):
            proc = self.procs.get(name)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        for name, proc in self.procs.items():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say("dev", f"{name} did not stop within {STOP_TIMEOUT:g}s; killing it")
                proc.kill()
                proc.wait(5)
        for thread in self.threads:
            thread.join(2)
        return {name: proc.returncode for name, proc in self.procs.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postroom-dev", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", default="postroom-dev", type=Path,
                        help="sandbox folder, created if missing (default: ./postroom-dev)")
    parser.add_argument("--password", default=DEFAULT_PASSWORD,
                        help="password of the sandbox's users, set on every start, also for users "
                             "DIR already has (default: postroom)")
    parser.add_argument("--users", type=int, default=0, metavar="N",
                        help="also create user1..userN@example.test for load tests")
    parser.add_argument("--port-offset", type=int, default=None, metavar="N",
                        help="add N to every port, to run two sandboxes side by side "
                             "(default: the offset DIR was created with, else 0)")
    parser.add_argument("--no-start", action="store_true", help="only write the configuration")
    args = parser.parse_args(argv)
    if not 0 <= args.users <= 100_000:
        parser.error("--users must be between 0 and 100000")
    if args.port_offset is None:
        args.port_offset = stored_offset(args.dir) or 0
    if not 0 <= args.port_offset <= 60_000:
        parser.error("--port-offset must be between 0 and 60000")

    etc, configured, changed = create(args.dir, args.password, args.users, args.port_offset)
    if changed:
        print(f"postroom-dev: {changed} existing user{'s' if changed > 1 else ''} in {etc / 'users'} "
              f"had another password; now: {args.password}", flush=True)
    ctx = SandboxContext(args.dir.absolute(), args.port_offset)
    names = [n for n in START_ORDER if n in configured and has_main(n)]
    users = [f"{u}@{DOMAIN}" for u in DEMO_USERS] + [f"user{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    if args.no_start:
        print(f"postroom-dev: configuration written to {etc}")
        return 0

    stop_requested = threading.Event()

    def on_signal(signum, _frame):
        stop_requested.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    print(how_to_connect(ctx, etc, names, users, args.password), flush=True)
    sandbox = Sandbox(etc, names)
    sandbox.start()
    try:
        while not stop_requested.is_set() and sandbox.alive():
            stop_requested.wait(0.2)
    finally:
        if not sandbox.alive() and names:
            sandbox.say("dev", "every daemon has exited")
        sandbox.say("dev", "stopping")
        codes = sandbox.stop()
    sandbox.say("dev", "stopped: " + (", ".join(f"{n} {c}" for n, c in codes.items()) or "nothing was running"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
