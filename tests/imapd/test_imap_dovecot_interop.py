"""Dovecot interoperability: a maildir Dovecot made (its dovecot-uidlist and
dovecot-keywords) is served by postroom with the same UIDs, UIDVALIDITY and
keywords, and a postroom maildir is read by Dovecot the same way.

Dovecot (Debian's dovecot-imapd) runs as a normal process with a configuration
written here: loopback port, maildir at the users' homes, passwd-file auth."""

from __future__ import annotations

import imaplib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import Daemon, free_port, require, require_tool, wait_for_port
from tests.support.config import base_config

from .conftest import write_imapd_yaml

NOBODY = 65534
USERS = {"alice@example.test": "postroom", "bob@example.test": "postroom"}
MSG = b"From: x@example.test\r\nSubject: %s\r\nMessage-ID: <%s@example.test>\r\n\r\nbody %s\r\n"


def dovecot_conf(work: Path, port: int, passwd: Path) -> Path:
    conf = work / "dovecot.conf"
    conf.write_text(f"""\
base_dir = {work}/run
state_dir = {work}/state
log_path = {work}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = 0
mail_location = maildir:~/Maildir
mail_privileged_group =
default_internal_user = dovecot
default_login_user = dovenull
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {passwd}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
""")
    return conf


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """postroom-imapd and Dovecot on the same users' maildirs."""
    dovecot = require_tool("dovecot")
    require(os.geteuid() == 0, "root, to run Dovecot as a normal process with its own users")
    tmp = tmp_path_factory.mktemp("interop")
    etc = base_config(tmp, users=USERS)
    work = Path(tempfile.mkdtemp(prefix="dc"))  # short: Dovecot's socket paths are bounded
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads the passwd file
    for sub in ("run", "state"):
        (work / sub).mkdir()
    # Dovecot will not serve mail as root: its mail processes run as "nobody", so the
    # homes live in a folder it can reach and belong to it (postroom runs as root here
    # and reads them either way).
    passwd = work / "passwd"
    lines = []
    ours = []
    for entry in (etc / "users").read_text().splitlines():
        name, hashed, _uid, _gid, _gecos, _home, *rest = entry.split(":")
        local, _, domain = name.partition("@")
        home = work / "home" / local
        home.mkdir(parents=True)
        os.chown(home, NOBODY, NOBODY)
        lines.append(f"{name}:{{PLAIN}}{USERS[name]}:{NOBODY}:{NOBODY}::{home}::")
        ours.append(":".join([name, hashed, "", "", "", str(home), *rest]))
    passwd.write_text("\n".join(lines) + "\n")
    (etc / "users").write_text("\n".join(ours) + "\n")
    dc_port = free_port()
    conf = dovecot_conf(work, dc_port, passwd)
    dc = subprocess.Popen([dovecot, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    port, tls_port = free_port(), free_port()
    write_imapd_yaml(etc, port, tls_port)
    imapd = Daemon("imapd.main", etc)
    try:
        wait_for_port(dc_port, proc=dc, timeout=20)
        imapd.start(wait_ports=(port,))
        yield {"dovecot": dc_port, "postroom": port, "home": work / "home"}
    finally:
        dc.terminate()
        try:
            dc.wait(10)
        except subprocess.TimeoutExpired:
            dc.kill()
        log = (work / "dovecot.log").read_text(errors="replace") if (work / "dovecot.log").exists() else ""
        shutil.rmtree(work, ignore_errors=True)
        code = imapd.stop()
        assert code == 0, imapd.output()
        assert "Traceback" not in imapd.output()
        assert "Error:" not in log and "Panic" not in log, log


def login(port: int, user: str) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    c.login(user, "postroom")
    return c


def snapshot(c: imaplib.IMAP4, mailbox: str = "INBOX") -> tuple[int, dict[int, tuple[bytes, frozenset]]]:
    """(UIDVALIDITY, {uid: (Message-ID, keywords and flags without \\Recent)})."""
    typ, _ = c.select(mailbox, readonly=True)
    assert typ == "OK"
    validity = int(c.response("UIDVALIDITY")[1][0])
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    out = {}
    for item in data:
        if not isinstance(item, tuple):
            continue
        uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
        flags = frozenset(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).split()) - {b"\\Recent"}
        out[uid] = (re.search(rb"<([^>]+)>", item[1]).group(1), flags)
    c.close()
    return validity, out


def hand_over(home: Path) -> None:
    """What an administrator does when Dovecot takes over: the files belong to the
    mail user Dovecot runs as."""
    for path in [home, *home.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)


def fill(c: imaplib.IMAP4) -> None:
    """Messages with flags and keywords, one expunged so the UIDs have a gap."""
    c.create("Work")
    for i, flags in enumerate([r"(\Seen $Label1)", r"(\Flagged Project-X)", None, r"($Label1 Junk \Answered)"]):
        typ, _ = c.append("INBOX", flags, None, MSG % (b"m%d" % i, b"m%d" % i, b"%d" % i))
        assert typ == "OK"
    c.append("Work", r"(\Draft Ideas)", None, MSG % (b"w", b"w", b"w"))
    c.select("INBOX")
    c.store("3", "+FLAGS", r"(\Deleted)")
    c.expunge()
    c.store("1", "+FLAGS", "(Later)")
    c.close()


def test_dovecot_maildir_served_by_postroom(both):
    dc = login(both["dovecot"], "alice@example.test")
    fill(dc)
    before = snapshot(dc), snapshot(dc, "Work")
    dc.logout()
    maildir = both["home"] / "alice" / "Maildir"
    assert (maildir / "dovecot-uidlist").exists() and (maildir / "dovecot-keywords").exists()
    assert sorted(before[0][1]) == [1, 2, 4]
    pr = login(both["postroom"], "alice@example.test")
    after = snapshot(pr), snapshot(pr, "Work")
    pr.logout()
    assert after == before
    assert b"Project-X" in after[0][1][2][1] and b"Later" in after[0][1][1][1]


def test_postroom_maildir_read_by_dovecot(both):
    pr = login(both["postroom"], "bob@example.test")
    fill(pr)
    before = snapshot(pr), snapshot(pr, "Work")
    pr.logout()
    assert sorted(before[0][1]) == [1, 2, 4]
    hand_over(both["home"] / "bob")
    dc = login(both["dovecot"], "bob@example.test")
    after = snapshot(dc), snapshot(dc, "Work")
    typ, data = dc.list('""', "*")
    dc.logout()
    assert after == before
    assert any(b'"Work"' in d or d.endswith(b" Work") for d in data), data
