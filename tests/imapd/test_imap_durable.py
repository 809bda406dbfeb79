"""APPEND and COPY are answered OK only once their syncfs(2) is done (Linux): the
core asks the glue for it (Sync) and holds the OK -- and the commands pipelined
behind it -- until synced(); a failed syncfs is a NO, never an OK. The glue's
GroupSyncfs has the process's filesystem helper (a child process) make the calls and
lets the sessions that wrote while one ran share the next, under the real reactor."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pytest

from common.fsutil import HAVE_SYNCFS
from common.storage import MailStore, StorageError
from imapd.protocol import ImapConnection, Settings, Sync
from tests.support import run_json_script

# On Linux syncfs(2) must be there (a missing one fails here); FreeBSD has none and
# APPEND fsyncs file, folder and uidlist itself (the storage tests cover that path).
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="syncfs(2) is Linux only; elsewhere APPEND fsyncs itself")


def test_linux_has_syncfs():
    assert HAVE_SYNCFS

MESSAGE = b"From: a@example.test\r\nSubject: durable\r\n\r\nbody\r\n"


@dataclass
class User:
    name: str

    def quota(self):
        return (None, None)


def connection(tmp_path) -> ImapConnection:
    root = tmp_path / "Maildir"
    MailStore(root).create_mailbox("Other")
    conn = ImapConnection(Settings(open_store=lambda user: MailStore(root), plaintext_allowed=lambda s: True,
                                   defer_sync=True))
    conn.logged_in(User("u"), "u")
    return conn


def text(outputs) -> bytes:
    return b"".join(x for x in outputs if isinstance(x, bytes))


def test_append_ok_and_pipelined_commands_wait_for_the_sync(tmp_path):
    conn = connection(tmp_path)
    out = conn.receive(b"a1 APPEND INBOX {%d+}\r\n%s\r\na2 NOOP\r\n" % (len(MESSAGE), MESSAGE))
    syncs = [x for x in out if isinstance(x, Sync)]
    assert len(syncs) == 1 and syncs[0].path == str(tmp_path / "Maildir")
    assert b"a1 " not in text(out) and b"a2 " not in text(out)
    assert conn.receive(b"a3 NOOP\r\n") == []  # still waiting: input is only buffered
    after = text(conn.synced())
    assert after.index(b"a1 OK [APPENDUID ") < after.index(b"a2 OK") < after.index(b"a3 OK")


def test_copy_waits_for_the_sync_and_a_failed_sync_is_a_no(tmp_path):
    conn = connection(tmp_path)
    out = conn.receive(b"a1 APPEND INBOX {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
    assert any(isinstance(x, Sync) for x in out)
    conn.synced()
    conn.receive(b"a2 SELECT INBOX\r\n")
    out = conn.receive(b"a3 COPY 1 Other\r\n")
    assert [x.path for x in out if isinstance(x, Sync)] == [str(tmp_path / "Maildir" / ".Other")]
    assert b"a3 " not in text(out)
    after = text(conn.synced(StorageError("syncfs: EIO")))
    assert b"a3 NO [UNAVAILABLE]" in after and b"COPYUID" not in after
    out = conn.receive(b"a4 COPY 1 Other\r\n")
    assert b"a4 OK [COPYUID " in text(out) + text(conn.synced())


GROUP = """
import json, os, sys
from twisted.internet import defer, task
from imapd.durable import GroupSyncfs

@defer.inlineCallbacks
def main(reactor, path):
    syncer = GroupSyncfs(reactor)
    fired = []
    first = syncer.sync(path)            # starts a call at once
    rest = [syncer.sync(path) for _ in range(9)]  # written meanwhile: share the next call
    for d in [first] + rest:
        d.addCallback(lambda _, i=len(fired): fired.append(1))
    yield defer.gatherResults([first] + rest)
    failed = []
    try:
        yield syncer.sync(os.path.join(path, "missing"))
    except OSError as e:
        failed.append(e.errno)
    print(json.dumps({"calls": syncer.calls, "fired": len(fired), "failed": failed}))

task.react(main, sys.argv[1:])
"""


def test_group_syncfs_shares_calls_under_the_reactor(tmp_path):
    got = run_json_script(GROUP, str(tmp_path))
    assert got["fired"] == 10
    assert got["calls"] == 3  # one for the first, one for the nine behind it, one for the missing path
    assert got["failed"] == [2]  # ENOENT reaches the caller
