"""A throwaway Postfix instance (Debian's postfix package) for the MDA tests: its own
configuration, queue and log under a temporary folder, SMTP on a loopback port,
nothing else listening. Mail for example.test goes to postroom over LMTP on a unix
socket, except bob@example.test's, which goes through a pipe transport running
postroom-deliver.

Postfix runs its pipe transport as an unprivileged user (here `nobody`), so the
folder it delivers into, and the Python that runs postroom-deliver, must be
reachable by that user: the test uses the system python3 (the same minor version as
the venv) with the checkout and the venv's site-packages on PYTHONPATH."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sysconfig
import time
from pathlib import Path

from tests.support import ROOT, free_port, require, require_tool, wait_for_port

MASTER_CF = """\
{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
postroom  unix  -       n       n       -       -       pipe
  flags=q user={pipe_user} argv=/usr/bin/env PYTHONPATH={pythonpath} {python} -m mda.deliver -c {etc} -f ${{sender}} -a ${{recipient}} -d ${{user}}@example.test
"""

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {base}/queue
data_directory = {base}/data
meta_directory = /etc/postfix
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {base}/postfix.log
maillog_file_prefixes = {base}
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = postfix.example.test
mydomain = example.test
myorigin = postfix.example.test
mydestination =
mynetworks = 127.0.0.0/8
relayhost =
alias_maps =
alias_database =
smtputf8_enable = no
biff = no
virtual_mailbox_domains = example.test
virtual_transport = lmtp:unix:{lmtp_socket}
transport_maps = inline:{{ bob@example.test=postroom }}
smtpd_recipient_restrictions = permit_mynetworks, reject
lmtp_destination_recipient_limit = 50
"""


class PostfixInstance:
    def __init__(self, base: Path, etc: Path, lmtp_socket: Path, main_extra: str = ""):
        """main_extra is appended to main.cf; {postroom_deliver} in it becomes the
        command that runs postroom-deliver with this test's configuration."""
        require_tool("postfix")
        require(Path("/usr/lib/postfix/sbin/master").exists(), "Debian's postfix package")
        require(os.geteuid() == 0, "root, to start a Postfix instance")
        self.base = base
        self.port = free_port()
        self.conf = base / "postfix"
        self.conf.mkdir(parents=True)
        self.pipe_user = "nobody"
        site = sysconfig.get_paths()["purelib"]
        python = shutil.which("python3", path="/usr/bin:/bin") or "/usr/bin/python3"
        command = f"/usr/bin/env PYTHONPATH={ROOT}:{site} {python} -m mda.deliver -c {etc}"
        (self.conf / "main.cf").write_text(MAIN_CF.format(base=base, lmtp_socket=lmtp_socket)
                                           + main_extra.replace("{postroom_deliver}", command))
        (self.conf / "master.cf").write_text(MASTER_CF.format(
            port=f"127.0.0.1:{self.port}", pipe_user=self.pipe_user, pythonpath=f"{ROOT}:{site}", python=python,
            etc=etc))

    def start(self) -> "PostfixInstance":
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        (self.base / "queue").mkdir(mode=0o755, exist_ok=True)
        data = self.base / "data"
        data.mkdir(mode=0o700, exist_ok=True)
        pw = pwd.getpwnam("postfix")
        os.chown(data, pw.pw_uid, pw.pw_gid)
        for command in ("check", "start"):
            p = subprocess.run(["postfix", "-c", str(self.conf), command], env=env, capture_output=True, timeout=60)
            assert p.returncode == 0, f"postfix {command}: {p.stderr.decode()}{p.stdout.decode()}{self.log()[-2000:]}"
        wait_for_port(self.port, timeout=30)
        return self

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=60)
        # master exits a moment after "stop"; wait so the next test does not race it.
        pid_file = self.base / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + 15
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                os.kill(int(pid_file.read_text().split()[0]), 0)
            except (ProcessLookupError, ValueError, OSError):
                break
            time.sleep(0.1)

    def flush(self) -> None:
        """Retry every deferred message now (postqueue -f)."""
        env = {**os.environ, "MAIL_CONFIG": str(self.conf)}
        subprocess.run(["postqueue", "-c", str(self.conf), "-f"], env=env, capture_output=True, timeout=60)

    def log(self) -> str:
        try:
            return (self.base / "postfix.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def pipe_uid(self) -> tuple[int, int]:
        pw = pwd.getpwnam(self.pipe_user)
        return pw.pw_uid, pw.pw_gid
