"""The queue manager as a process, relaying through the transport map to SMTP sinks."""

from __future__ import annotations

import email
import email.policy

from common.spool import Recipient, parse
from tests.support import wait_for

from .queue_sink import Sink, mta_config, sink_config, spool_files, spool_message, start_queue, tls_sink


def test_transport_map_delivery_with_starttls_and_bounce(tmp_path):
    with tls_sink(tmp_path, refuse={"nobody@remote.test": "550 5.1.1 No such user here"}) as sink:
        etc = mta_config(tmp_path, f"""
            transports:
              remote.test: "smtp:[127.0.0.3]:{sink.port}"
            tls: encrypt
        """)
        spool = tmp_path / "spool"
        qid = spool_message(spool, "alice@example.test",
                            [Recipient("bob@remote.test", notify=("FAILURE",), orcpt="rfc822;Bob@remote.test"),
                             Recipient("nobody@remote.test")], envid="E1")
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.tls and got.recipients == ["bob@remote.test"]
            assert got.sender == "alice@example.test"
            assert "NOTIFY=FAILURE" in got.rcpt_params[0] and "ORCPT=rfc822;Bob@remote.test" in got.rcpt_params[0]
            assert "ENVID=E1" in got.mail_params
            assert b"Hello." in got.data
            # The refused recipient bounces: a notice to alice, which is local (hand-off to the MDA).
            wait_for(lambda: spool_files(spool, "mda"), 10, what="the bounce handed to the MDA")
            wait_for(lambda: qid not in spool_files(spool, "active") + spool_files(spool, "deferred"), 10,
                     what="the original removed")
            (hid,) = spool_files(spool, "mda")
            from common.spool import Handoff
            h = Handoff.from_json((spool / "mda" / hid).read_bytes())
            sf = parse(spool / "active" / h.queue_id)
            assert sf.envelope.sender == "" and sf.envelope.recipients[0].address == "alice@example.test"
            dsn = email.message_from_bytes(sf.read_message(), policy=email.policy.default)
            assert dsn.get_content_type() == "multipart/report"
            assert dsn.get_param("report-type") == "delivery-status"
            parts = list(dsn.iter_parts())
            assert parts[1].get_content_type() == "message/delivery-status"
            status = parts[1].as_string()
            assert "Final-Recipient: rfc822; nobody@remote.test" in status
            assert "Action: failed" in status and "Status: 5.1.1" in status
            assert "Diagnostic-Code: smtp; 550 5.1.1 No such user here" in status
            assert "Remote-MTA: dns; 127.0.0.3" in status
            assert "bob@remote.test" not in status
            assert parts[2].get_content_type() == "message/rfc822"
            assert "Reporting-MTA: dns; mail.example.test" in status
        finally:
            q.stop()


def test_retries_while_down_then_delivers(tmp_path):
    from tests.support import free_port

    port = free_port("127.0.0.3")
    etc = sink_config(tmp_path, port, """
        tls: none
        retry_first: 1s
        retry_max: 2s
        destination_backoff: 1s
        scan_interval: 0.2s
    """)
    spool = tmp_path / "spool"
    qid = spool_message(spool, "alice@example.test", ["carol@elsewhere.test"])
    q = start_queue(etc)
    try:
        wait_for(lambda: qid in spool_files(spool, "deferred"), 10, what="deferral")
        sf = parse(spool / "deferred" / qid)
        r = sf.envelope.recipients[0]
        assert r.state == "deferred" and "connect to 127.0.0.3" in r.reason and r.next_attempt
        with Sink("127.0.0.3", port=port) as sink:
            (got,) = sink.wait_for(1, timeout=15)
            assert got.recipients == ["carol@elsewhere.test"]
            wait_for(lambda: not spool_files(spool, "deferred") and not spool_files(spool, "active"), 10,
                     what="the message removed")
            assert len(sink.messages) == 1
    finally:
        q.stop()


def test_success_notice_only_when_the_next_server_does_not_take_over_dsn(tmp_path):
    from .test_queue_lifecycle import _local_dsns, _status_part

    with Sink("127.0.0.3") as with_dsn, Sink("127.0.0.3", extensions=("PIPELINING", "8BITMIME")) as without:
        etc = mta_config(tmp_path, f"""
            transports:
              dsn.test: "smtp:[127.0.0.3]:{with_dsn.port}"
              nodsn.test: "smtp:[127.0.0.3]:{without.port}"
            tls: none
        """)
        spool = tmp_path / "spool"
        spool_message(spool, "alice@example.test", [Recipient("a@dsn.test", notify=("SUCCESS",)),
                                                    Recipient("b@nodsn.test", notify=("SUCCESS", "FAILURE"))])
        q = start_queue(etc)
        try:
            with_dsn.wait_for(1)
            (got,) = without.wait_for(1)
            assert "NOTIFY" not in got.rcpt_params[0]          # not offered: not sent
            (sf, dsn), = wait_for(lambda: _local_dsns(spool), 10, what="the success notice")
            status = _status_part(dsn)
            assert "Action: relayed" in status and "b@nodsn.test" in status and "a@dsn.test" not in status
            assert dsn["Subject"] == "Successful Mail Delivery Report"
        finally:
            q.stop()


def test_smtputf8_and_size_refusals_bounce_with_their_codes(tmp_path):
    from .test_queue_lifecycle import _local_dsns, _status_part

    with Sink("127.0.0.3", extensions=("PIPELINING", "8BITMIME", "SIZE 1000", "DSN")) as sink:
        etc = sink_config(tmp_path, sink.port)
        spool = tmp_path / "spool"
        q = start_queue(etc)
        try:
            spool_message(spool, "alice@example.test", ["j\u00fcrgen@remote.test"], smtputf8=True)
            spool_message(spool, "alice@example.test", ["big@remote.test"], message=b"Subject: big\r\n\r\n"
                          + (b"x" * 70 + b"\r\n") * 30)
            wait_for(lambda: len(_local_dsns(spool)) == 2, 15, what="two bounces")
            reports = " ".join(_status_part(d) for _, d in _local_dsns(spool))
            assert "Status: 5.6.7" in reports and "Status: 5.3.4" in reports
            assert sink.messages == []
        finally:
            q.stop()
