"""SPF at MAIL FROM and DNS blocklists at connect and RCPT, through MessageChecks,
against the loopback DNS server."""

from __future__ import annotations

from pathlib import Path

from twisted.internet import reactor
from twisted.trial import unittest

from common.config import Config
from common.config.core import PostroomConfig
from common.config.loader import parse_text
from common.config.mta import MtaConfig
from common.errors import PermanentError, TemporaryError
from mta.checks import MessageChecks
from mta.checks.spf import SpfResult
from tests.support.dnsserver import DnsServer, DnsServerMixin

CLIENT = "192.0.2.10"
OTHER = "203.0.113.5"


def make_checks(server: DnsServer, yaml_text: str = "", timeout: float = 0.5) -> MessageChecks:
    """MessageChecks from an mta.yaml text, its DNS pointed at the test server."""
    dns_yaml = f"dns:\n  nameservers: [127.0.0.1]\n  port: {server.port}\n  timeout: {timeout}s\n"
    daemon = parse_text(dns_yaml + yaml_text, MtaConfig, Path("/nonexistent/mta.yaml"))
    cfg = Config(dir=Path("/nonexistent"), core=PostroomConfig(hostname="mx.receiver.test"), daemon=daemon)
    checks = MessageChecks(cfg, reactor)
    return checks


SPF_RECORDS = {
    "pass.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
    "fail.test": {"TXT": ["v=spf1 ip4:198.51.100.1 -all"]},
    "softfail.test": {"TXT": ["v=spf1 ~all"]},
    "neutral.test": {"TXT": ["v=spf1 ?all"]},
    "none.test": {"A": [CLIENT], "TXT": ["just some text"]},
    "permerror.test": {"TXT": ["v=spf1 moo -all"]},
    "twice.test": {"TXT": ["v=spf1 -all", "v=spf1 +all"]},
    "temperror.test": {"TXT": "servfail"},
    "slow.test": {"TXT": "timeout"},
    "include.test": {"TXT": ["v=spf1 include:pass.test -all"]},
    "amx.test": {"TXT": ["v=spf1 a mx -all"], "MX": [[10, "mx.amx.test"]]},
    "mx.amx.test": {"A": [CLIENT]},
    "longspf.test": {"TXT": ["v=spf1 " + " ".join(f"ip4:10.0.{i}.0/24" for i in range(30)) + f" ip4:{CLIENT} -all"]},
    "helo.test": {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]},
    # DNS blocklists (RFC 5782): 192.0.2.10 and 2001:db8::10 are listed by bl.test
    "10.2.0.192.bl.test": {"A": ["127.0.0.2"], "TXT": ["listed"]},
    "0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.bl.test": {"A": ["127.0.0.2"]},
    "5.113.0.203.refusing.test": {"A": ["127.255.255.254"]},
    "ok.test": {"A": ["192.0.2.1"]},
    "broken.test": "servfail",
    "*.broken.test": "servfail",
}


class SpfTests(DnsServerMixin, unittest.TestCase):
    RECORDS = SPF_RECORDS

    def checks(self, yaml_text: str = "", timeout: float = 0.5) -> MessageChecks:
        checks = make_checks(self.dns_server, yaml_text, timeout)
        self.addCleanup(checks.close)
        return checks

    async def spf(self, checks, sender, ip=CLIENT, helo="client.example"):
        info: dict = {}
        error = await checks.mail_from(ip, helo, sender, info)
        return error, info["spf"]

    async def test_every_result_is_recorded_and_only_temperror_refuses_by_default(self):
        checks = self.checks()
        expected = {
            "pass": "pass", "fail": "fail", "softfail": "softfail", "neutral": "neutral", "none": "none",
            "nx": "none", "permerror": "permerror", "twice": "permerror", "include": "pass", "amx": "pass",
            "longspf": "pass",
        }
        for name, result in expected.items():
            error, spf = await self.spf(checks, f"someone@{name}.test")
            self.assertIsInstance(spf, SpfResult)
            self.assertEqual((spf.result, spf.identity, spf.domain), (result, "mailfrom", f"{name}.test"), name)
            self.assertIsNone(error, name)
        error, spf = await self.spf(checks, "someone@temperror.test")
        self.assertEqual(spf.result, "temperror")
        self.assertIsInstance(error, TemporaryError)
        self.assertEqual((error.code, error.enhanced), (451, "4.4.3"))

    async def test_dns_timeout_gives_451_4_4_3(self):
        error, spf = await self.spf(self.checks(timeout=0.3), "someone@slow.test")
        self.assertEqual(spf.result, "temperror")
        self.assertEqual((error.code, error.enhanced, error.temporary), (451, "4.4.3", True))

    async def test_empty_sender_checks_the_helo_identity(self):
        checks = self.checks()
        error, spf = await self.spf(checks, "", helo="helo.test")
        self.assertEqual((spf.result, spf.identity, spf.domain), ("pass", "helo", "helo.test"))
        error, spf = await self.spf(checks, "", ip=OTHER, helo="helo.test")
        self.assertEqual((spf.result, spf.identity), ("fail", "helo"))
        self.assertIsNone(error)

    async def test_mail_from_and_helo_are_both_checked(self):
        checks = self.checks("checks:\n  spf:\n    fail: reject\n")
        # MAIL FROM passes, HELO fails: the HELO result is reported, MAIL FROM's decides.
        error, spf = await self.spf(checks, "someone@pass.test", helo="fail.test")
        self.assertEqual((spf.result, spf.identity, spf.domain), ("pass", "mailfrom", "pass.test"))
        self.assertEqual((spf.helo_result.result, spf.helo_result.identity, spf.helo_result.domain),
                         ("fail", "helo", "fail.test"))
        self.assertIsNone(error)
        # The other way round: refused on MAIL FROM's fail, although HELO passes.
        error, spf = await self.spf(checks, "someone@fail.test", helo="helo.test")
        self.assertEqual((spf.result, spf.helo_result.result), ("fail", "pass"))
        self.assertEqual((error.code, error.enhanced), (550, "5.7.23"))
        # A HELO that is an address literal or a bare word is no identity to check.
        for helo in ("[192.0.2.10]", "localhost"):
            _, spf = await self.spf(checks, "someone@pass.test", helo=helo)
            self.assertIsNone(spf.helo_result, helo)

    async def test_policy_per_result_is_configurable(self):
        checks = self.checks("checks:\n  spf:\n    fail: reject\n    softfail: defer\n    permerror: reject\n    temperror: record\n")
        error, _ = await self.spf(checks, "someone@fail.test")
        self.assertIsInstance(error, PermanentError)
        self.assertEqual((error.code, error.enhanced), (550, "5.7.23"))
        self.assertIn("fail.test", error.public)
        error, _ = await self.spf(checks, "someone@softfail.test")
        self.assertEqual((error.code, error.enhanced, error.temporary), (451, "4.7.1", True))
        error, _ = await self.spf(checks, "someone@permerror.test")
        self.assertEqual((error.code, error.enhanced), (550, "5.7.24"))
        error, spf = await self.spf(checks, "someone@temperror.test")
        self.assertEqual(spf.result, "temperror")
        self.assertIsNone(error)
        error, _ = await self.spf(checks, "someone@pass.test")
        self.assertIsNone(error)

    async def test_spf_can_be_switched_off(self):
        checks = self.checks("checks:\n  spf:\n    enabled: false\n")
        info: dict = {}
        self.assertIsNone(await checks.mail_from(CLIENT, "x", "a@temperror.test", info))
        self.assertEqual(info, {})


class DnsblTests(DnsServerMixin, unittest.TestCase):
    RECORDS = SPF_RECORDS

    def checks(self, yaml_text: str) -> MessageChecks:
        checks = make_checks(self.dns_server, yaml_text)
        self.addCleanup(checks.close)
        return checks

    async def test_listed_client_is_refused_at_connect_naming_the_list(self):
        checks = self.checks("checks:\n  dnsbl:\n    zones: [ok.test, bl.test]\n")
        error = await checks.connect(CLIENT)
        self.assertIsInstance(error, PermanentError)
        self.assertEqual((error.code, error.enhanced), (554, "5.7.1"))
        self.assertIn("bl.test", error.public)
        self.assertIn(CLIENT, error.public)
        self.assertIsNone(await checks.connect("192.0.2.11"))
        self.assertIsNone(await checks.rcpt(CLIENT, "user@example.test"))  # stage is connect

    async def test_ipv6_and_ipv4_mapped_clients(self):
        checks = self.checks("checks:\n  dnsbl:\n    zones: [bl.test]\n")
        error = await checks.connect("2001:db8::10")
        self.assertEqual(error.code, 554)
        error = await checks.connect("::ffff:192.0.2.10")
        self.assertEqual(error.code, 554)
        self.assertIsNone(await checks.connect("2001:db8::11"))

    async def test_listed_client_is_refused_at_rcpt_when_configured(self):
        checks = self.checks("checks:\n  dnsbl:\n    zones: [bl.test]\n    stage: rcpt\n")
        self.assertIsNone(await checks.connect(CLIENT))
        error = await checks.rcpt(CLIENT, "user@example.test")
        self.assertEqual((error.code, error.enhanced), (554, "5.7.1"))
        self.assertIn("bl.test", error.public)
        self.assertIsNone(await checks.rcpt("192.0.2.11", "user@example.test"))

    async def test_unanswered_blocklist_defers_unless_configured(self):
        checks = self.checks("checks:\n  dnsbl:\n    zones: [broken.test]\n")
        error = await checks.connect(CLIENT)
        self.assertEqual((error.code, error.enhanced, error.temporary), (451, "4.4.3", True))
        checks = self.checks("checks:\n  dnsbl:\n    zones: [refusing.test]\n")
        error = await checks.connect(OTHER)
        self.assertEqual((error.code, error.enhanced), (451, "4.4.3"))
        checks = self.checks("checks:\n  dnsbl:\n    zones: [broken.test]\n    temperror: record\n")
        self.assertIsNone(await checks.connect(CLIENT))

    async def test_a_listing_wins_over_a_broken_list(self):
        checks = self.checks("checks:\n  dnsbl:\n    zones: [broken.test, bl.test]\n")
        error = await checks.connect(CLIENT)
        self.assertEqual(error.code, 554)

    async def test_no_zones_and_non_ip_clients_pass(self):
        checks = self.checks("")
        self.assertIsNone(await checks.connect(CLIENT))
        checks = self.checks("checks:\n  dnsbl:\n    zones: [bl.test]\n")
        self.assertIsNone(await checks.connect("unix-socket"))
