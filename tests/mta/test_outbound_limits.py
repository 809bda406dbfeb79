"""Outbound limits: connections per destination, and the RFC 5321 greeting timeout
moving on to the next host."""

from __future__ import annotations

from tests.support import wait_for

from .queue_sink import Sink, mta_config, sink_config, spool_files, spool_message, start_queue


def test_connections_per_destination_are_limited(tmp_path):
    with Sink("127.0.0.3", data_delay=0.3) as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: none
            max_per_destination: 2
        """)
        spool = tmp_path / "spool"
        for i in range(8):
            spool_message(spool, "alice@example.test", [f"r{i}@remote.test"])
        q = start_queue(etc)
        try:
            sink.wait_for(8, timeout=30)
            assert sink.max_concurrent == 2
            assert sink.connections == 2          # and both sessions were reused
        finally:
            q.stop()


def test_silent_server_times_out_and_the_next_host_is_tried(tmp_path):
    from tests.support.dnsserver import DnsServer

    with Sink("127.0.0.3", greeting="") as silent, Sink("127.0.0.4", port=silent.port) as good, \
            DnsServer({"two.test": {"MX": [[10, "a.two.test"], [20, "b.two.test"]]},
                       "a.two.test": {"A": ["127.0.0.3"]}, "b.two.test": {"A": ["127.0.0.4"]}}) as dns:
        etc = mta_config(tmp_path, f"""
            smtp_port: {silent.port}
            tls: none
            timeouts:
              greeting: 1s
        """, f"dns:\n  nameservers: [127.0.0.1]\n  port: {dns.port}\n")
        spool = tmp_path / "spool"
        qid = spool_message(spool, "alice@example.test", ["x@two.test"])
        q = start_queue(etc)
        try:
            (got,) = good.wait_for(1, timeout=20)
            assert got.recipients == ["x@two.test"] and silent.connections == 1
            assert "a.two.test[127.0.0.3] said 451 4.4.2 timeout while in greeting" in q.output()
            wait_for(lambda: qid not in spool_files(spool, "active"), 10, what="done")
        finally:
            q.stop()


def test_total_connections_are_limited_across_destinations(tmp_path):
    """Two destinations, each allowed 3 at once, but 2 in total: never more than 2
    transactions run at the same time over both, and 2 do."""
    from .queue_sink import max_overlap

    with Sink("127.0.0.3", data_delay=0.3) as one, Sink("127.0.0.4", data_delay=0.3) as two:
        etc = mta_config(tmp_path, f"""
            transports:
              one.test: "smtp:[127.0.0.3]:{one.port}"
              two.test: "smtp:[127.0.0.4]:{two.port}"
            tls: none
            max_connections: 2
            max_per_destination: 3
        """)
        spool = tmp_path / "spool"
        for i in range(6):
            spool_message(spool, "alice@example.test", [f"r{i}@one.test"])
            spool_message(spool, "alice@example.test", [f"r{i}@two.test"])
        q = start_queue(etc)
        try:
            one.wait_for(6, timeout=30)
            two.wait_for(6, timeout=30)
            assert max_overlap(one.transactions + two.transactions) == 2
            assert one.max_concurrent <= 3 and two.max_concurrent <= 3
        finally:
            q.stop()


def test_a_backlog_beyond_max_active_drains_without_waiting_for_scans(tmp_path):
    """40 messages, at most 5 held by the scheduler: the rest are taken from incoming/
    as room frees up, not one scan (a second) per 5 messages."""
    import time

    with Sink("127.0.0.3") as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: none
            max_active: 5
            scan_interval: 1h
        """)
        spool = tmp_path / "spool"
        q = start_queue(etc)
        try:
            start = time.monotonic()
            for i in range(40):
                spool_message(spool, "alice@example.test", [f"r{i}@remote.test"])
            sink.wait_for(40, timeout=30)
            assert time.monotonic() - start < 4.0, time.monotonic() - start
            wait_for(lambda: not spool_files(spool, "incoming") and not spool_files(spool, "active"), 10,
                     what="the queue empty")
        finally:
            q.stop()
