"""End of data: DKIM verification, DMARC, and the Authentication-Results header, with
messages signed here by dkimpy and keys published on the loopback DNS server."""

from __future__ import annotations

import base64

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.trial import unittest

from common.errors import PermanentError
from mta.checks import DataVerdict
from mta.checks.authresults import authserv_id_of, build_header, header_fields, result_entry
from tests.mta.test_checks_spf import make_checks
from tests.support.dnsserver import DnsServerMixin

CLIENT = "192.0.2.10"    # allowed by every SPF record below
STRANGER = "203.0.113.5"  # allowed by none


def new_key() -> tuple[bytes, str]:
    """(private key PEM, the p= value of its DNS record)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                            serialization.NoEncryption())
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return pem, base64.b64encode(der).decode()


KEY, PUBLIC = new_key()
OTHER_KEY, _ = new_key()


def message(from_addr: str, extra_headers: str = "", body: str = "Hello.\r\n") -> bytes:
    return (f"{extra_headers}From: Someone <{from_addr}>\r\nTo: user@receiver.test\r\nSubject: test\r\n"
            f"Date: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <1@{from_addr.split('@')[1]}>\r\n\r\n{body}").encode()


def signed(msg: bytes, domain: str, selector: str = "sel", key: bytes = KEY) -> bytes:
    sig = dkim.sign(msg, selector.encode(), domain.encode(), key,
                    include_headers=[b"from", b"to", b"subject", b"date", b"message-id"])
    return sig + msg


def dkim_key(p: str = PUBLIC) -> dict:
    return {"TXT": [f"v=DKIM1; k=rsa; p={p}"]}


def spf_allowing_client() -> dict:
    return {"TXT": [f"v=spf1 ip4:{CLIENT} -all"]}


RECORDS = {
    # p=reject, relaxed alignment
    "reject.test": spf_allowing_client(),
    "_dmarc.reject.test": {"TXT": ["v=DMARC1; p=reject; sp=quarantine; rua=mailto:d@reject.test"]},
    "sel._domainkey.reject.test": dkim_key(),
    "slowkey._domainkey.reject.test": {"TXT": "timeout"},
    "mail.reject.test": spf_allowing_client(),
    # p=quarantine and p=none
    "quarantine.test": spf_allowing_client(),
    "_dmarc.quarantine.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "sel._domainkey.quarantine.test": dkim_key(),
    "none.test": spf_allowing_client(),
    "_dmarc.none.test": {"TXT": ["v=DMARC1; p=none"]},
    # strict alignment
    "strict.test": spf_allowing_client(),
    "_dmarc.strict.test": {"TXT": ["v=DMARC1; p=reject; adkim=s; aspf=s"]},
    "sel._domainkey.strict.test": dkim_key(),
    "mail.strict.test": spf_allowing_client(),
    # no DMARC record; a DMARC lookup that times out
    "nodmarc.test": spf_allowing_client(),
    "sel._domainkey.nodmarc.test": dkim_key(),
    "_dmarc.slow.test": {"TXT": "timeout"},
    "slow.test": spf_allowing_client(),
}


class DataChecksTests(DnsServerMixin, unittest.TestCase):
    RECORDS = RECORDS

    def checks(self, yaml_text: str = "", timeout: float = 0.5):
        checks = make_checks(self.dns_server, yaml_text, timeout)
        self.addCleanup(checks.close)
        return checks

    async def data(self, msg: bytes, sender: str, ip: str = CLIENT, checks=None, helo: str = "client.example",
                   spf_at_mail: bool = True) -> DataVerdict:
        checks = checks or self.checks()
        info = {"client_ip": ip, "helo": helo, "sender": sender}
        if spf_at_mail:
            await checks.mail_from(ip, helo, sender, info)
        verdict = await checks.data(info, msg)
        self.assertIsInstance(verdict, DataVerdict)
        return verdict

    def results(self, verdict: DataVerdict) -> str:
        """Our Authentication-Results value: it is the first header field."""
        fields = header_fields(verdict.message)
        self.assertEqual(fields[0][0], "authentication-results")
        self.assertEqual(authserv_id_of(fields[0][1]), "mx.receiver.test")
        return fields[0][1]

    async def test_dkim_pass_gives_dmarc_pass(self):
        msg = signed(message("alice@reject.test"), "reject.test")
        verdict = await self.data(msg, "bounces@elsewhere.example", ip=STRANGER)  # SPF of another domain
        self.assertIsNone(verdict.error)
        ar = self.results(verdict)
        self.assertIn("dkim=pass header.d=reject.test header.s=sel", ar)
        self.assertIn("dmarc=pass header.from=reject.test", ar)
        self.assertTrue(verdict.message.endswith(msg))
        self.assertEqual(verdict.extra, {})

    async def test_dkim_fail_and_no_spf_pass_is_rejected_for_p_reject(self):
        msg = signed(message("alice@reject.test"), "reject.test").replace(b"Hello.", b"Hullo.")
        verdict = await self.data(msg, "alice@reject.test", ip=STRANGER)
        self.assertIsInstance(verdict.error, PermanentError)
        self.assertEqual((verdict.error.code, verdict.error.enhanced), (550, "5.7.1"))
        self.assertIn("reject.test", verdict.error.public)
        ar = self.results(verdict)
        self.assertIn("spf=fail smtp.mailfrom=reject.test", ar)
        self.assertIn("dkim=fail header.d=reject.test", ar)
        self.assertIn("dmarc=fail (p=reject) header.from=reject.test", ar)

    async def test_signature_by_the_wrong_key_fails(self):
        msg = signed(message("alice@reject.test"), "reject.test", key=OTHER_KEY)
        verdict = await self.data(msg, "", ip=STRANGER)
        self.assertIn("dkim=fail", self.results(verdict))
        self.assertEqual(verdict.error.code, 550)

    async def test_missing_key_is_permerror(self):
        msg = signed(message("alice@nodmarc.test"), "nodmarc.test", selector="gone")
        verdict = await self.data(msg, "alice@nodmarc.test")
        ar = self.results(verdict)
        self.assertIn("dkim=permerror header.d=nodmarc.test header.s=gone", ar)
        self.assertIn("spf=pass", ar)
        self.assertIn("dmarc=none header.from=nodmarc.test", ar)
        self.assertIsNone(verdict.error)

    async def test_aligned_spf_alone_passes_dmarc(self):
        verdict = await self.data(message("alice@reject.test"), "bounces@mail.reject.test")
        ar = self.results(verdict)
        self.assertIn("spf=pass smtp.mailfrom=mail.reject.test", ar)
        self.assertIn("dkim=none", ar)
        self.assertIn("dmarc=pass", ar)
        self.assertIsNone(verdict.error)

    async def test_spf_is_run_at_data_when_mail_from_did_not(self):
        verdict = await self.data(message("alice@reject.test"), "bounces@reject.test", spf_at_mail=False)
        self.assertIn("spf=pass smtp.mailfrom=reject.test", self.results(verdict))
        self.assertIsNone(verdict.error)

    async def test_empty_sender_uses_the_helo_identity(self):
        verdict = await self.data(message("alice@reject.test"), "", helo="mail.reject.test")
        ar = self.results(verdict)
        self.assertIn("spf=pass smtp.helo=mail.reject.test", ar)
        # RFC 7208 2.4: with a null reverse-path the MAIL FROM identity is postmaster@HELO,
        # so DMARC (RFC 7489 3.1.2) aligns the HELO domain.
        self.assertIn("dmarc=pass", ar)
        self.assertIsNone(verdict.error)
        verdict = await self.data(message("alice@reject.test"), "", helo="client.example")
        self.assertIn("dmarc=fail", self.results(verdict))
        self.assertEqual(verdict.error.code, 550)

    async def test_p_quarantine_is_accepted_and_marked(self):
        verdict = await self.data(message("alice@quarantine.test"), "x@elsewhere.example", ip=STRANGER)
        self.assertIsNone(verdict.error)
        self.assertEqual(verdict.extra, {"dmarc": "quarantine"})
        self.assertTrue(verdict.message.startswith(b"X-Postroom-Quarantine: dmarc\r\nAuthentication-Results: "))
        self.assertIn(b"dmarc=fail (p=quarantine)", verdict.message)

    async def test_subdomain_policy_applies_to_subdomains(self):
        verdict = await self.data(message("alice@news.reject.test"), "x@elsewhere.example", ip=STRANGER)
        self.assertIsNone(verdict.error)  # sp=quarantine
        self.assertEqual(verdict.extra, {"dmarc": "quarantine"})

    async def test_p_none_is_recorded_only(self):
        verdict = await self.data(message("alice@none.test"), "x@elsewhere.example", ip=STRANGER)
        self.assertIsNone(verdict.error)
        self.assertEqual(verdict.extra, {})
        self.assertIn("dmarc=fail (p=none) header.from=none.test", self.results(verdict))

    async def test_relaxed_alignment_accepts_the_organizational_domain(self):
        msg = signed(message("alice@news.reject.test"), "reject.test")
        verdict = await self.data(msg, "x@elsewhere.example", ip=STRANGER)
        self.assertIn("dmarc=pass header.from=news.reject.test", self.results(verdict))
        self.assertEqual(verdict.extra, {})

    async def test_strict_alignment_needs_the_exact_domain(self):
        msg = signed(message("alice@mail.strict.test"), "strict.test")
        verdict = await self.data(msg, "bounces@mail.strict.test")
        ar = self.results(verdict)
        self.assertIn("dkim=pass header.d=strict.test", ar)   # d= is the parent: not aligned
        self.assertIn("spf=pass smtp.mailfrom=mail.strict.test", ar)  # aligned exactly
        self.assertIn("dmarc=pass", ar)
        verdict = await self.data(msg, "bounces@strict.test")  # neither aligned exactly
        self.assertIn("dmarc=fail (p=reject)", self.results(verdict))
        self.assertEqual(verdict.error.code, 550)
        msg = signed(message("alice@strict.test"), "strict.test")
        verdict = await self.data(msg, "bounces@mail.strict.test")
        self.assertIn("dmarc=pass", self.results(verdict))

    async def test_policy_actions_are_configurable(self):
        checks = self.checks("checks:\n  dmarc:\n    reject: quarantine\n    quarantine: reject\n")
        verdict = await self.data(message("alice@reject.test"), "x@elsewhere.example", ip=STRANGER, checks=checks)
        self.assertIsNone(verdict.error)
        self.assertEqual(verdict.extra, {"dmarc": "quarantine"})
        verdict = await self.data(message("alice@quarantine.test"), "x@elsewhere.example", ip=STRANGER, checks=checks)
        self.assertEqual(verdict.error.code, 550)
        checks = self.checks("checks:\n  dmarc:\n    enabled: false\n  dkim:\n    enabled: false\n")
        verdict = await self.data(message("alice@reject.test"), "x@elsewhere.example", ip=STRANGER, checks=checks)
        self.assertIsNone(verdict.error)
        self.assertEqual(self.results(verdict), "mx.receiver.test; spf=none smtp.mailfrom=elsewhere.example; "
                                                "spf=none smtp.helo=client.example")

    async def test_dmarc_dns_timeout_gives_451_4_4_3(self):
        verdict = await self.data(message("alice@slow.test"), "x@slow.test")
        self.assertEqual((verdict.error.code, verdict.error.enhanced, verdict.error.temporary), (451, "4.4.3", True))
        self.assertIn("dmarc=temperror", self.results(verdict))

    async def test_dkim_key_timeout_defers_only_when_dmarc_does_not_pass(self):
        msg = signed(message("alice@reject.test"), "reject.test", selector="slowkey")
        verdict = await self.data(msg, "x@elsewhere.example", ip=STRANGER)
        self.assertIn("dkim=temperror header.d=reject.test header.s=slowkey", self.results(verdict))
        self.assertEqual((verdict.error.code, verdict.error.enhanced), (451, "4.4.3"))
        verdict = await self.data(msg, "x@reject.test")  # aligned SPF pass: DMARC passes anyway
        self.assertIn("dmarc=pass", self.results(verdict))
        self.assertIsNone(verdict.error)

    async def test_two_signatures_are_both_reported(self):
        msg = signed(signed(message("alice@reject.test"), "quarantine.test"), "reject.test", selector="gone")
        verdict = await self.data(msg, "x@elsewhere.example", ip=STRANGER)
        ar = self.results(verdict)
        self.assertIn("dkim=permerror header.d=reject.test header.s=gone", ar)
        self.assertIn("dkim=pass header.d=quarantine.test", ar)
        self.assertIn("dmarc=fail", ar)  # quarantine.test is not aligned with reject.test

    async def test_forged_results_and_quarantine_marks_are_removed(self):
        forged = ("Authentication-Results: mx.receiver.test; dkim=pass header.d=reject.test\r\n"
                  "Authentication-Results: (sneaky) \"MX.Receiver.Test\"\r\n ; dmarc=pass\r\n"
                  "X-Postroom-Quarantine: none\r\n"
                  "Authentication-Results: other.example; spf=pass smtp.mailfrom=reject.test\r\n")
        verdict = await self.data(message("alice@reject.test", forged), "x@elsewhere.example", ip=STRANGER)
        self.assertEqual(verdict.error.code, 550)
        fields = header_fields(verdict.message)
        ours = [v for n, v in fields if n == "authentication-results" and authserv_id_of(v) == "mx.receiver.test"]
        self.assertEqual(len(ours), 1)
        self.assertIn("dmarc=fail", ours[0])
        self.assertNotIn("x-postroom-quarantine", [n for n, _ in fields])
        self.assertIn(("authentication-results", "other.example; spf=pass smtp.mailfrom=reject.test"), fields)
        self.assertIn(b"Hello.", verdict.message)

    async def test_message_without_from_gets_dmarc_none(self):
        msg = b"Subject: no from\r\n\r\nbody\r\n"
        verdict = await self.data(msg, "x@reject.test")
        self.assertIn("dmarc=none", self.results(verdict))
        msg = b"From: a@reject.test, b@quarantine.test\r\nSubject: two\r\n\r\nbody\r\n"
        verdict = await self.data(msg, "x@reject.test")
        self.assertIn("dmarc=permerror", self.results(verdict))
        self.assertIsNone(verdict.error)

    async def test_configured_authserv_id(self):
        checks = self.checks("checks:\n  authserv_id: auth.receiver.test\n")
        forged = "Authentication-Results: auth.receiver.test; dmarc=pass\r\n"
        verdict = await self.data(message("alice@none.test", forged), "x@none.test", checks=checks)
        fields = header_fields(verdict.message)
        self.assertEqual([authserv_id_of(v) for n, v in fields if n == "authentication-results"], ["auth.receiver.test"])


class AuthResultsHeaderTests(unittest.SynchronousTestCase):
    def test_values_from_outside_cannot_inject(self):
        entry = result_entry("spf", "pass", smtp_helo="evil\r\nX-Injected: yes; dkim=pass")
        self.assertNotIn("\r", entry)
        self.assertNotIn("\n", entry)
        self.assertTrue(entry.startswith('spf=pass smtp.helo="evil'))
        header = build_header("mx.receiver.test", [entry])
        self.assertEqual(header.count(b"\r\n"), 2)  # folded once, ended once
        self.assertEqual(header_fields(header + b"\r\n")[0][0], "authentication-results")

    def test_authserv_id_forms(self):
        self.assertEqual(authserv_id_of("mx.example; spf=pass"), "mx.example")
        self.assertEqual(authserv_id_of(" (c (nested)) MX.Example. 1; none"), "mx.example")
        self.assertEqual(authserv_id_of('"mx.example"; none'), "mx.example")
        self.assertEqual(authserv_id_of("mx.example;spf=pass"), "mx.example")


class FromDomainTests(unittest.SynchronousTestCase):
    def test_from_domain_forms(self):
        from mta.checks.dmarc import from_domain
        self.assertEqual(from_domain([("from", "A <a@Example.ORG.>")])[0], "example.org")
        self.assertEqual(from_domain([("from", "a@bücher.example")])[0], "xn--bcher-kva.example")
        self.assertEqual(from_domain([("from", "a@x.example, b@x.example")])[0], "x.example")
        self.assertEqual(from_domain([("from", "a@x.example, b@y.example")])[1], "permerror")
        self.assertEqual(from_domain([("from", "a@x.example"), ("from", "b@x.example")])[1], "permerror")
        self.assertEqual(from_domain([("from", "a@[192.0.2.1]")])[1], "permerror")
        self.assertEqual(from_domain([("from", "undisclosed")])[1], "none")
        self.assertEqual(from_domain([("subject", "x")])[1], "none")


class HeaderFuzzTests(unittest.SynchronousTestCase):
    def test_removing_fields_never_breaks_or_grows_a_message(self):
        from hypothesis import given, settings, strategies as st

        from mta.checks.authresults import remove_fields

        line = st.one_of(
            st.sampled_from([b"Authentication-Results: mx.receiver.test; spf=pass\r\n", b" folded\r\n",
                             b"X-Postroom-Quarantine: dmarc\r\n", b"\r\n", b"Subject: x\r\n",
                             b"Authentication-Results: (c) other.example; none\r\n"]),
            st.binary(max_size=40))

        @settings(max_examples=300, deadline=None)
        @given(st.lists(line, max_size=12))
        def check(lines):
            msg = b"".join(lines)
            out, removed = remove_fields(msg, "mx.receiver.test", also=("X-Postroom-Quarantine",))
            self.assertLessEqual(len(out), len(msg))
            self.assertEqual(removed == 0, out == msg)
            self.assertTrue(msg.endswith(out.split(b"\r\n\r\n", 1)[1]) if b"\r\n\r\n" in out else True)
            header_fields(out)

        check()
