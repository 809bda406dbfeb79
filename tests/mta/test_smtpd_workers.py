"""Several receiving processes sharing the listening sockets (receive_processes)."""

from __future__ import annotations

import os
import re
import signal
import smtplib
import socket
import subprocess
import time

import pytest

from tests.support import wait_for

from .smtpd_fixture import RawClient, greeted, queue_id_of, start_mta

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
        workers = wait_for(lambda: accepting_workers(inst), timeout=20, what="two workers started")
        ids = {send(inst.ports["mx"]) for _ in range(6)}
        assert ids <= inst.queued_ids()
        assert "queued from" in inst.daemon.output()
        os.kill(workers[0], signal.SIGKILL)
        wait_for(lambda: len(children(parent)) == 2 and workers[0] not in children(parent), timeout=15,
                 what="the killed worker replaced")
        assert send(inst.ports["mx"]) in inst.queued_ids()
        current = children(parent)
    finally:
        assert inst.daemon.stop() == 0
    for pid in current:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


# -- limits counted for all receiving processes together (mta.clientlimits)

SHARED_LIMITS = """\
receive_processes: 2
limits:
  max_connections: 5
  max_connections_per_client: 3
  max_messages_per_client_per_minute: 3
"""


def _hex_ipv4(ip: str) -> str:
    return socket.inet_aton(ip)[::-1].hex().upper()


def owner(sock: socket.socket, pids: list[int]) -> int | None:
    """The receiving process holding the server side of sock (from /proc)."""
    cip, cport = sock.getsockname()
    sip, sport = sock.getpeername()
    local, remote = f"{_hex_ipv4(sip)}:{sport:04X}", f"{_hex_ipv4(cip)}:{cport:04X}"
    inode = None
    with open("/proc/net/tcp") as f:
        for row in f.read().splitlines()[1:]:
            fields = row.split()
            if fields[1] == local and fields[2] == remote:
                inode = fields[9]
    if inode is None:
        return None
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
        except OSError:
            continue
    return None


def on_both_workers(port: int, workers: list[int], count: int) -> list[RawClient]:
    """count greeted connections from 127.0.0.1, held by both receiving processes.
    Opened together: one at a time, the process that wakes first may take them all."""
    for _attempt in range(40):
        clients = [RawClient(port) for _ in range(count)]
        replies = [c.reply()[0] for c in clients]
        if replies == [220] * count:
            for c in clients:
                c.owner = wait_for(lambda c=c: owner(c.sock, workers), timeout=5, what="the connection's process")
            if len({c.owner for c in clients}) == 2:
                return clients
        for c in clients:  # all in one process, or some refused while earlier ones were counted off
            c.close()
        time.sleep(0.2)
    raise AssertionError("the connections never reached both receiving processes")


def accepting_workers(inst) -> list[int] | None:
    """The two live receiving processes that said they started, once there are two."""
    log = inst.daemon.output()
    pids = [int(p) for p in re.findall(r"receiving process (\d+) started", log)]
    live = [p for p in pids if f"mta[{p}]: postroom-mta started" in log and p in children(inst.daemon.proc.pid)]
    return live if len(live) == 2 else None


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    inst = start_mta(tmp_path_factory.mktemp("shared-limits"), extra_yaml=SHARED_LIMITS)
    inst.workers = wait_for(lambda: accepting_workers(inst), timeout=20, what="two workers accepting")
    time.sleep(0.5)  # let the start-up probe connections close
    yield inst
    inst.daemon.stop()


def test_connections_per_client_count_across_processes(shared):
    clients = on_both_workers(shared.ports["mx"], shared.workers, 3)
    extra = RawClient(shared.ports["mx"])
    assert extra.reply() == (421, "4.7.0 Too many connections from your address, try again later")
    extra.close()
    greeted(shared.ports["mx"], source="127.0.0.2").close()  # another address is not limited by these
    for c in clients:
        c.close()
    time.sleep(0.3)
    greeted(shared.ports["mx"]).close()


def test_connections_in_total_count_across_processes(shared):
    clients = on_both_workers(shared.ports["mx"], shared.workers, 3)
    for source in ("127.0.0.2", "127.0.0.3"):
        clients.append(greeted(shared.ports["mx"], source=source))
    extra = RawClient(shared.ports["mx"], source="127.0.0.4")
    assert extra.reply() == (421, "4.7.0 Too many connections, try again later")
    assert extra.closed_by_peer()
    for c in clients:
        c.close()


def test_messages_per_minute_count_across_processes(shared):
    first, second = on_both_workers(shared.ports["mx"], shared.workers, 2)

    def mail(c: RawClient) -> int:
        code, _ = c.cmd(b"MAIL FROM:<a@example.org>")
        if code == 250:
            c.cmd(b"RSET")
        return code

    for c in (first, second):
        assert c.cmd(b"EHLO c")[0] == 250
    assert [mail(first), mail(first), mail(second)] == [250, 250, 250]
    assert mail(second) == 450 and mail(first) == 450  # the fourth, whichever process takes it
    first.close()
    second.close()


def test_a_killed_process_leaves_no_connections_counted(shared):
    clients = on_both_workers(shared.ports["mx"], shared.workers, 3)
    victim = clients[0].owner
    os.kill(victim, signal.SIGKILL)
    replaced = wait_for(lambda: victim not in (accepting_workers(shared) or [victim]) and accepting_workers(shared),
                        timeout=20, what="the killed worker replaced")
    shared.workers[:] = replaced
    for c in clients:
        c.close()
    time.sleep(0.3)
    again = on_both_workers(shared.ports["mx"], shared.workers, 3)  # all three allowed again
    for c in again:
        c.close()
