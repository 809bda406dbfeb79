"""Two postroom MTAs on different loopback addresses and a DNS server on loopback:
MX lookup, STARTTLS between the two, the next MX when the first refuses, IPv6 and
IPv4, null MX and NXDOMAIN bounced at once, SERVFAIL deferred, DKIM signatures
verified by dkimpy, by Perl's Mail::DKIM (RSA) and by OpenDKIM (RSA and Ed25519, in a
network namespace of the test's own whose DNS server on 127.0.0.1:53 serves the keys)."""

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
            yield {"a": a, "b": b, "port": sub_port, "dns": dns, "busy": busy, "records": records}
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
    # OpenDKIM verifies that signature (test_dkim_signatures_verify_with_opendkim).
    assert results.get("ed25519-sha256") in ("pass", "invalid"), r.stdout


# In a network and mount namespace of its own: loopback up, /etc/resolv.conf replaced by
# one naming 127.0.0.1, the test DNS server on port 53 there; then opendkim-testmsg
# (libopendkim, which asks the system resolver) on each message. $1: the folder.
IN_NAMESPACE = r"""
set -e
ip link set lo up
mount --bind "$1/resolv.conf" /etc/resolv.conf
"$PYTHON" -m tests.support.dnsserver --zone-file "$1/zone.json" --port 53 > "$1/dns.out" &
i=0
until grep -q '^PORT 53' "$1/dns.out"; do
  i=$((i + 1)); [ "$i" -lt 200 ] || { echo "dns server did not start"; exit 1; }; sleep 0.05
done
for m in "$1"/*.eml; do
  if opendkim-testmsg < "$m" > "$m.out" 2>&1; then echo "$(basename "$m") pass"
  else echo "$(basename "$m") fail: $(cat "$m.out")"; fi
done
kill $!
"""


def _only_signature(message: bytes, algorithm: bytes) -> bytes:
    """message without the DKIM-Signature fields of any other algorithm."""
    head, sep, body = message.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    kept = [f for f in fields if not f.lower().startswith(b"dkim-signature:")
            or f"a={algorithm.decode()};".encode() in f.replace(b"\r\n", b"").replace(b" ", b"")]
    return b"\r\n".join(kept) + sep + body


def test_dkim_signatures_verify_with_opendkim(world, tmp_path):
    """Ed25519 (RFC 8463) verified by an implementation other than dkimpy: libopendkim.
    It resolves through the system resolver, so it runs in a namespace where the
    system resolver is the test's DNS server."""
    import json
    import os

    for tool in ("unshare", "ip", "opendkim-testmsg"):
        require_tool(tool)
    submit("127.0.0.2", world["port"], ALICE, ["bob@dest.test"], _msg("bob@dest.test", "signed-opendkim"),
           user=ALICE)
    message = _delivered_to_b(world, "signed-opendkim")
    (tmp_path / "zone.json").write_text(json.dumps(world["records"]))
    (tmp_path / "resolv.conf").write_text("nameserver 127.0.0.1\noptions timeout:2 attempts:2\n")
    ed = _only_signature(message, b"ed25519-sha256")
    rsa = _only_signature(message, b"rsa-sha256")
    assert ed.count(b"DKIM-Signature:") == 1 and rsa.count(b"DKIM-Signature:") == 1 and b"a=ed25519" in ed
    (tmp_path / "1-ed25519.eml").write_bytes(ed)
    (tmp_path / "2-rsa.eml").write_bytes(rsa)
    (tmp_path / "3-ed25519-changed.eml").write_bytes(ed.replace(b"Hello from A.", b"Hello from X."))
    r = subprocess.run(["unshare", "-r", "-n", "-m", "sh", "-c", IN_NAMESPACE, "sh", str(tmp_path)],
                       capture_output=True, text=True, timeout=120, cwd=str(Path(__file__).resolve().parents[2]),
                       env={**os.environ, "PYTHON": sys.executable})
    assert r.returncode == 0, r.stdout + r.stderr
    results = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert results["1-ed25519.eml"] == "pass", r.stdout
    assert results["2-rsa.eml"] == "pass", r.stdout
    # A changed body fails: the check is real.
    assert results["3-ed25519-changed.eml"].startswith("fail") and "signature" in results["3-ed25519-changed.eml"]
