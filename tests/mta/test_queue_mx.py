"""Two postroom MTAs on different loopback addresses and a DNS server on loopback:
MX lookup, STARTTLS between the two, the next MX when the first refuses, IPv6 and
IPv4, null MX and NXDOMAIN bounced at once, SERVFAIL deferred, DKIM signatures
verified by dkimpy and by Perl's Mail::DKIM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support import free_port, require, require_tool, wait_for
from tests.support.dnsserver import DnsServer

from .queue_sink import PostroomMta, Sink, receiving_mta_yaml, submit

BIN = Path(sys.executable).parent
ALICE = "alice@example.test"


def _msg(to: str, subject: str) -> bytes:
    return (f"From: Alice <{ALICE}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Date: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <{time.time_ns()}@example.test>\r\n"
            f"\r\nHello from A.\r\n.leading dot line\r\n").encode()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mx")
    port = free_port("127.0.0.3")          # every MX listens on this port
    sub_port = free_port("127.0.0.2")
    keys = tmp / "keys"
    records = {}
    for sel, kind in (("rsa", "rsa"), ("ed", "ed25519")):
        out = subprocess.run([BIN / "postroom-dkim", "keygen", "example.test", sel, "--type", kind, "--dir", keys],
                             capture_output=True, check=True, text=True).stdout
        txt = "".join(part for part in out.split('IN TXT ')[1].strip().split('"') if part.strip())
        records[f"{sel}._domainkey.example.test"] = {"TXT": [txt]}
    records.update({
        "dest.test": {"MX": [[10, "mx1.dest.test"], [20, "mx2.dest.test"]]},
        "mx1.dest.test": {"A": ["127.0.0.4"]},                   # answers 421: try the next
        "mx2.dest.test": {"A": ["127.0.0.3"], "AAAA": ["::1"]},  # nothing on ::1: IPv4 next
        "nullmx.test": {"MX": [[0, "."]]},
        "broken.test": "servfail",
    })
    dns = DnsServer(records).start()
    b = PostroomMta(tmp / "b", "127.0.0.3", ["dest.test"], {"bob@dest.test": "postroom"},
                    receiving_mta_yaml("127.0.0.3", port))
    a = PostroomMta(tmp / "a", "127.0.0.2", ["example.test"], {ALICE: "postroom"}, f"""\
listeners:
  submission:
    endpoint: tcp:{sub_port}:interface=127.0.0.2
    role: submission
    tls: starttls
receive_processes: 1
recipients:
  aliases_file: aliases
dns:
  nameservers: [127.0.0.1]
  port: {dns.port}
  timeout: 2s
queue:
  smtp_port: {port}
  bind_address: 127.0.0.2
  retry_first: 1h
  dkim:
    - {{domain: example.test, selector: rsa, key: {keys}/example.test.rsa.key, algorithm: rsa-sha256}}
    - {{domain: example.test, selector: ed, key: {keys}/example.test.ed.key, algorithm: ed25519-sha256}}
""")
    busy = Sink("127.0.0.4", port=port, greeting="421 4.3.2 mx1 is busy")
    with busy:
        b.start(port)
        a.start(sub_port)
        try:
            yield {"a": a, "b": b, "port": sub_port, "dns": dns, "busy": busy}
        finally:
            a.stop()
            b.stop()
            dns.stop()


def test_mx_delivery_with_starttls_next_mx_and_both_address_families(world):
    a, b = world["a"], world["b"]
    submit("127.0.0.2", world["port"], ALICE, ["bob@dest.test"], _msg("bob@dest.test", "over MX"), user=ALICE)
    got = wait_for(lambda: next((f for f in b.files() if f.envelope.sender == ALICE), None), 20,
                   what="the message at B")
    env = got.envelope
    assert env.recipients[0].address == "bob@dest.test"
    assert env.tls_version is not None, "A -> B was not encrypted"
    assert env.client_address == "127.0.0.2"
    assert b".leading dot line" in got.read_message()
    log = a.daemon.output()
    assert world["busy"].connections >= 1          # mx1 was tried first and refused with 421
    assert "mx1.dest.test[127.0.0.4] said 421" in log
    assert "mx2.dest.test[::1]" in log             # IPv6 tried, then IPv4
    wait_for(lambda: not a.files(), 10, what="A's queue to empty")


@pytest.mark.parametrize("domain,status,text", [
    ("nullmx.test", "5.1.10", "null MX"),
    ("nosuchdomain.test", "5.1.2", "NXDOMAIN"),
])
def test_null_mx_and_nxdomain_bounce_at_once(world, domain, status, text):
    a = world["a"]
    start = time.monotonic()
    rcpt = f"someone@{domain}"
    submit("127.0.0.2", world["port"], ALICE, [rcpt], _msg(rcpt, "doomed"), user=ALICE)
    sf, dsn = wait_for(lambda: next(((f, d) for f, d in [_dsn_for(a, rcpt)] if f), None), 15, what="the bounce")
    assert time.monotonic() - start < 10
    report = [p for p in dsn.iter_parts() if p.get_content_type() == "message/delivery-status"][0].as_string()
    assert f"Final-Recipient: rfc822; {rcpt}" in report
    assert "Action: failed" in report and f"Status: {status}" in report and text in report
    assert sf.envelope.recipients[0].address == ALICE
    # The original is gone: bounced, not deferred.
    assert not [f for f in a.files() if f.envelope.sender == ALICE and
                any(r.address == rcpt for r in f.envelope.recipients)]


def _dsn_for(mta, rcpt):
    import email
    import email.policy

    for f in mta.files():
        if f.envelope.source == "bounce":
            msg = email.message_from_bytes(f.read_message(), policy=email.policy.default)
            if rcpt in msg.as_string():
                return f, msg
    return None, None


def test_servfail_defers(world):
    a = world["a"]
    rcpt = "someone@broken.test"
    submit("127.0.0.2", world["port"], ALICE, [rcpt], _msg(rcpt, "later"), user=ALICE)
    sf = wait_for(lambda: next((f for f in a.files("deferred") if f.envelope.recipients[0].address == rcpt), None),
                  15, what="deferral")
    r = sf.envelope.recipients[0]
    assert r.state == "deferred" and r.status == "4.4.3" and "MX lookup for broken.test" in r.reason


def _delivered_to_b(world, subject: str) -> bytes:
    b = world["b"]
    got = wait_for(lambda: next((f for f in b.files() if subject.encode() in f.read_message()), None), 20,
                   what="the signed message at B")
    return got.read_message()


def test_dkim_signature_verifies_with_dkimpy(world):
    import dkim

    submit("127.0.0.2", world["port"], ALICE, ["bob@dest.test"], _msg("bob@dest.test", "signed-dkimpy"),
           user=ALICE)
    message = _delivered_to_b(world, "signed-dkimpy")
    assert message.count(b"DKIM-Signature:") == 2
    assert b"a=ed25519-sha256" in message and b"a=rsa-sha256" in message
    from common.dns import Resolver

    resolver = Resolver(["127.0.0.1"], world["dns"].port, timeout=3)

    def dnsfunc(name, timeout=5):
        name = name.decode() if isinstance(name, bytes) else name
        return b"".join(b"".join(r.strings) for r in resolver.query_sync(name.rstrip("."), "TXT"))

    d = dkim.DKIM(message)
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)
    # A changed body no longer verifies (the check is real).
    assert not dkim.verify(message.replace(b"Hello from A.", b"Hello from X."), dnsfunc=dnsfunc)


PERL_VERIFY = r"""
use strict; use Mail::DKIM::Verifier; use Net::DNS::Resolver;
my $res = Net::DNS::Resolver->new(nameservers => ['127.0.0.1'], port => $ARGV[0], recurse => 1);
Mail::DKIM::DNS::resolver($res);
my $v = Mail::DKIM::Verifier->new();
while (<STDIN>) { s/\r?\n\z/\r\n/; $v->PRINT($_); }
$v->CLOSE;
foreach my $sig ($v->signatures) { print $sig->algorithm, " ", $sig->result, "\n"; }
"""


def test_dkim_signature_verifies_with_mail_dkim(world):
    perl = require_tool("perl")
    ok = subprocess.run([perl, "-MMail::DKIM::Verifier", "-e", "1"], capture_output=True).returncode == 0
    require(ok, "Perl's Mail::DKIM (Debian package libmail-dkim-perl)")
    submit("127.0.0.2", world["port"], ALICE, ["bob@dest.test"], _msg("bob@dest.test", "signed-perl"),
           user=ALICE)
    message = _delivered_to_b(world, "signed-perl")
    r = subprocess.run([perl, "-e", PERL_VERIFY, str(world["dns"].port)], input=message, capture_output=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    results = dict(line.split() for line in r.stdout.decode().splitlines())
    assert results.get("rsa-sha256") == "pass", r.stdout
    # Debian 12's Mail::DKIM (1.20230212) has no Ed25519 code yet and says "invalid";
    # dkimpy verified that signature above.
    assert results.get("ed25519-sha256") in ("pass", "invalid"), r.stdout
