"""MX routing against the loopback DNS server: a domain without MX records is its own
mail exchanger (A, then AAAA), equal preferences are shuffled (measured), and an MX
lookup that times out defers instead of bouncing."""

from __future__ import annotations

from twisted.internet import reactor
from twisted.trial import unittest

from common.dns import Resolver
from common.spool import parse
from mta.queue.routing import NextHop, resolve_hosts
from tests.support import free_port, wait_for
from tests.support.dnsserver import DnsServer, DnsServerMixin

from .queue_sink import Sink, mta_config, spool_files, spool_message, start_queue


def test_no_mx_falls_back_to_the_domains_own_addresses(tmp_path):
    port = free_port("127.0.0.3")
    with Sink("127.0.0.3", port=port) as v4, Sink("::1", port=port) as v6, \
            DnsServer({"plain4.test": {"A": ["127.0.0.3"]}, "plain6.test": {"AAAA": ["::1"]},
                       "both.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]}}) as dns:
        etc = mta_config(tmp_path, f"smtp_port: {port}\ntls: none",
                         f"dns:\n  nameservers: [127.0.0.1]\n  port: {dns.port}\n")
        spool = tmp_path / "spool"
        for rcpt in ("a@plain4.test", "b@plain6.test", "c@both.test"):
            spool_message(spool, "alice@example.test", [rcpt])
        q = start_queue(etc)
        try:
            wait_for(lambda: len(v4.messages) + len(v6.messages) == 3, 20, what="three deliveries")
            assert [m.recipients for m in v4.messages] == [["a@plain4.test"]]
            # IPv6 is tried first when a name has both.
            assert sorted(r for m in v6.messages for r in m.recipients) == ["b@plain6.test", "c@both.test"]
            wait_for(lambda: not spool_files(spool, "active"), 10, what="done")
            assert not spool_files(spool, "deferred")
        finally:
            q.stop()


def test_mx_lookup_timeout_defers(tmp_path):
    with DnsServer({"slow.test": {"MX": "timeout"}}) as dns:
        etc = mta_config(tmp_path, "tls: none\nretry_first: 1h",
                         f"dns:\n  nameservers: [127.0.0.1]\n  port: {dns.port}\n  timeout: 1s\n")
        spool = tmp_path / "spool"
        qid = spool_message(spool, "alice@example.test", ["x@slow.test"])
        q = start_queue(etc)
        try:
            wait_for(lambda: qid in spool_files(spool, "deferred"), 15, what="deferral")
            r = parse(spool / "deferred" / qid).envelope.recipients[0]
            assert r.state == "deferred" and r.status == "4.4.3" and "MX lookup for slow.test" in r.reason
            assert not spool_files(spool, "incoming") and not spool_files(spool, "mda")   # no bounce
        finally:
            q.stop()


class EqualPreferenceShuffle(DnsServerMixin, unittest.TestCase):
    RECORDS = {
        "eq.test": {"MX": [[10, "a.eq.test"], [10, "b.eq.test"], [20, "c.eq.test"]]},
        "a.eq.test": {"A": ["127.0.0.10"]},
        "b.eq.test": {"A": ["127.0.0.11"]},
        "c.eq.test": {"A": ["127.0.0.12"]},
    }
    ROUNDS = 100

    def setUp(self):
        self.resolver = Resolver(["127.0.0.1"], port=self.dns_server.port, timeout=2.0, reactor=reactor)
        self.addCleanup(self.resolver.close)

    async def test_equal_preferences_come_in_both_orders_the_higher_last(self):
        hop = NextHop("smtp", "eq.test", 25, True, "eq.test")
        first_a = 0
        for _ in range(self.ROUNDS):
            hosts = await resolve_hosts(self.resolver, hop)
            names = [h.name for h in hosts]
            self.assertEqual(sorted(names[:2]), ["a.eq.test", "b.eq.test"])
            self.assertEqual(names[2], "c.eq.test")            # preference 20 always after both 10s
            first_a += names[0] == "a.eq.test"
        # A fair shuffle puts a first about half the time: binomial(100, 0.5) has a
        # standard deviation of 5, so 25..75 fails a fair shuffle once in ~10^6 runs,
        # while a fixed order (0 or 100) always fails.
        self.assertTrue(25 <= first_a <= 75, first_a)
