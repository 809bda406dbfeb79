"""The spool consumer as a running daemon (`python -m mda.main`): hand-offs written
into a real spool are delivered to the right folders and answered; a SIGKILL at
each step of the consumer leaves exactly one copy after a restart."""

from __future__ import annotations

import signal

import pytest

from common.spool import (Envelope, Handoff, Recipient, Spool, read_handoff_results, write_handoff)
from tests.mda.mda_support import (MESSAGE, all_message_files, folder_files, mda_config, small_maildir_disk,
                                   write_script)
from tests.support import Daemon, wait_for

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


@pytest.mark.parametrize("point", ["start", "after_deliver", "before_results", "after_results", "after_remove"])
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


def test_disk_full_is_answered_as_deferral(tmp_path, daemon_factory):
    with small_maildir_disk(tmp_path) as (_mount, core_extra):
        etc = mda_config(tmp_path, MDA_YAML, core_extra=core_extra)
        spool = Spool(tmp_path / "spool")
        daemon_factory(etc)
        env, path = queue_message(spool, [Recipient("alice@example.test")], MESSAGE + b"x" * 200_000)
        hid = hand_off(spool, env, path, [0])
        [r] = wait_for(lambda: answered(spool, hid), timeout=20, what="the answer")
        assert (r.state, r.status) == ("deferred", "4.3.1")
