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

from .queue_sink import mta_config, sink_scanned_hourly, spool_files, spool_message, start_queue

BIN = Path(sys.executable).parent


def tool(etc, *args, name="postroom-queue"):
    return subprocess.run([BIN / name, "-C", etc, *args], capture_output=True, timeout=30)


def deferred_message(spool_root: Path, rcpt: str, reason: str = "connect to mx: Connection refused") -> str:
    """A message as the manager leaves it after a failed attempt: in deferred/ with a
    status record, its next attempt an hour away."""
    # Made in hold/, where a running queue manager does not look, then moved when complete.
    qid = spool_message(spool_root, "alice@example.test", [Recipient(rcpt), Recipient("done@remote.test")],
                        queue="hold")
    spool = Spool(spool_root)
    path = spool.path("hold", qid)
    later = time.time() + 3600
    spool.append_status(path, [status_record(0, DEFERRED, status="4.4.1", reason=reason, next_attempt=later),
                               status_record(1, "delivered", status="2.0.0", reason="ok")])
    os.utime(path, (later, later))
    spool.move(qid, "hold", "deferred")
    return qid


def test_list_show_hold_release_delete_by_id_and_all(tmp_path):
    etc = mta_config(tmp_path, "tls: none")
    spool = tmp_path / "spool"
    r = tool(etc, "list")
    assert r.returncode == 0 and b"Mail queue is empty" in r.stdout
    a = deferred_message(spool, "bob@remote.test")
    b = deferred_message(spool, "carol@remote.test", "host mx said: 451 4.7.1 greylisted")
    c = deferred_message(spool, "dave@remote.test")
    r = tool(etc, "list")
    assert r.returncode == 0, r.stderr
    out = r.stdout.decode()
    assert a in out and b in out and "alice@example.test" in out
    assert "bob@remote.test" in out and "(connect to mx: Connection refused)" in out
    assert "greylisted" in out and "done@remote.test" not in out
    assert "in 3 Requests." in out
    # list by ID
    out = tool(etc, "list", b).stdout.decode()
    assert b in out and a not in out and "in 1 Request." in out
    r = tool(etc, "list", a, "NOSUCHID")
    assert r.returncode == 67 and a in r.stdout.decode() and b"NOSUCHID: no such message" in r.stderr
    # mailq is the same program under another name.
    link = tmp_path / "mailq"
    link.symlink_to(BIN / "postroom-queue")
    r = subprocess.run([link, "-C", etc], capture_output=True, timeout=30)
    assert r.returncode == 0 and a in r.stdout.decode() and c in r.stdout.decode()
    assert b"-Queue ID-" in r.stdout
    r = subprocess.run([link, "-C", etc, "--help"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"usage: mailq")
    rows = json.loads(tool(etc, "list", "--json").stdout)
    assert [m["queue_id"] for m in rows] == [a, b, c]
    assert rows[0]["recipients"][0]["state"] == "deferred" and rows[0]["recipients"][1]["state"] == "delivered"
    assert [m["queue_id"] for m in json.loads(tool(etc, "list", "--json", c).stdout)] == [c]

    # show: one ID gives an object, several or ALL an array
    shown = json.loads(tool(etc, "show", a).stdout)
    assert shown["queue"] == "deferred" and shown["sender"] == "alice@example.test" and shown["trace_id"]
    assert shown["recipients"][0]["reason"] == "connect to mx: Connection refused"
    assert b"Hello." in tool(etc, "show", "--message", a).stdout
    assert [d["queue_id"] for d in json.loads(tool(etc, "show", a, c).stdout)] == [a, c]
    assert [d["queue_id"] for d in json.loads(tool(etc, "show", "ALL").stdout)] == [a, b, c]
    assert tool(etc, "show", "NOSUCHID").returncode == 67

    # hold by ID, then ALL (the one already held is left as it is)
    r = tool(etc, "hold", a)
    assert r.returncode == 0 and spool_files(spool, "hold") == [a]
    assert f"{a}!" in tool(etc, "list").stdout.decode()
    r = tool(etc, "hold", "ALL")
    assert r.returncode == 0 and spool_files(spool, "hold") == [a, b, c] and not spool_files(spool, "deferred")
    assert b"2 messages on hold" in r.stderr
    # release by ID, then ALL: back to incoming/
    r = tool(etc, "release", b)
    assert r.returncode == 0 and spool_files(spool, "incoming") == [b] and spool_files(spool, "hold") == [a, c]
    r = tool(etc, "release", b)
    assert r.returncode == 0 and b"not on hold" in r.stderr
    assert tool(etc, "release", "NOSUCHID").returncode == 67
    r = tool(etc, "release", "ALL")
    assert r.returncode == 0 and spool_files(spool, "incoming") == [a, b, c] and not spool_files(spool, "hold")
    # delete by ID (with an unknown one: 67), then ALL
    r = tool(etc, "delete", a, "NOSUCHID")
    assert r.returncode == 67 and a not in spool_files(spool, "incoming")
    r = tool(etc, "delete", "ALL")
    assert r.returncode == 0 and not spool_files(spool, "incoming") and b"2 messages deleted" in r.stderr
    assert tool(etc, "bogus").returncode == 64


def _in_active(spool_root: Path, rcpt: str) -> str:
    """A message left in active/ as by a crash (no hand-off out for it)."""
    qid = spool_message(spool_root, "alice@example.test", [rcpt])
    Spool(spool_root).move(qid, "incoming", "active")
    return qid


def test_active_messages_are_reported_while_the_manager_runs_and_acted_on_when_it_does_not(tmp_path):
    etc = mta_config(tmp_path, "tls: none\nscan_interval: 1h")
    spool = tmp_path / "spool"
    later = deferred_message(spool, "bob@remote.test")          # due in an hour: stays in deferred/
    local = spool_message(spool, "alice@example.test",           # to the MDA (none runs): stays in active/
                          [Recipient("bob@example.test", mailbox="bob@example.test")])
    q = start_queue(etc)
    try:
        wait_for(lambda: spool_files(spool, "mda") and spool_files(spool, "active") == [local], 10,
                 what="the hand-off")
        r = tool(etc, "hold", "ALL")
        assert r.returncode == 75, r.stderr
        assert f"{local}: being delivered right now".encode() in r.stderr and b"1 message busy" in r.stderr
        assert spool_files(spool, "hold") == [later] and spool_files(spool, "active") == [local]
        r = tool(etc, "delete", local)
        assert r.returncode == 75 and spool_files(spool, "active") == [local]
        r = tool(etc, "delete", "ALL")
        assert r.returncode == 75 and not spool_files(spool, "hold") and spool_files(spool, "active") == [local]
    finally:
        q.stop()
    # No queue manager: active/ is the tool's to act on, except a message still at the MDA.
    crashed = _in_active(spool, "carol@remote.test")
    r = tool(etc, "hold", "ALL")
    assert r.returncode == 75
    assert f"{local}: its hand-off to the MDA is unanswered".encode() in r.stderr
    assert spool_files(spool, "hold") == [crashed] and spool_files(spool, "active") == [local]
    other = _in_active(spool, "dave@remote.test")
    r = tool(etc, "delete", other)
    assert r.returncode == 0 and spool_files(spool, "active") == [local]
    r = tool(etc, "delete", "ALL")
    assert r.returncode == 75 and not spool_files(spool, "hold") and spool_files(spool, "active") == [local]
    # The lock was given back: a queue manager starts.
    q = start_queue(etc)
    q.stop()


def test_flush_by_id_retries_only_that_message(tmp_path):
    with sink_scanned_hourly(tmp_path) as (sink, etc, spool):
        one = deferred_message(spool, "bob@remote.test")
        two = deferred_message(spool, "carol@remote.test")
        held = deferred_message(spool, "dave@remote.test")
        assert tool(etc, "hold", held).returncode == 0
        q = start_queue(etc)
        try:
            r = tool(etc, "flush", two)
            assert r.returncode == 0, r.stderr
            (got,) = sink.wait_for(1, timeout=10)
            assert got.recipients == ["carol@remote.test"]
            wait_for(lambda: spool_files(spool, "deferred") == [one] and not spool_files(spool, "active"), 10,
                     what="the flushed message removed")
            r = tool(etc, "flush", held)
            assert r.returncode == 67 and b"on hold; release it instead" in r.stderr
            assert tool(etc, "flush", "NOSUCHID").returncode == 67
            time.sleep(0.5)
            assert len(sink.messages) == 1 and spool_files(spool, "hold") == [held]
            assert tool(etc, "flush", "ALL").returncode == 0          # the rest, but not the held one
            sink.wait_for(2, timeout=10)
            assert sorted(r for m in sink.messages for r in m.recipients) == ["bob@remote.test",
                                                                              "carol@remote.test"]
        finally:
            q.stop()


def test_flush_forces_an_attempt_now(tmp_path):
    with sink_scanned_hourly(tmp_path) as (sink, etc, spool):
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
