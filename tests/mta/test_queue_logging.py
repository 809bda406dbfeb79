"""The queue manager's log: every line about a message carries its queue ID and its
trace ID (as Postfix logs the queue ID on every line), through routing, the next
MX, delivery, deferral, bounce and removal."""

from __future__ import annotations

from common.spool import Recipient, parse
from tests.support import free_port, wait_for
from tests.support.dnsserver import DnsServer

from .queue_sink import Sink, mta_config, spool_files, spool_message, start_queue


def test_every_line_about_a_message_carries_its_trace_id(tmp_path):
    down = free_port("127.0.0.5")
    with Sink("127.0.0.3", greeting="421 4.3.2 busy") as busy, \
            Sink("127.0.0.4", port=busy.port, refuse={"gone@two.test": "550 5.1.1 gone"}) as good, \
            DnsServer({"two.test": {"MX": [[10, "a.two.test"], [20, "b.two.test"]]},
                       "a.two.test": {"A": ["127.0.0.3"]}, "b.two.test": {"A": ["127.0.0.4"]}}) as dns:
        etc = mta_config(tmp_path, f"""
            smtp_port: {busy.port}
            tls: none
            retry_first: 1h
            transports:
              down.test: "smtp:[127.0.0.5]:{down}"
        """, f"dns:\n  nameservers: [127.0.0.1]\n  port: {dns.port}\n")
        spool = tmp_path / "spool"
        qid = spool_message(spool, "alice@example.test", [Recipient("x@two.test"), Recipient("gone@two.test"),
                                                          Recipient("y@down.test")])
        trace = parse(spool / "incoming" / qid).envelope.trace_id
        q = start_queue(etc)
        try:
            good.wait_for(1)
            wait_for(lambda: spool_files(spool, "deferred") == [qid] and "notice" in q.output(), 15,
                     what="the message deferred for y@down.test, and the bounce for gone@two.test")
            lines = [line for line in q.output().splitlines() if qid in line]
            about = {what: [line for line in lines if what in line]
                     for what in ("said 421", "to=<x@two.test> delivered", "to=<gone@two.test> bounced",
                                  "to=<y@down.test> deferred", f"connect to 127.0.0.5[127.0.0.5]:{down} failed",
                                  "backed off", "failed notice")}
            assert all(about.values()), about
            for line in lines:
                assert f"queue_id={qid} trace_id={trace} " in line, line
        finally:
            q.stop()
