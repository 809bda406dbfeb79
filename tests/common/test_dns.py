"""common.dns against the real loopback DNS server of tests.support.dnsserver."""

from __future__ import annotations

import dns.name
from twisted.internet import reactor
from twisted.trial import unittest

from common.dns import DnsTemporaryError, NoAnswer, NXDomain, Resolver, reverse_name
from tests.support.dnsserver import DnsServerMixin

LONG_TXT = "v=DKIM1; k=rsa; p=" + "A" * 600

RECORDS = {
    "example.test": {"A": ["192.0.2.1", "192.0.2.2"], "AAAA": ["2001:db8::1"],
                     "MX": [[10, "mx.example.test"], [20, "mx2.example.test"]],
                     "TXT": ["v=spf1 -all"]},
    "mx.example.test": {"A": ["192.0.2.25"]},
    "nullmx.test": {"MX": [[0, "."]]},
    "alias.example.test": {"CNAME": "example.test"},
    "sel._domainkey.example.test": {"TXT": [LONG_TXT]},
    "split.example.test": {"TXT": [["v=spf1 ", "ip4:192.0.2.1 ", "-all"]]},
    "1.2.0.192.in-addr.arpa": {"PTR": ["example.test"]},
    "broken.test": "servfail",
    "slow.test": {"A": "timeout"},
    "*.wild.test": {"A": ["127.0.0.2"]},
    "*.deep.wild.test": "servfail",
}


class ResolverTests(DnsServerMixin, unittest.TestCase):
    RECORDS = RECORDS

    def setUp(self):
        self.resolver = Resolver(["127.0.0.1"], port=self.dns_server.port, timeout=1.0, reactor=reactor)
        self.addCleanup(self.resolver.close)

    async def test_a_and_aaaa(self):
        rows = await self.resolver.query("example.test", "A")
        self.assertEqual(sorted(r.address for r in rows), ["192.0.2.1", "192.0.2.2"])
        rows = await self.resolver.query("EXAMPLE.test.", "AAAA")
        self.assertEqual([r.address for r in rows], ["2001:db8::1"])

    async def test_mx_and_null_mx(self):
        rows = await self.resolver.query("example.test", "MX")
        self.assertEqual(sorted((r.preference, r.exchange.to_text()) for r in rows),
                         [(10, "mx.example.test."), (20, "mx2.example.test.")])
        rows = await self.resolver.query("nullmx.test", "MX")
        self.assertEqual([(r.preference, r.exchange) for r in rows], [(0, dns.name.root)])

    async def test_cname_is_followed(self):
        rows = await self.resolver.query("alias.example.test", "A")
        self.assertEqual(sorted(r.address for r in rows), ["192.0.2.1", "192.0.2.2"])

    async def test_long_txt_is_split_and_joined_over_udp_or_tcp(self):
        rows = await self.resolver.query("sel._domainkey.example.test", "TXT")
        self.assertTrue(all(len(s) <= 255 for s in rows[0].strings))
        self.assertGreater(len(rows[0].strings), 2)
        joined = await self.resolver.in_thread(self.resolver.txt_sync, "sel._domainkey.example.test")
        self.assertEqual(joined, [LONG_TXT.encode()])
        joined = await self.resolver.in_thread(self.resolver.txt_sync, "split.example.test")
        self.assertEqual(joined, [b"v=spf1 ip4:192.0.2.1 -all"])

    async def test_wildcards(self):
        rows = await self.resolver.query("10.2.0.192.wild.test", "A")
        self.assertEqual([r.address for r in rows], ["127.0.0.2"])
        with self.assertRaises(DnsTemporaryError):
            await self.resolver.query("x.deep.wild.test", "A")

    async def test_ptr(self):
        rows = await self.resolver.query(reverse_name("192.0.2.1"), "PTR")
        self.assertEqual([r.target.to_text() for r in rows], ["example.test."])

    async def test_nxdomain_and_no_answer(self):
        with self.assertRaises(NXDomain):
            await self.resolver.query("nothing.example.test", "A")
        with self.assertRaises(NoAnswer):
            await self.resolver.query("mx.example.test", "MX")
        with self.assertRaises(NoAnswer):  # an empty non-terminal exists
            await self.resolver.query("_domainkey.example.test", "TXT")
        with self.assertRaises(NXDomain):  # cannot exist
            await self.resolver.query("a" * 70 + ".test", "A")

    async def test_servfail_and_timeout_are_temporary(self):
        with self.assertRaises(DnsTemporaryError) as caught:
            await self.resolver.query("broken.test", "A")
        self.assertTrue(caught.exception.temporary)
        with self.assertRaises(DnsTemporaryError):
            await self.resolver.query("slow.test", "A")

    async def test_no_server_listening_is_temporary(self):
        from tests.support import free_port
        dead = Resolver(["127.0.0.1"], port=free_port(), timeout=0.5, reactor=reactor)
        self.addCleanup(dead.close)
        with self.assertRaises(DnsTemporaryError):
            await dead.query("example.test", "A")

    async def test_records_can_change_at_runtime(self):
        self.dns_server.update({**RECORDS, "new.test": {"A": ["192.0.2.9"]}})
        try:
            rows = await self.resolver.query("new.test", "A")
            self.assertEqual([r.address for r in rows], ["192.0.2.9"])
        finally:
            self.dns_server.update(RECORDS)
        with self.assertRaises(NXDomain):
            await self.resolver.query("new.test", "A")

    def test_reverse_names(self):
        self.assertEqual(reverse_name("192.0.2.1", "bl.test").to_text(), "1.2.0.192.bl.test.")
        self.assertTrue(reverse_name("2001:db8::1", "bl.test").to_text().startswith("1.0.0.0."))
        with self.assertRaises(Exception):
            reverse_name("not-an-ip")
