"""The queue manager's life cycle on a real spool: lifetime expiry and its RFC 3464
bounce, delay warnings, null-sender and double bounces, the MDA hand-off both ways,
corrupt files, and nothing delivered twice after SIGKILL."""

from __future__ import annotations

import email
import email.policy
import signal
import time

from common.spool import (Handoff, HandoffResult, Recipient, Spool, parse, read_handoff_request,
                          write_handoff_answers, write_handoff_results)
from tests.support import free_port, wait_for

from .queue_sink import (Sink, mta_config, sink_config, sink_scanned_hourly, spool_files, spool_message,
                         start_queue)


def _local_dsns(spool_root):
    """DSNs the manager handed to the MDA (their recipient is local): parsed emails."""
    out = []
    spool = Spool(spool_root)
    for name in spool_files(spool_root, "mda"):
        for h in read_handoff_request(name, (spool_root / "mda" / name).read_bytes()):
            sf = parse(spool.path("active", h.queue_id))
            if sf.envelope.source == "bounce":
                out.append((sf, email.message_from_bytes(sf.read_message(), policy=email.policy.default)))
    return out


def _status_part(dsn) -> str:
    return [p for p in dsn.iter_parts() if p.get_content_type() == "message/delivery-status"][0].as_string()


def test_lifetime_expiry_bounces_in_rfc3464_form_with_one_delay_warning(tmp_path):
    port = free_port("127.0.0.3")      # nothing listens: every attempt fails
    etc = sink_config(tmp_path, port, """
        tls: none
        retry_first: 0.5s
        retry_max: 1s
        destination_backoff: 0.2s
        scan_interval: 0.2s
        delay_warning: 1s
        max_lifetime: 3s
    """)
    spool = tmp_path / "spool"
    q = start_queue(etc)    # first: the message's clock starts when it is queued
    try:
        qid = spool_message(spool, "alice@example.test",
                            [Recipient("bob@remote.test", orcpt="rfc822;Bob.Original@remote.test"),
                             Recipient("carol@remote.test", notify=("FAILURE",))], ret="HDRS", envid="ENV-77")
        wait_for(lambda: len(_local_dsns(spool)) >= 2, 20, what="a delay warning and a bounce")
        dsns = {d["Subject"]: (sf, d) for sf, d in _local_dsns(spool)}
        assert len(dsns) == 2
        sf, delay = dsns["Delayed Mail (still being retried)"]
        status = _status_part(delay)
        # NOTIFY=FAILURE only: carol gets no delay warning; bob (no NOTIFY) does.
        assert "Action: delayed" in status and "bob@remote.test" in status and "carol" not in status
        assert "Will-Retry-Until:" in status
        sf, bounce = dsns["Undelivered Mail Returned to Sender"]
        assert sf.envelope.sender == "" and sf.envelope.recipients[0].address == "alice@example.test"
        assert bounce.get_content_type() == "multipart/report"
        human, report, original = bounce.iter_parts()
        assert human.get_content_type() == "text/plain" and "could not" in human.get_content()
        status = report.as_string()
        assert "Reporting-MTA: dns; mail.example.test" in status
        assert "Original-Envelope-Id: ENV-77" in status
        assert status.count("Action: failed") == 2          # one bounce lists both recipients
        assert "Final-Recipient: rfc822; bob@remote.test" in status
        assert "Original-Recipient: rfc822; Bob.Original@remote.test" in status
        assert "Status: 4.4.1" in status and "expired" in status and "Connection refused" in status
        # RET=HDRS: only the header comes back.
        assert original.get_content_type() == "text/rfc822-headers"
        assert "Subject: test" in original.get_content() and "Hello." not in original.get_content()
        assert "Auto-Submitted: auto-replied" in bounce.as_string()
        wait_for(lambda: qid not in spool_files(spool, "deferred") + spool_files(spool, "active"), 10,
                 what="the original removed")
    finally:
        q.stop()


def test_null_sender_never_bounces_and_double_bounce_goes_to_postmaster(tmp_path):
    with Sink("127.0.0.3", refuse={"gone@remote.test": "550 5.1.1 gone",
                                   "alsogone@remote.test": "550 5.1.1 gone too"}) as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: none
            postmaster: postmaster@example.test
        """)
        spool = tmp_path / "spool"
        # A notification (null sender, not our bounce): dropped with a log line.
        plain = spool_message(spool, "", ["gone@remote.test"])
        # Our own bounce that cannot be delivered: a double bounce to the postmaster.
        ours = spool_message(spool, "", [Recipient("alsogone@remote.test")], source="bounce")
        q = start_queue(etc)
        try:
            wait_for(lambda: _local_dsns(spool), 15, what="the double bounce")
            (sf, dsn), = _local_dsns(spool)
            assert sf.envelope.recipients[0].address == "postmaster@example.test"
            assert sf.envelope.extra.get("double_bounce") is True
            assert "alsogone@remote.test" in _status_part(dsn)
            wait_for(lambda: not spool_files(spool, "deferred") and plain not in spool_files(spool, "active")
                     and ours not in spool_files(spool, "active"), 10, what="both originals removed")
            assert "undeliverable mail with a null sender dropped: gone@remote.test" in q.output()
        finally:
            q.stop()


def test_mda_handoff_results_applied_and_permanent_failures_bounced(tmp_path):
    etc = mta_config(tmp_path, "tls: none\nscan_interval: 0.2s")
    spool_root = tmp_path / "spool"
    qid = spool_message(spool_root, "sender@example.test",
                        [Recipient("alice@example.test", mailbox="alice@example.test"),
                         Recipient("nobody@example.test"),
                         Recipient("bob@example.test", mailbox="bob@example.test")])
    q = start_queue(etc)
    try:
        (hid,) = wait_for(lambda: spool_files(spool_root, "mda"), 10, what="the hand-off")
        h = Handoff.from_json((spool_root / "mda" / hid).read_bytes())
        assert h.queue_id == qid and sorted(h.recipients) == [0, 1, 2]
        assert parse(h.spool_path).queue_id == qid
        # Play the MDA's side of the contract: answer, then remove the request.
        spool = Spool(spool_root)
        write_handoff_results(spool, hid, [
            HandoffResult(0, "delivered", "2.0.0", "delivered to INBOX"),
            HandoffResult(1, "bounced", "5.1.1", "no such user"),
            HandoffResult(2, "deferred", "4.2.2", "over quota"),
        ])
        (spool_root / "mda" / hid).unlink()
        sf = wait_for(lambda: qid in spool_files(spool_root, "deferred") and parse(spool.path("deferred", qid)),
                      10, what="the message deferred for bob")
        states = [r.state for r in sf.envelope.recipients]
        assert states == ["delivered", "bounced", "deferred"]
        assert sf.envelope.recipients[2].reason == "over quota"
        assert not spool_files(spool_root, "mda-done")
        # The bounce for nobody went to the sender, local again: a new hand-off.
        (sf_dsn, dsn), = wait_for(lambda: _local_dsns(spool_root), 10, what="the bounce")
        status = _status_part(dsn)
        assert "nobody@example.test" in status and "Status: 5.1.1" in status and "alice" not in status
    finally:
        q.stop()


def test_corrupt_file_goes_to_corrupt_and_the_rest_moves(tmp_path):
    with Sink("127.0.0.3") as sink:
        etc = sink_config(tmp_path, sink.port)
        spool = tmp_path / "spool"
        Spool(spool, create=True)
        (spool / "incoming" / "0660D3000000000000BAD0").write_bytes(b"POSTROOM-SPOOL 1\nE 5\nnope")
        spool_message(spool, "alice@example.test", ["bob@remote.test"])
        q = start_queue(etc)
        try:
            sink.wait_for(1)
            wait_for(lambda: spool_files(spool, "corrupt") == ["0660D3000000000000BAD0"], 10, what="corrupt/")
            assert "moving 0660D3000000000000BAD0 to corrupt/" in q.output()
        finally:
            q.stop()


def test_sigkill_mid_delivery_then_restart_delivers_nothing_twice(tmp_path):
    with Sink("127.0.0.3", data_delay=0.4) as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: none
            max_per_destination: 2
            retry_first: 0.5s
            scan_interval: 0.2s
        """)
        spool = tmp_path / "spool"
        ids = [spool_message(spool, "alice@example.test", [f"r{i}@remote.test"]) for i in range(8)]
        q = start_queue(etc)
        try:
            sink.wait_for(3, timeout=20)
            time.sleep(0.2)                  # deliveries are in flight: the sink is sitting on DATA
            q.signal(signal.SIGKILL)
            q.proc.wait(5)
            q.log.close()
            before = len(sink.messages)
            assert before < 8 and spool_files(spool, "active"), "the kill came too late to mean anything"
            q = start_queue(etc)
            wait_for(lambda: len(sink.messages) >= 8 and not spool_files(spool, "active")
                     and not spool_files(spool, "incoming") and not spool_files(spool, "deferred"), 30,
                     what="every message delivered after the restart")
            time.sleep(0.5)
            got = sorted(r for m in sink.messages for r in m.recipients)
            assert got == sorted(f"r{i}@remote.test" for i in range(8)), got
        finally:
            q.stop()
    assert ids


def test_destination_down_is_backed_off_as_a_whole_then_postroom_receives(tmp_path):
    """Several messages for a destination that is down: one connection attempt, the
    rest deferred without connecting; once a postroom-mta listens there, all arrive."""
    from .queue_sink import PostroomMta, receiving_mta_yaml

    port = free_port("127.0.0.3")
    etc = mta_config(tmp_path / "a", f"""
        transports:
          dest.test: "smtp:[127.0.0.3]:{port}"
        tls: may
        max_per_destination: 1
        retry_first: 1s
        retry_max: 1s
        destination_backoff: 1s
        scan_interval: 0.2s
    """)
    spool = tmp_path / "a" / "spool"
    ids = [spool_message(spool, "alice@example.test", ["bob@dest.test"]) for _ in range(3)]
    q = start_queue(etc)
    b = None
    try:
        wait_for(lambda: sorted(spool_files(spool, "deferred")) == sorted(ids), 15, what="all three deferred")
        log = q.output()
        assert log.count(f"connect to 127.0.0.3[127.0.0.3]:{port} failed") == 1, log
        assert log.count(f"delivery to [127.0.0.3]:{port} deferred") == 2, log
        b = PostroomMta(tmp_path / "b", "127.0.0.3", ["dest.test"], {"bob@dest.test": "pw"},
                        receiving_mta_yaml("127.0.0.3", port)).start(port)
        got = wait_for(lambda: len([f for f in b.files() if f.envelope.sender == "alice@example.test"]) == 3
                       and b.files(), 30, what="three messages at the postroom MTA")
        assert all(f.envelope.tls_version for f in got if f.envelope.sender)
        wait_for(lambda: not spool_files(spool, "deferred") and not spool_files(spool, "active"), 10,
                 what="the sender's queue empty")
    finally:
        q.stop()
        if b is not None:
            b.stop()


def test_sigterm_lets_a_delivery_in_flight_finish(tmp_path):
    with Sink("127.0.0.3", data_delay=1.5) as sink:
        etc = sink_config(tmp_path, sink.port)
        spool = tmp_path / "spool"
        q = start_queue(etc)
        try:
            qid = spool_message(spool, "alice@example.test", ["bob@remote.test"])
            wait_for(lambda: sink.connections, 10, what="the delivery to start")
            time.sleep(0.3)
            q.signal(signal.SIGTERM)
            assert q.proc.wait(20) == 0
            assert len(sink.messages) == 1                     # finished, not cut off
            assert qid not in spool_files(spool, "active")     # and recorded as done
            assert "1 in flight" in q.output()
        finally:
            q.stop()


def test_with_the_real_mda_a_local_failure_bounces_back_into_the_senders_mailbox(tmp_path):
    """The hand-off contract with a running postroom-mda: bob gets the message, the
    unknown local recipient is bounced by the MDA, and the queue manager's RFC 3464
    bounce is itself handed to the MDA and lands in alice's INBOX."""
    from tests.mda.mda_support import folder_files
    from tests.support import Daemon

    etc = mta_config(tmp_path, "tls: none\nscan_interval: 0.5s")
    (etc / "mda.yaml").write_text("consumer:\n  enabled: true\n  scan_interval: 1s\n")
    spool = tmp_path / "spool"
    Spool(spool, create=True)
    q = start_queue(etc)
    mda = Daemon("mda.main", etc).start()
    try:
        qid = spool_message(spool, "alice@example.test",
                            [Recipient("bob@example.test", mailbox="bob@example.test"),
                             Recipient("nobody@example.test")])
        wait_for(lambda: folder_files(tmp_path, "INBOX", "bob"), 30, what="bob's copy")
        (bounce,) = wait_for(lambda: folder_files(tmp_path, "INBOX", "alice"), 30, what="the bounce in alice's INBOX")
        dsn = email.message_from_bytes(bounce.read_bytes(), policy=email.policy.default)
        status = _status_part(dsn)
        assert dsn.get_content_type() == "multipart/report"
        assert "Final-Recipient: rfc822; nobody@example.test" in status and "Action: failed" in status
        assert "Status: 5." in status and "bob@example.test" not in status
        wait_for(lambda: not any(spool_files(spool, d) for d in ("incoming", "active", "deferred", "mda", "mda-done")),
                 20, what="an empty queue")
        assert qid
    finally:
        mda.stop()
        q.stop()


def test_bounce_that_cannot_be_delivered_is_dropped_after_bounce_lifetime(tmp_path):
    """A notice (null sender, ours) whose recipient's server stays down: after
    bounce_lifetime (not max_lifetime) it is logged and dropped; no double bounce
    without a postmaster, and a normal message stays queued."""
    port = free_port("127.0.0.3")       # nothing listens
    etc = sink_config(tmp_path, port, """
        tls: none
        retry_first: 0.3s
        retry_max: 0.5s
        destination_backoff: 0.2s
        scan_interval: 0.2s
        bounce_lifetime: 2s
        delay_warning: 0
    """)
    spool = tmp_path / "spool"
    q = start_queue(etc)
    try:
        notice = spool_message(spool, "", [Recipient("gone@remote.test", notify=("NEVER",))], source="bounce")
        normal = spool_message(spool, "alice@example.test", ["bob@remote.test"])
        wait_for(lambda: notice not in spool_files(spool, "deferred") + spool_files(spool, "active")
                 + spool_files(spool, "incoming"), 15, what="the notice dropped")
        log = q.output()
        assert "undeliverable mail with a null sender dropped: gone@remote.test" in log
        assert f"queue_id={notice}" in log and "expired after" in log
        assert not spool_files(spool, "mda") and spool_files(spool, "incoming") == []   # no double bounce
        assert normal in spool_files(spool, "deferred") + spool_files(spool, "active")
    finally:
        q.stop()


def test_sigkill_while_a_handoff_is_at_the_mda_loses_nothing_and_delivers_once(tmp_path):
    """The queue manager hands two local recipients to the MDA and is killed; the MDA
    delivers and answers while it is down; the restarted manager applies the answer
    (no second hand-off) and removes the message. One copy each, none lost."""
    from tests.mda.mda_support import folder_files
    from tests.support import Daemon

    etc = mta_config(tmp_path, "tls: none\nscan_interval: 0.5s")
    (etc / "mda.yaml").write_text("consumer:\n  enabled: true\n  scan_interval: 0.5s\n")
    spool = tmp_path / "spool"
    qid = spool_message(spool, "carol@remote.test", [Recipient("bob@example.test", mailbox="bob@example.test"),
                                                     Recipient("alice@example.test", mailbox="alice@example.test")])
    q = start_queue(etc)
    (hid,) = wait_for(lambda: spool_files(spool, "mda"), 10, what="the hand-off")
    q.signal(signal.SIGKILL)
    q.proc.wait(5)
    q.log.close()
    assert spool_files(spool, "active") == [qid]
    mda = Daemon("mda.main", etc).start()
    try:
        wait_for(lambda: spool_files(spool, "mda-done") == [hid] and not spool_files(spool, "mda"), 30,
                 what="the MDA's answer")
        assert len(folder_files(tmp_path, "INBOX", "bob")) == 1 and len(folder_files(tmp_path, "INBOX", "alice")) == 1
        q = start_queue(etc)
        try:
            wait_for(lambda: not any(spool_files(spool, d) for d in ("incoming", "active", "deferred", "mda",
                                                                     "mda-done")), 20, what="an empty queue")
            time.sleep(1.0)         # a second hand-off would be delivered by now
            assert len(folder_files(tmp_path, "INBOX", "bob")) == 1
            assert len(folder_files(tmp_path, "INBOX", "alice")) == 1
            assert q.output().count("delivered status=2.") == 2
        finally:
            q.stop()
    finally:
        mda.stop()


def test_fresh_mail_is_picked_up_without_waiting_for_a_scan(tmp_path):
    """With deferred/ scanned once an hour, each new message in incoming/ reaches the
    destination well within the one-second safety scan."""
    import random

    with sink_scanned_hourly(tmp_path) as (sink, etc, spool):
        q = start_queue(etc)
        try:
            spool_message(spool, "alice@example.test", ["warmup@remote.test"])
            sink.wait_for(1)
            latencies = []
            for i in range(5):
                time.sleep(random.uniform(0.2, 0.8))     # any phase of the one-second scan
                start = time.monotonic()
                spool_message(spool, "alice@example.test", [f"r{i}@remote.test"])
                got = sink.wait_for(i + 2, timeout=5)[-1]
                latencies.append(got.received_at - start)
            # Picked up at once it takes milliseconds; by the one-second scan alone, five
            # arrivals at random phases would all beat 0.3 s only 0.2% of the time.
            assert max(latencies) < 0.3, latencies
        finally:
            q.stop()


def test_messages_loaded_together_share_a_request_and_one_answer_applied_after_a_restart(tmp_path):
    """Three messages waiting at start are loaded together: one request in mda/ holds
    their three hand-offs. The queue manager is killed; the MDA's side (played here)
    answers them in one file; the restarted manager applies every answer (no second
    hand-off), removes the two delivered messages, defers the third, then the answer."""
    etc = mta_config(tmp_path, "tls: none\nscan_interval: 0.5s")
    spool_root = tmp_path / "spool"
    qids = [spool_message(spool_root, "carol@remote.test",
                          [Recipient(f"{u}@example.test", mailbox=f"{u}@example.test")]) for u in ("alice", "bob", "dave")]
    q = start_queue(etc)
    (name,) = wait_for(lambda: spool_files(spool_root, "mda"), 10, what="the request")
    q.signal(signal.SIGKILL)
    q.proc.wait(5)
    q.log.close()
    handoffs = read_handoff_request(name, (spool_root / "mda" / name).read_bytes())
    assert sorted(h.queue_id for h in handoffs) == sorted(qids) and all(h.recipients == [0] for h in handoffs)
    spool = Spool(spool_root)
    write_handoff_answers(spool, name, {h.handoff_id: [
        HandoffResult(0, "deferred", "4.2.2", "over quota") if h.queue_id == qids[2]
        else HandoffResult(0, "delivered", "2.0.0", "delivered to INBOX")] for h in handoffs})
    (spool_root / "mda" / name).unlink()
    q = start_queue(etc)
    try:
        wait_for(lambda: spool_files(spool_root, "deferred") == [qids[2]] and not spool_files(spool_root, "active")
                 and not spool_files(spool_root, "mda-done"), 10, what="the answers applied")
        assert not spool_files(spool_root, "mda")           # no second hand-off
        assert parse(spool.path("deferred", qids[2])).envelope.recipients[0].reason == "over quota"
        assert q.output().count("delivered status=2.") == 2
    finally:
        q.stop()
