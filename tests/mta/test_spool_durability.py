"""No mail is lost: SIGKILL in the middle of DATA, every 250 in the spool after a
restart, leftovers cleaned at start, and a full disk answered with 452."""

from __future__ import annotations

import os
import smtplib
import subprocess
import time

import pytest

from common import spool as spoolmod
from tests.support import require

from .smtpd_fixture import RawClient, queue_id_of, start_mta

MSG = b"From: a@example.org\r\nSubject: durable\r\n\r\nHello.\r\n"


def send(port: int, rcpt: str = "alice@example.test", body: bytes = MSG) -> tuple[int, bytes]:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        s.mail("a@example.org")
        s.rcpt(rcpt)
        return s.data(body)


def test_sigkill_during_data_loses_nothing_acknowledged(tmp_path):
    inst = start_mta(tmp_path)
    try:
        acked = []
        for i in range(5):
            code, text = send(inst.ports["mx"], rcpt="team@example.test" if i % 2 else "alice@example.test")
            assert code == 250
            acked.append(queue_id_of(text))
        c = RawClient(inst.ports["mx"])
        c.reply()
        c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
        assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
        c.send(b"Subject: half\r\n\r\n" + b"partial line\r\n" * 200)
        time.sleep(0.2)
        inst.daemon.proc.kill()
        inst.daemon.proc.wait(5)
        c.close()
        # A stale temporary file, as a crash during a spool write leaves it.
        stale = inst.spool.dir("tmp") / "0000DEADBEEF00000000000"
        stale.write_bytes(spoolmod.MAGIC + b"E 9999\n{")
        queued = inst.queued_ids()
        assert set(acked) <= queued
        assert len(queued) == len(acked)  # the interrupted message is nowhere
        for qid in queued:
            assert b"partial line" not in inst.find(qid).read_message()

        inst.daemon.start(wait_ports=(inst.ports["mx"],))
        assert not stale.exists()
        assert set(acked) <= inst.queued_ids()
        code, text = send(inst.ports["mx"])
        assert code == 250 and queue_id_of(text) not in acked
    finally:
        inst.daemon.stop()


@pytest.fixture
def tiny_spool(tmp_path):
    require(os.geteuid() == 0, "root, to mount a small tmpfs for the spool")
    spool = tmp_path / "spool"
    spool.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(spool)], check=True)
    try:
        yield spool
    finally:
        subprocess.run(["umount", "-l", str(spool)], check=False)


def test_disk_full_gives_452_and_leaves_nothing(tmp_path, tiny_spool):
    inst = start_mta(tmp_path, extra_yaml="limits:\n  max_message_size: 5M\n  max_text_line: 2000\n")
    try:
        big = MSG + (b"y" * 998 + b"\r\n") * 1500  # 1.5 MB on a 1 MB filesystem
        code, text = send(inst.ports["mx"], body=big)
        assert (code, text) == (452, b"4.3.1 Insufficient system storage")
        assert os.listdir(inst.spool.dir("tmp")) == []
        assert inst.queued_ids() == set()
        code, text = send(inst.ports["mx"])
        assert code == 250
        assert inst.queued_ids() >= {queue_id_of(text)}
    finally:
        inst.daemon.stop()


def test_directory_commit_groups_fsyncs_and_never_returns_early():
    import threading

    from mta.receiver import DirectoryCommit

    state = {"started": 0, "completed_covering": 0}
    lock = threading.Lock()
    fail_first = [True]

    def slow_sync():
        with lock:
            state["started"] += 1
            if fail_first[0]:
                fail_first[0] = False
                raise OSError(5, "simulated EIO")
        time.sleep(0.01)

    commit = DirectoryCommit(slow_sync)
    results = []

    def writer():
        try:
            commit.wait_durable()
            results.append("ok")
        except OSError:
            results.append("failed")

    threads = [threading.Thread(target=writer) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert results.count("failed") == 1       # only the leader whose fsync failed
    assert results.count("ok") == 39
    assert commit.fsyncs < 39                  # grouped: far fewer fsyncs than writers


_WRITER = """
import sys, time
from pathlib import Path
from common.spool import Envelope, Recipient, Spool
spool = Spool(Path(sys.argv[1]))
sys.stdin.readline()  # both processes start writing together
out = []
for _ in range(int(sys.argv[2])):
    before = time.time_ns()
    env = Envelope(sender="a@example.org", recipients=[Recipient("alice@example.test")])
    env.size = 3
    spool.write(env, [b"hi\\n"], "incoming", sync_dir=False)
    out.append(f"{env.queue_id} {before} {time.time_ns()}")
print("\\n".join(out))
"""


def test_queue_ids_unique_across_processes_and_sorted_by_arrival(tmp_path):
    """Two processes writing at the same time: no ID twice, and a message written
    after another finished has the larger ID (queue IDs sort by arrival)."""
    import sys

    from tests.support import ROOT

    spool = spoolmod.Spool(tmp_path / "spool", create=True)
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(spool.root), "300"], cwd=str(ROOT),
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    rows = []
    for p in procs:
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0
        rows += [(qid, int(before), int(after)) for qid, before, after in (line.split() for line in out.splitlines())]
    ids = [qid for qid, _, _ in rows]
    assert len(ids) == len(set(ids)) == 600
    assert sorted(spool.list("incoming")) == sorted(ids)
    assert os.listdir(spool.dir("tmp")) == []
    by_start = sorted(rows, key=lambda r: r[1])
    for i, (qid, _, after) in enumerate(by_start):
        for later, before, _ in by_start[i + 1:]:
            if before > after:
                assert later > qid, (qid, later)


def test_spool_write_never_replaces_a_queued_file(tmp_path):
    spool = spoolmod.Spool(tmp_path / "spool", create=True)
    first = spoolmod.Envelope(sender="a@example.org", recipients=[spoolmod.Recipient("alice@example.test")])
    spool.write(first, spoolmod.encode(first, b"first\r\n")[1:2])
    again = spoolmod.Envelope(sender="b@example.org", recipients=[spoolmod.Recipient("bob@example.test")],
                              queue_id=first.queue_id)
    with pytest.raises(FileExistsError):
        spool.write(again, spoolmod.encode(again, b"second\r\n")[1:2])
    kept = spoolmod.parse(spool.path("incoming", first.queue_id))
    assert kept.envelope.sender == "a@example.org" and kept.read_message() == b"first\r\n"
    assert os.listdir(spool.dir("tmp")) == []


def test_handoffs_of_several_messages_in_one_request_that_never_replaces_one(tmp_path):
    """The queue manager's hand-offs of messages loaded together: one request file in
    mda/, named by the first, that gives every hand-off back (its temporary name
    gone); a name already taken fails and leaves that file untouched; a request
    whose hand-off ID could name a path elsewhere does not parse."""
    spool = spoolmod.Spool(tmp_path / "spool", create=True)
    handoffs = [spoolmod.Handoff(f"Q{i}.b", f"Q{i}", f"/spool/active/Q{i}", [0, i]) for i in range(4)]
    path = spoolmod.write_handoffs(spool, handoffs)
    assert path == spool.path("mda", "Q0.b") and os.listdir(spool.dir("mda")) == ["Q0.b"]
    assert spoolmod.read_handoff_request("Q0.b", path.read_bytes()) == handoffs
    assert os.listdir(spool.dir("tmp")) == []
    # one hand-off alone is written as before (one JSON object)
    single = spoolmod.write_handoffs(spool, [spoolmod.Handoff("Q9.c", "Q9", "/spool/active/Q9", [0])])
    assert spoolmod.Handoff.from_json(single.read_bytes()).queue_id == "Q9"
    with pytest.raises(FileExistsError):
        spoolmod.write_handoffs(spool, [spoolmod.Handoff("Q0.b", "Q0", "/elsewhere", [1])] + handoffs[1:])
    assert spoolmod.read_handoff_request("Q0.b", path.read_bytes()) == handoffs
    assert os.listdir(spool.dir("tmp")) == []
    evil = spoolmod.handoff_request([handoffs[0], spoolmod.Handoff("../../x", "Q5", "/spool/active/Q5", [0])])
    for name, data in (("Q0.b", evil), ("Q1.b", path.read_bytes()), ("Q0.b", b"[]"), ("Q0.b", b'{"handoffs":[]}')):
        with pytest.raises((ValueError, TypeError, KeyError)):
            spoolmod.read_handoff_request(name, data)
