"""postroom-queue (and mailq): list, show, hold, release, delete and flush, on a real
spool, with the queue manager running where an action needs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common.spool import DEFERRED, Recipient, Spool, status_record
from tests.support import wait_for

from .queue_sink import Sink, mta_config, spool_files, spool_message, start_queue

BIN = Path(sys.executable).parent


def tool(etc, *args, name="postroom-queue"):
    return subprocess.run([BIN / name, "-C", etc, *args], capture_output=True, timeout=30)


def deferred_message(spool_root: Path, rcpt: str, reason: str = "connect to mx: Connection refused") -> str:
    """A message as the manager leaves it after a failed attempt: in deferred/ with a
    status record, its next attempt an hour away."""
    qid = spool_message(spool_root, "alice@example.test", [Recipient(rcpt), Recipient("done@remote.test")])
    spool = Spool(spool_root)
    path = spool.move(qid, "incoming", "deferred")
    later = time.time() + 3600
    spool.append_status(path, [status_record(0, DEFERRED, status="4.4.1", reason=reason, next_attempt=later),
                               status_record(1, "delivered", status="2.0.0", reason="ok")])
    os.utime(path, (later, later))
    return qid


def test_list_show_hold_release_delete(tmp_path):
    etc = mta_config(tmp_path, "tls: none")
    spool = tmp_path / "spool"
    r = tool(etc, "list")
    assert r.returncode == 0 and b"Mail queue is empty" in r.stdout
    a = deferred_message(spool, "bob@remote.test")
    b = deferred_message(spool, "carol@remote.test", "host mx said: 451 4.7.1 greylisted")
    r = tool(etc, "list")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert a in out and b in out and "alice@example.test" in out
    assert "bob@remote.test" in out and "(connect to mx: Connection refused)" in out
    assert "greylisted" in out and "done@remote.test" not in out
    assert "in 2 Requests." in out
    # mailq is the same program under another name.
    link = tmp_path / "mailq"
    link.symlink_to(BIN / "postroom-queue")
    r = subprocess.run([link, "-C", etc], capture_output=True, timeout=30)
    assert r.returncode == 0 and a in r.stdout.decode()
    rows = json.loads(tool(etc, "list", "--json").stdout)
    assert [m["queue_id"] for m in rows] == [a, b]
    assert rows[0]["recipients"][0]["state"] == "deferred" and rows[0]["recipients"][1]["state"] == "delivered"

    r = tool(etc, "show", a)
    shown = json.loads(r.stdout)
    assert shown["queue"] == "deferred" and shown["sender"] == "alice@example.test"
    assert shown["recipients"][0]["reason"] == "connect to mx: Connection refused"
    r = tool(etc, "show", "--message", a)
    assert b"Hello." in r.stdout
    assert tool(etc, "show", "NOSUCHID").returncode == 67

    r = tool(etc, "hold", a)
    assert r.returncode == 0 and spool_files(spool, "hold") == [a]
    assert f"{a}!" in tool(etc, "list").stdout.decode()
    r = tool(etc, "release", "ALL")
    assert r.returncode == 0 and spool_files(spool, "incoming") == [a] and not spool_files(spool, "hold")
    r = tool(etc, "delete", a, "NOSUCHID")
    assert r.returncode == 67 and a not in spool_files(spool, "incoming")
    r = tool(etc, "delete", "ALL")
    assert r.returncode == 0 and not spool_files(spool, "deferred")
    assert tool(etc, "bogus").returncode == 64


def test_flush_forces_an_attempt_now(tmp_path):
    with Sink("127.0.0.3") as sink:
        etc = mta_config(tmp_path, f"""
            transports:
              "*": "smtp:[127.0.0.3]:{sink.port}"
            tls: none
            scan_interval: 1h
        """)
        spool = tmp_path / "spool"
        qid = deferred_message(spool, "bob@remote.test")
        q = start_queue(etc)
        try:
            time.sleep(1.5)
            assert not sink.messages and spool_files(spool, "deferred") == [qid]
            r = tool(etc, "flush")
            assert r.returncode == 0
            (got,) = sink.wait_for(1, timeout=10)
            assert got.recipients == ["bob@remote.test"]     # the delivered one is not sent again
            wait_for(lambda: not spool_files(spool, "deferred") and not spool_files(spool, "active"), 10,
                     what="the message removed")
            assert "flush requested" in q.output()
        finally:
            q.stop()
