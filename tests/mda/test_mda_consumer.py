"""The spool consumer as a running daemon (`python -m mda.main`): hand-offs written
into a real spool are delivered to the right folders and answered; a SIGKILL at
each step of the consumer leaves exactly one copy after a restart."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from common.spool import (Envelope, Handoff, Recipient, Spool, read_handoff_answers, read_handoff_results,
                          write_handoff, write_handoffs)
from tests.mda.mda_support import (MESSAGE, all_message_files, folder_files, maildir, mda_config, small_maildir_disk,
                                   write_script)
from tests.mda.test_mda_delivery import STANDARD_NAME
from tests.support import ROOT, Daemon, wait_for

MDA_YAML = "consumer:\n  enabled: true\n  scan_interval: 1s\n  workers: 2\n"


def queue_message(spool: Spool, recipients: list[Recipient], message: bytes = MESSAGE, sender: str = "sender@remote.test"):
    env = Envelope(sender=sender, recipients=recipients)
    env.size = len(message)
    path = spool.write(env, [message], queue="active")
    return env, path


def hand_off(spool: Spool, env: Envelope, path, indices: list[int], suffix: str = "h1") -> str:
    hid = f"{env.queue_id}.{suffix}"
    write_handoff(spool, Handoff(hid, env.queue_id, str(path), indices))
    return hid


def answered(spool: Spool, hid: str):
    p = spool.path("mda-done", hid)
    return read_handoff_results(p) if p.exists() and not spool.path("mda", hid).exists() else None


@pytest.fixture
def daemon_factory():
    started = []

    def start(etc, env=None):
        d = Daemon("mda.main", etc, env=env or {})
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def test_handoff_delivered_to_folders_and_answered(tmp_path, daemon_factory):
    etc = mda_config(tmp_path, MDA_YAML)
    write_script(tmp_path, 'require "fileinto"; if header :contains "subject" "hello" { fileinto "Greetings"; }')
    spool = Spool(tmp_path / "spool")
    d = daemon_factory(etc)
    env, path = queue_message(spool, [
        Recipient("alice@example.test", mailbox="alice@example.test"),
        Recipient("bob+lists@example.test", mailbox="bob@example.test", folder="lists"),
        Recipient("nobody@example.test"),
    ])
    hid = hand_off(spool, env, path, [0, 1, 2])
    results = wait_for(lambda: answered(spool, hid), timeout=20, what="the hand-off's answer")
    states = {r.rcpt: (r.state, r.status) for r in results}
    assert states == {0: ("delivered", "2.0.0"), 1: ("delivered", "2.0.0"), 2: ("bounced", "5.1.1")}
    assert len(folder_files(tmp_path, "Greetings")) == 1 and folder_files(tmp_path) == []
    assert len(folder_files(tmp_path, "INBOX", "bob")) == 1
    # A later hand-off is picked up at once, not at the next scan.
    env2, path2 = queue_message(spool, [Recipient("bob@example.test")])
    hid2 = hand_off(spool, env2, path2, [0])
    wait_for(lambda: answered(spool, hid2), timeout=5, what="the second answer")
    assert len(folder_files(tmp_path, "INBOX", "bob")) == 2
    assert d.stop() == 0


def test_detail_folder_from_the_mta(tmp_path, daemon_factory):
    etc = mda_config(tmp_path, MDA_YAML + "detail_folders: true\n")
    spool = Spool(tmp_path / "spool")
    daemon_factory(etc)
    env, path = queue_message(spool, [Recipient("bob+lists@example.test", mailbox="bob@example.test", folder="lists")])
    hid = hand_off(spool, env, path, [0])
    wait_for(lambda: answered(spool, hid), timeout=20, what="the answer")
    assert len(folder_files(tmp_path, "lists", "bob")) == 1


def test_over_quota_answered_as_bounce_or_deferral(tmp_path, daemon_factory):
    etc = mda_config(tmp_path, MDA_YAML, user_extra={"alice@example.test": "userdb_quota_rule=*:storage=1"})
    spool = Spool(tmp_path / "spool")
    daemon_factory(etc)
    env, path = queue_message(spool, [Recipient("alice@example.test")], MESSAGE + b"x" * 4096)
    hid = hand_off(spool, env, path, [0])
    [r] = wait_for(lambda: answered(spool, hid), timeout=20, what="the answer")
    assert (r.state, r.status) == ("bounced", "5.2.2")


CRASH_POINTS = ["start", "after_plans", "inside_write", "between_folders", "after_deliver", "after_maildrop",
                "before_results", "after_results", "after_remove"]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_sigkill_at_each_step_leaves_exactly_one_copy(tmp_path, daemon_factory, point):
    etc = mda_config(tmp_path, MDA_YAML)
    write_script(tmp_path, 'require ["fileinto", "copy"]; fileinto :copy "Archive"; redirect :copy "carol@remote.test";')
    spool = Spool(tmp_path / "spool")
    env, path = queue_message(spool, [Recipient("alice@example.test"), Recipient("bob@example.test")])
    hid = hand_off(spool, env, path, [0, 1])
    crashing = daemon_factory(etc, env={"POSTROOM_TEST_CRASH_AT": point})
    assert crashing.proc.wait(30) == -signal.SIGKILL
    crashing.log.close()
    daemon_factory(etc)
    if point == "after_remove":
        wait_for(lambda: spool.path("mda-done", hid).exists(), timeout=20, what="the answer")
    results = wait_for(lambda: answered(spool, hid), timeout=20, what="the answer after the restart")
    assert sorted((r.rcpt, r.state) for r in results) == [(0, "delivered"), (1, "delivered")]
    assert len(folder_files(tmp_path, "INBOX")) == 1
    assert len(folder_files(tmp_path, "Archive")) == 1
    assert len(all_message_files(tmp_path, "bob")) == 1
    assert len(spool.list("maildrop")) == 1
    for f in all_message_files(tmp_path) + all_message_files(tmp_path, "bob"):
        assert STANDARD_NAME.match(f.name), f.name
    # Answered for good: the plans are forgotten (but for a crash right after the
    # removal of the request, which leaves them to the pruning by age).
    if point != "after_remove":
        wait_for(lambda: not list((tmp_path / "state" / "mda" / "journal").iterdir()), timeout=10,
                 what="plans removed")


@pytest.mark.parametrize("point", ["after_plans", "between_folders", "before_results", "after_results",
                                   "after_remove"])
def test_sigkill_with_a_request_of_several_messages_leaves_exactly_one_copy_each(tmp_path, daemon_factory, point):
    """The queue manager's request file for messages loaded together: one answer file
    answers every hand-off in it, the request goes after it, and a crash at any step
    leaves one copy of each message."""
    etc = mda_config(tmp_path, MDA_YAML)
    write_script(tmp_path, 'require ["fileinto", "copy"]; fileinto :copy "Archive";')
    spool = Spool(tmp_path / "spool")
    handoffs = []
    for rcpts in ([Recipient("alice@example.test"), Recipient("bob@example.test")], [Recipient("alice@example.test")]):
        env, path = queue_message(spool, rcpts)
        handoffs.append(Handoff(f"{env.queue_id}.r1", env.queue_id, str(path), list(range(len(rcpts)))))
    write_handoffs(spool, handoffs)
    assert spool.list("mda") == [handoffs[0].handoff_id]
    crashing = daemon_factory(etc, env={"POSTROOM_TEST_CRASH_AT": point})
    assert crashing.proc.wait(30) == -signal.SIGKILL
    crashing.log.close()
    daemon_factory(etc)
    name = handoffs[0].handoff_id
    wait_for(lambda: spool.path("mda-done", name).exists() and not spool.list("mda"), timeout=20,
             what="the answer after the restart, the request removed")
    answers = read_handoff_answers(name, spool.path("mda-done", name))      # one file answers the request
    assert spool.list("mda-done") == [name] and sorted(answers) == sorted(h.handoff_id for h in handoffs)
    for h in handoffs:
        assert sorted((r.rcpt, r.state) for r in answers[h.handoff_id]) == [(i, "delivered") for i in h.recipients]
    assert len(folder_files(tmp_path, "INBOX")) == 2 and len(folder_files(tmp_path, "Archive")) == 2
    assert len(all_message_files(tmp_path, "bob")) == 1


@pytest.mark.parametrize("point", ["between_folders", "after_deliver", "before_results"])
def test_retry_after_a_crash_replays_the_decision(tmp_path, daemon_factory, point):
    """With duplicate, running Sieve again after a crash would now see the message as
    a duplicate and file it into Dups: the retry replays the recorded decision instead."""
    etc = mda_config(tmp_path, MDA_YAML)
    write_script(tmp_path, 'require ["duplicate", "fileinto", "copy"];\n'
                           'if duplicate { fileinto "Dups"; } else { fileinto :copy "First"; }\n')
    spool = Spool(tmp_path / "spool")
    env, path = queue_message(spool, [Recipient("alice@example.test")])
    hid = hand_off(spool, env, path, [0])
    crashing = daemon_factory(etc, env={"POSTROOM_TEST_CRASH_AT": point})
    assert crashing.proc.wait(30) == -signal.SIGKILL
    crashing.log.close()
    daemon_factory(etc)
    [r] = wait_for(lambda: answered(spool, hid), timeout=20, what="the answer after the restart")
    assert r.state == "delivered"
    assert len(folder_files(tmp_path, "INBOX")) == 1 and len(folder_files(tmp_path, "First")) == 1
    assert folder_files(tmp_path, "Dups") == []
    # A new message with the same Message-ID is a duplicate, as the script says.
    env2, path2 = queue_message(spool, [Recipient("alice@example.test")])
    hid2 = hand_off(spool, env2, path2, [0])
    wait_for(lambda: answered(spool, hid2), timeout=20, what="the second answer")
    assert len(folder_files(tmp_path, "Dups")) == 1


def test_temporary_failure_after_a_partial_delivery_adds_no_copy(tmp_path, daemon_factory):
    """fileinto :copy into a folder that cannot be made: each attempt (a new hand-off,
    as the queue manager makes) is deferred, and INBOX holds one copy, not one per try."""
    etc = mda_config(tmp_path, MDA_YAML)
    write_script(tmp_path, 'require ["fileinto", "copy"]; fileinto :copy "Broken";')
    root = maildir(tmp_path)
    root.mkdir(parents=True)
    (root / ".Broken").write_text("a file where the folder should be")
    spool = Spool(tmp_path / "spool")
    daemon_factory(etc)
    env, path = queue_message(spool, [Recipient("alice@example.test")])
    for attempt in range(3):
        hid = hand_off(spool, env, path, [0], suffix=f"try{attempt}")
        [r] = wait_for(lambda: answered(spool, hid), timeout=20, what=f"answer {attempt}")
        assert (r.state, r.status[:1]) == ("deferred", "4")
        assert len(folder_files(tmp_path, "INBOX")) == 1
    # Once the folder can be made, the next attempt completes the delivery.
    (root / ".Broken").unlink()
    hid = hand_off(spool, env, path, [0], suffix="try3")
    [r] = wait_for(lambda: answered(spool, hid), timeout=20, what="the last answer")
    assert r.state == "delivered"
    assert len(folder_files(tmp_path, "INBOX")) == 1 and len(folder_files(tmp_path, "Broken")) == 1


def test_failed_batch_is_retried_by_the_periodic_scan(tmp_path, daemon_factory):
    """The answers cannot be written (mda-done/ is not a folder): the batch fails. Once
    mda-done/ is back, the hand-off is answered by the next scans, though nothing in
    mda/ changes."""
    etc = mda_config(tmp_path, "consumer:\n  enabled: true\n  scan_interval: 2s\n  workers: 1\n")
    spool = Spool(tmp_path / "spool")
    d = daemon_factory(etc)
    wait_for(lambda: "postroom-mda started" in d.output(), timeout=20, what="the daemon")
    done = spool.dir("mda-done")
    done.rmdir()
    done.write_text("not a folder")
    env, path = queue_message(spool, [Recipient("alice@example.test")])
    hid = hand_off(spool, env, path, [0])
    wait_for(lambda: "not finished; will retry" in d.output(), timeout=20, what="the failed batch")
    assert len(folder_files(tmp_path)) == 1   # delivered, not answered
    done.unlink()
    done.mkdir()
    started = time.monotonic()
    [r] = wait_for(lambda: answered(spool, hid), timeout=10, interval=0.05, what="the answer")
    assert time.monotonic() - started < 2 + 2.5   # scan_interval plus a bound
    assert r.state == "delivered" and len(folder_files(tmp_path)) == 1


def test_pickup_by_inotify_is_immediate(tmp_path, daemon_factory):
    etc = mda_config(tmp_path, "consumer:\n  enabled: true\n  scan_interval: 60s\n")
    spool = Spool(tmp_path / "spool")
    d = daemon_factory(etc)
    wait_for(lambda: "postroom-mda started" in d.output(), timeout=20, what="the daemon")
    time.sleep(0.5)   # the scan at start is over: only inotify can see what comes now
    env, path = queue_message(spool, [Recipient("alice@example.test")])
    started = time.monotonic()
    hid = hand_off(spool, env, path, [0])
    wait_for(lambda: answered(spool, hid), timeout=5, interval=0.02, what="the answer")
    assert time.monotonic() - started < 1.0


NO_INOTIFY = """
import sys
from pathlib import Path
from twisted.internet import reactor
from common.config import load
from common.log import setup_logging
from common.spool import Spool
from mda.consumer import SpoolConsumer
from mda.delivery import Deliverer
cfg = load(Path(sys.argv[1]), "mda")
setup_logging(cfg.core.log, "mda")
consumer = SpoolConsumer(Spool(cfg.core.paths.spool), Deliverer(cfg.core, cfg.daemon), cfg.daemon, reactor,
                         use_inotify=False)
reactor.callWhenRunning(consumer.startService)
reactor.addSystemEventTrigger("before", "shutdown", consumer.stopService)
reactor.run()
"""


def test_pickup_without_inotify_by_the_periodic_scan(tmp_path):
    """Where inotify is not available (FreeBSD, no instance left) the scan every
    scan_interval delivers: the consumer runs here with inotify turned off."""
    etc = mda_config(tmp_path, "consumer:\n  enabled: true\n  scan_interval: 2s\n")
    spool = Spool(tmp_path / "spool")
    log = open(tmp_path / "consumer.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", NO_INOTIFY, str(etc)], cwd=str(ROOT), stdout=log, stderr=log)
    try:
        time.sleep(1.0)
        assert proc.poll() is None, (tmp_path / "consumer.log").read_text()
        env, path = queue_message(spool, [Recipient("alice@example.test")])
        started = time.monotonic()
        hid = hand_off(spool, env, path, [0])
        wait_for(lambda: answered(spool, hid), timeout=2 + 3, interval=0.05, what="the answer from a scan")
        assert time.monotonic() - started < 2 + 3
        assert len(folder_files(tmp_path)) == 1
    finally:
        proc.terminate()
        proc.wait(15)
        log.close()


def test_disk_full_is_answered_as_deferral(tmp_path, daemon_factory):
    with small_maildir_disk(tmp_path) as (_mount, core_extra):
        etc = mda_config(tmp_path, MDA_YAML, core_extra=core_extra)
        spool = Spool(tmp_path / "spool")
        daemon_factory(etc)
        env, path = queue_message(spool, [Recipient("alice@example.test")], MESSAGE + b"x" * 200_000)
        hid = hand_off(spool, env, path, [0])
        [r] = wait_for(lambda: answered(spool, hid), timeout=20, what="the answer")
        assert (r.state, r.status) == ("deferred", "4.3.1")


def test_several_consumer_processes_share_the_handoffs(tmp_path, daemon_factory):
    """consumer.processes: 2 -- every hand-off delivered once, by the process whose share
    of queue IDs it belongs to; both processes take part."""
    import re as _re
    etc = mda_config(tmp_path, "consumer:\n  enabled: true\n  scan_interval: 1s\n  processes: 2\n")
    spool = Spool(tmp_path / "spool")
    daemon = daemon_factory(etc)
    ids = []
    for _ in range(30):
        env, path = queue_message(spool, [Recipient("alice@example.test", mailbox="alice@example.test")])
        ids.append(hand_off(spool, env, path, [0]))
    for hid in ids:
        results = wait_for(lambda hid=hid: answered(spool, hid), timeout=30, what="every hand-off answered")
        assert [r.state for r in results] == ["delivered"]
    assert len(folder_files(tmp_path)) == 30
    pids = set(_re.findall(r"mda\[(\d+)\]: queue_id=\S+ trace_id=\S+ to=<alice@example.test> delivered",
                            daemon.output()))
    assert len(pids) == 2 and str(daemon.proc.pid) not in pids, pids
