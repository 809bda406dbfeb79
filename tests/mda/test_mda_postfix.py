"""A real Postfix (Debian's package), configured by the test on loopback ports,
delivers to postroom once through LMTP (virtual_transport = lmtp:unix:...) and once
through postroom-deliver as a pipe transport; both messages arrive."""

from __future__ import annotations

import os
import shutil
import smtplib
import tempfile
from pathlib import Path

import pytest

from tests.mda.mda_support import MESSAGE
from tests.mda.postfix_instance import PostfixInstance
from tests.support import Daemon, wait_for
from tests.support.config import base_config


def _chown_tree(path: Path, uid: int, gid: int) -> None:
    for dirpath, dirs, files in os.walk(path):
        os.chown(dirpath, uid, gid)
        for name in files:
            os.chown(os.path.join(dirpath, name), uid, gid)


@pytest.fixture
def world():
    yield from _world()


#: mail for nobody@local.example.test goes to Postfix's local(8), which runs
#: postroom-deliver as its mailbox_command with nobody's privileges, for bob
MAILBOX_COMMAND = """
mydestination = local.example.test
local_recipient_maps =
mailbox_command = {postroom_deliver} -f "$SENDER" -a "$RECIPIENT" -d bob@example.test
"""


def _world(main_extra: str = ""):
    # Not pytest's tmp_path: Postfix's pipe runs as nobody, who cannot enter a 0700 folder.
    base = Path(tempfile.mkdtemp(prefix="postroom-postfix-"))
    os.chmod(base, 0o755)
    users = {"alice@example.test": "postroom", "bob@example.test": "postroom"}
    etc = base_config(base, users=users)
    sock = base / "run" / "lmtp.sock"
    (etc / "mda.yaml").write_text(f"consumer:\n  enabled: false\nlisteners:\n  lmtp:\n"
                                  f"    endpoint: unix:{sock}:mode=666\n    tls: none\n")
    for sub in ("etc", "run"):
        os.chmod(base / sub, 0o755)
    postfix = PostfixInstance(base, etc, sock, main_extra)
    uid, gid = postfix.pipe_uid
    # bob's mail arrives through the pipe, which runs as nobody: his folder is nobody's.
    (base / "mail" / "example.test" / "bob").mkdir(parents=True)
    for sub in ("mail", "state", "spool"):
        _chown_tree(base / sub, uid, gid)
        os.chmod(base / sub, 0o755)
    os.chmod(base / "mail" / "example.test", 0o777)   # alice's arrives through the root-run daemon
    mda = Daemon("mda.main", etc).start()
    try:
        wait_for(sock.exists, timeout=20, what="the LMTP socket")
        postfix.start()
    except BaseException:
        mda.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        yield base, postfix, mda
    finally:
        postfix.stop()
        mda.stop()
        shutil.rmtree(base, ignore_errors=True)


def maildir_files(base: Path, user: str) -> list[Path]:
    new = base / "mail" / "example.test" / user / "Maildir" / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def test_postfix_delivers_through_lmtp_and_through_the_pipe(world):
    base, postfix, mda = world
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        assert client.sendmail("sender@remote.test", ["alice@example.test"],
                               MESSAGE.replace(b"Subject: hello", b"Subject: via lmtp")) == {}
        assert client.sendmail("sender@remote.test", ["bob@example.test"],
                               MESSAGE.replace(b"Subject: hello", b"Subject: via pipe")) == {}
    try:
        [lmtp_copy] = wait_for(lambda: maildir_files(base, "alice"), timeout=60, what="the LMTP delivery")
        [pipe_copy] = wait_for(lambda: maildir_files(base, "bob"), timeout=60, what="the pipe delivery")
    except TimeoutError:
        raise AssertionError(postfix.log()[-3000:] + mda.output()[-2000:]) from None
    a = lmtp_copy.read_bytes()
    assert b"Subject: via lmtp" in a and a.startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test")
    b = pipe_copy.read_bytes()
    assert b"Subject: via pipe" in b and b.startswith(b"Return-Path: <sender@remote.test>\nDelivered-To: bob@example.test\n")
    assert pipe_copy.stat().st_uid == postfix.pipe_uid[0]
    # Postfix logs each delivery as sent (the pipe's line may come a moment after the file).
    wait_for(lambda: postfix.log().count("status=sent") >= 2, timeout=20, what="both deliveries logged")
    log = postfix.log()
    assert "relay=postroom, " in log and "250 2.0.0 Delivered" in log


@pytest.fixture
def mailbox_command_world():
    yield from _world(MAILBOX_COMMAND)


def test_postroom_deliver_as_mailbox_command_and_its_temporary_failure(mailbox_command_world):
    """Postfix's local(8) runs postroom-deliver as mailbox_command: exit 75 (here bob's
    maildir is a file) makes Postfix defer the message, not bounce it; once the
    problem is gone, Postfix's retry delivers it."""
    base, postfix, _mda = mailbox_command_world
    bob = base / "mail" / "example.test" / "bob" / "Maildir"
    bob.write_text("not a maildir")
    uid, gid = postfix.pipe_uid
    os.chown(bob, uid, gid)
    with smtplib.SMTP("127.0.0.1", postfix.port, timeout=30) as client:
        assert client.sendmail("sender@remote.test", ["nobody@local.example.test"],
                               MESSAGE.replace(b"Subject: hello", b"Subject: via local")) == {}
    try:
        wait_for(lambda: "status=deferred" in postfix.log(), timeout=60, what="the deferral")
    except TimeoutError:
        raise AssertionError(postfix.log()[-3000:]) from None
    log = postfix.log()
    assert "relay=local" in log and "4.3.0" in log and "status=bounced" not in log
    bob.unlink()
    postfix.flush()
    try:
        [f] = wait_for(lambda: maildir_files(base, "bob"), timeout=60, what="the delivery after the retry")
    except TimeoutError:
        raise AssertionError(postfix.log()[-3000:]) from None
    data = f.read_bytes()
    assert b"Subject: via local" in data
    assert data.startswith(b"Return-Path: <sender@remote.test>\nDelivered-To: nobody@local.example.test\n")
    assert f.stat().st_uid == uid
    wait_for(lambda: "status=sent" in postfix.log(), timeout=20, what="the delivery logged")
