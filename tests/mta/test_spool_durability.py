"""No mail is lost: SIGKILL in the middle of DATA, every 250 in the spool after a
restart, leftovers cleaned at start, and a full disk answered with 452."""

from __future__ import annotations

import os
import smtplib
import subprocess
import time

import pytest

from common import spool as spoolmod
from tests.support import require, wait_for_port

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
