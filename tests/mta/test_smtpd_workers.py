"""Several receiving processes sharing the listening sockets (receive_processes)."""

from __future__ import annotations

import os
import signal
import smtplib
import subprocess
import time

from tests.support import wait_for

from .smtpd_fixture import queue_id_of, start_mta

MSG = b"From: a@example.org\r\nSubject: workers\r\n\r\nHello.\r\n"


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def send(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.ehlo()
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        code, text = s.data(MSG)
    assert code == 250
    return queue_id_of(text)


def test_two_receiving_processes_restart_and_stop(tmp_path):
    inst = start_mta(tmp_path, extra_yaml="receive_processes: 2\n")
    parent = inst.daemon.proc.pid
    try:
        workers = wait_for(lambda: len(children(parent)) == 2 and children(parent), timeout=15, what="two workers")
        ids = {send(inst.ports["mx"]) for _ in range(6)}
        assert ids <= inst.queued_ids()
        log = inst.daemon.output()
        wait_for(lambda: all(f"mta[{w}]: postroom-mta started" in inst.daemon.output() for w in workers),
                 timeout=15, what="workers started")
        assert "queued from" in log
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(children(parent)) == 2 and workers[0] not in children(parent), timeout=15,
                 what="the killed worker replaced")
        assert send(inst.ports["mx"]) in inst.queued_ids()
        current = children(parent)
    finally:
        assert inst.daemon.stop() == 0
    for pid in current:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
