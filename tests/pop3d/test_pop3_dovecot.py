"""Dovecot and postroom on the same maildir: UIDLs equal to Dovecot's for a maildir
Dovecot made (so users moving over are not served every message again), and Dovecot
reading a maildir postroom made with the same UIDLs, sizes and keywords.

Dovecot runs in its standalone ("preauth") mode: /usr/lib/dovecot/imap and pop3 on
stdin/stdout with a minimal configuration, as an unprivileged user (Dovecot refuses
mail access as root)."""

from __future__ import annotations

import os
import poplib
import pwd
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from common.storage import INBOX, MailStore
from tests.support import require

from .pop3_fixtures import PASSWORD, maildir, pop3d_config, start

DOVECOT = Path("/usr/lib/dovecot")
USER = "demo@example.test"


class Dovecot:
    def __init__(self, tmp_path: Path, mail: Path):
        require((DOVECOT / "pop3").exists() and (DOVECOT / "imap").exists(),
                "Dovecot's imap and pop3 (Debian packages dovecot-imapd, dovecot-pop3d)")
        self.dir = tmp_path / "dovecot"
        (self.dir / "run").mkdir(parents=True)
        (self.dir / "state").mkdir()
        self.mail = mail
        self.home = mail.parent
        self.home.mkdir(parents=True, exist_ok=True)
        self.account = pwd.getpwnam("nobody") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
        (self.dir / "dovecot.conf").write_text(f"""\
protocols =
log_path = {self.dir}/dovecot.log
base_dir = {self.dir}/run
state_dir = {self.dir}/state
mail_location = maildir:{mail}
ssl = no
mail_uid = {self.account.pw_uid}
mail_gid = {self.account.pw_gid}
first_valid_uid = 0
first_valid_gid = 0
pop3_uidl_format = %08Xu%08Xv
""")

    def run(self, program: str, script: bytes) -> str:
        for path in (self.dir, self.home):
            subprocess.run(["chown", "-R", f"{self.account.pw_uid}:{self.account.pw_gid}", str(path)], check=True)
        prefix = ["runuser", "-u", self.account.pw_name, "--"] if os.geteuid() == 0 else []
        env = ["env", f"USER={self.account.pw_name}", f"HOME={self.home}"]
        out = subprocess.run([*prefix, *env, str(DOVECOT / program), "-c", str(self.dir / "dovecot.conf")],
                             input=script, capture_output=True, timeout=30)
        text = out.stdout.decode("utf-8", "replace")
        assert out.returncode == 0 and "Fatal" not in text, text + out.stderr.decode() + self.log()
        return text

    def log(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text()
        except OSError:
            return ""

    def append(self, messages: list[tuple[bytes, str]]) -> None:
        script = b""
        for i, (data, flags) in enumerate(messages):
            script += f"a{i} APPEND INBOX ({flags}) {{{len(data)}+}}\r\n".encode() + data + b"\r\n"
        out = self.run("imap", script + b"z LOGOUT\r\n")
        assert out.count(" OK [APPENDUID") == len(messages), out

    def pop3(self) -> tuple[list[str], list[str], list[bytes]]:
        out = self.run("pop3", b"UIDL\r\nLIST\r\nQUIT\r\n")
        blocks = out.split("\r\n.\r\n")
        uidl = [line for line in blocks[0].split("\r\n")[1:] if line]
        sizes = [line for line in blocks[1].split("\r\n")[1:] if line]
        return uidl, sizes, []

    def imap_flags(self) -> dict[int, set[str]]:
        out = self.run("imap", b"a SELECT INBOX\r\nb FETCH 1:* (UID FLAGS)\r\nz LOGOUT\r\n")
        flags = {}
        for m in re.finditer(r"\* \d+ FETCH \((?:UID (\d+) FLAGS \(([^)]*)\)|FLAGS \(([^)]*)\) UID (\d+))\)", out):
            uid = int(m.group(1) or m.group(4))
            flags[uid] = set((m.group(2) or m.group(3) or "").split()) - {"\\Recent"}
        return flags


@pytest.fixture
def shared_tmp():
    """A folder Dovecot's unprivileged user can reach (pytest's own is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="postroom-dovecot-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


MESSAGES = [
    (b"Subject: one\r\n\r\nfirst\r\n", "\\Seen"),
    (b"Subject: two\r\n\r\n.leading dot\r\nsecond\r\n", "$Forwarded Work"),
    (b"Subject: three\r\n\r\nthird\r\n", ""),
]


def ours(port: int) -> tuple[list[str], list[str], list[bytes]]:
    client = poplib.POP3("127.0.0.1", port, timeout=10)
    client.user(USER)
    client.pass_(PASSWORD)
    uidl = [line.decode() for line in client.uidl()[1]]
    sizes = [line.decode() for line in client.list()[1]]
    bodies = [b"\r\n".join(client.retr(i)[1]) + b"\r\n" for i in range(1, len(uidl) + 1)]
    client.rset()
    client.close()  # no QUIT: leave the flags as they are
    return uidl, sizes, bodies


def test_uidl_equal_to_dovecot_for_a_dovecot_maildir(shared_tmp):
    tmp_path = shared_tmp
    etc, pop3, pop3s = pop3d_config(tmp_path)
    mail = maildir(tmp_path, USER)
    dovecot = Dovecot(tmp_path, mail)
    dovecot.append(MESSAGES)
    their_uidl, their_sizes, _ = dovecot.pop3()
    assert len(their_uidl) == 3 and all(re.fullmatch(r"\d [0-9a-f]{16}", u) for u in their_uidl)
    daemon = start(etc, pop3, pop3s)
    try:
        our_uidl, our_sizes, bodies = ours(pop3)
    finally:
        daemon.stop()
    assert our_uidl == their_uidl
    assert our_sizes == their_sizes
    assert bodies == [data for data, _ in MESSAGES]
    box = MailStore(mail).open_mailbox(INBOX, readonly=True)
    assert [sorted(m.flags) for m in box.messages] == [["\\Seen"], ["$Forwarded", "Work"], []]


def test_dovecot_reads_a_postroom_maildir_the_same_way(shared_tmp):
    tmp_path = shared_tmp
    etc, pop3, pop3s = pop3d_config(tmp_path)
    mail = maildir(tmp_path, USER)
    store = MailStore(mail)
    for data, _ in MESSAGES:
        store.deliver(data.replace(b"\r\n", b"\n"))  # as an MTA hands it over: LF endings
    box = store.open_mailbox(INBOX)
    box.store([2], ["$Forwarded", "Work"], "add")
    box.store([1], ["\\Seen"], "add")
    daemon = start(etc, pop3, pop3s)
    try:
        our_uidl, our_sizes, _ = ours(pop3)
    finally:
        daemon.stop()
    dovecot = Dovecot(tmp_path, mail)
    their_uidl, their_sizes, _ = dovecot.pop3()
    assert their_uidl == our_uidl
    assert their_sizes == our_sizes
    assert dovecot.imap_flags() == {1: {"\\Seen"}, 2: {"$Forwarded", "Work"}, 3: set()}
    # And the UIDs Dovecot knows are ours: a new message gets UID 4 from whichever comes next.
    dovecot.append([(b"Subject: four\r\n\r\n4\r\n", "")])
    assert [m.uid for m in MailStore(mail).open_mailbox(INBOX).messages] == [1, 2, 3, 4]


def test_uidl_saved_by_dovecot_in_the_uidlist_is_served_as_is(tmp_path):
    """Dovecot keeps the UIDL of mail migrated from another server in dovecot-uidlist
    (the P field); clients must see that same value from us."""
    from tests.common.test_storage_dovecot import make_dovecot_maildir
    etc, pop3, pop3s = pop3d_config(tmp_path)
    make_dovecot_maildir(maildir(tmp_path, USER))
    daemon = start(etc, pop3, pop3s)
    try:
        uidl, sizes, _ = ours(pop3)
    finally:
        daemon.stop()
    v = 1700000000
    assert uidl == [f"1 {5:08x}{v:08x}", f"2 {7:08x}{v:08x}", f"3 {9:08x}{v:08x}", "4 0000abcd"]
    assert sizes[:3] == ["1 130", "2 210", "3 305"]
