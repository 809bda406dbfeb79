"""Mail sent over SMTP to a running postroom-mta reaches the right maildir folder
through a running postroom-mda's spool consumer; a vacation reply goes back out
through the MTA's maildrop pickup."""

from __future__ import annotations

import re
import smtplib


from common.spool import parse
from tests.mda.mda_support import MESSAGE, folder_files, write_script
from tests.mta.smtpd_fixture import start_mta
from tests.support import Daemon, wait_for


def test_smtp_to_maildir_through_the_spool_consumer(tmp_path):
    mta = start_mta(tmp_path)
    etc = tmp_path / "etc"
    (etc / "mda.yaml").write_text("consumer:\n  enabled: true\n  scan_interval: 1s\n")
    write_script(tmp_path, 'require ["fileinto", "envelope", "subaddress", "variables", "vacation"];\n'
                           'if envelope :detail :matches "to" "*" { fileinto "${1}"; }\n'
                           'vacation :days 1 "I am away.";\n')
    mda = Daemon("mda.main", etc).start()
    try:
        with smtplib.SMTP("127.0.0.1", mta.ports["mx"], timeout=20) as client:
            client.ehlo("remote.test")
            refused = client.sendmail("sender@remote.test", ["alice+lists@example.test", "bob@example.test"],
                                      MESSAGE.replace(b"To: Alice <alice@example.test>",
                                                      b"To: alice+lists@example.test, bob@example.test"))
            assert refused == {}
        [f] = wait_for(lambda: folder_files(tmp_path, "lists"), timeout=30, what="alice's copy in the folder lists")
        data = f.read_bytes()
        assert b"Delivered-To: alice@example.test" in data and b"Subject: hello" in data
        assert b"Return-Path: <sender@remote.test>" in data
        wait_for(lambda: folder_files(tmp_path, "INBOX", "bob"), timeout=30, what="bob's copy")
        assert folder_files(tmp_path, "INBOX") == []

        def vacation_reply():
            for q in ("incoming", "active", "deferred"):
                for qid in mta.spool.list(q):
                    try:
                        sf = parse(mta.spool.path(q, qid))
                    except FileNotFoundError:
                        continue   # moved on between the listing and the read
                    if sf.envelope.sender == "" and [r.address for r in sf.envelope.recipients] == ["sender@remote.test"]:
                        return sf
            return None

        reply = wait_for(vacation_reply, timeout=30, what="the vacation reply queued by the MTA")
        body = reply.read_message()
        assert b"Auto-Submitted: auto-replied" in body and b"I am away." in body
        # Every hand-off was answered and its answer applied.
        wait_for(lambda: not mta.spool.list("mda") and not mta.spool.list("mda-done"), timeout=20, what="hand-offs done")
    finally:
        mda.stop()
        mta.daemon.stop()


def test_one_trace_id_follows_a_message_through_both_daemons(tmp_path):
    """The spool envelope's trace ID is on the MTA's log line about the message and on
    the MDA's: one grep finds the message in both daemons' logs."""
    import common.log
    assert "trace_id" in common.log.CONTEXT_FIELDS
    mta = start_mta(tmp_path)
    etc = tmp_path / "etc"
    (etc / "mda.yaml").write_text("consumer:\n  enabled: true\n  scan_interval: 1s\n")
    mda = Daemon("mda.main", etc).start()
    try:
        with smtplib.SMTP("127.0.0.1", mta.ports["mx"], timeout=20) as client:
            client.ehlo("remote.test")
            assert client.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE) == {}
        wait_for(lambda: folder_files(tmp_path), timeout=30, what="the delivery")
        line = wait_for(lambda: re.search(r"trace_id=([0-9a-f]{16}) .*delivered", mda.output()), timeout=20,
                        what="the MDA's line about the delivery")
        trace_id = line.group(1)
        assert re.search(rf"trace_id={trace_id} .*queued from <sender@remote.test>", mta.daemon.output())
        assert len(set(re.findall(r"trace_id=([0-9a-f]+)", mda.output()))) == 1
    finally:
        mda.stop()
        mta.daemon.stop()
