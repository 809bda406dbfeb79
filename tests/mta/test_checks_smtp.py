"""The checks inside postroom-mta, end to end: smtplib against the daemon, the daemon's
DNS pointed at the loopback DNS server; and PROXY v2 in front of the MX listener."""

from __future__ import annotations

import smtplib
import socket
import struct

import pytest

from common.proxyproto import V2_SIGNATURE
from tests.support import free_port, wait_for_port
from tests.support.dnsserver import dns_server_fixture

from .smtpd_fixture import RawClient, listener, queue_id_of, start_mta
from .test_checks_data import dkim_key, message, signed

RECORDS = {
    "pass.test": {"TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
    "_dmarc.pass.test": {"TXT": ["v=DMARC1; p=reject"]},
    "sel._domainkey.pass.test": dkim_key(),
    "fail.test": {"TXT": ["v=spf1 ip4:192.0.2.99 -all"]},
    "_dmarc.fail.test": {"TXT": ["v=DMARC1; p=reject"]},
    "quarantine.test": {"TXT": ["v=spf1 -all"]},
    "_dmarc.quarantine.test": {"TXT": ["v=DMARC1; p=quarantine"]},
    "proxied.test": {"TXT": ["v=spf1 ip4:198.51.100.7 -all"]},
    "_dmarc.slow.test": {"TXT": "timeout"},
    "66.100.51.198.bl.test": {"A": ["127.0.0.2"]},
}


dns_server = dns_server_fixture(RECORDS)


@pytest.fixture(scope="module")
def mta(tmp_path_factory, dns_server):
    inst = start_mta(tmp_path_factory.mktemp("mta-checks"), extra_yaml=f"""\
dns:
  nameservers: [127.0.0.1]
  port: {dns_server.port}
  timeout: 1s
checks:
  spf:
    fail: reject
  dnsbl:
    zones: [bl.test]
""")
    yield inst
    inst.daemon.stop()


@pytest.fixture(scope="module")
def proxied_mta(tmp_path_factory, dns_server):
    """An MX listener behind HAProxy: PROXY headers believed from 127.0.0.1 only."""
    port = free_port()
    inst = start_mta(tmp_path_factory.mktemp("mta-proxied"),
                     listeners=listener("mx", port, tls="none", proxy_protocol="true", proxy_from="[127.0.0.1]"),
                     extra_yaml=f"""\
dns:
  nameservers: [127.0.0.1]
  port: {dns_server.port}
  timeout: 1s
checks:
  dnsbl:
    zones: [bl.test]
""", wait=False)
    inst.ports = {"mx": port}
    wait_for_port(port, proc=inst.daemon.proc)
    yield inst
    inst.daemon.stop()


def send(mta, sender: str, data: bytes, rcpt: str = "alice@example.test"):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"], timeout=10) as s:
        s.ehlo("client.example")
        code, text = s.mail(sender)
        if code != 250:
            return code, text
        s.rcpt(rcpt)
        try:
            return s.data(data)
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error


def top_fields(mta, reply: bytes) -> list[bytes]:
    raw = mta.find(queue_id_of(reply)).read_message()
    return raw.split(b"\r\n\r\n", 1)[0].split(b"\r\n")


def test_signed_mail_passes_and_our_header_replaces_forged_ones(mta):
    forged = "Authentication-Results: mail.example.test; dmarc=pass\r\n"
    code, text = send(mta, "bounce@pass.test", signed(message("alice@pass.test", forged), "pass.test"))
    assert code == 250, text
    lines = b"\n".join(top_fields(mta, text))
    assert lines.count(b"Authentication-Results: mail.example.test") == 1
    assert b"spf=pass smtp.mailfrom=pass.test" in lines
    assert b"dkim=pass header.d=pass.test header.s=sel" in lines
    assert b"dmarc=pass header.from=pass.test" in lines
    assert b"dmarc=pass\n" not in lines  # the forged one is gone


def test_spf_fail_is_refused_at_mail_from_when_configured(mta):
    code, text = send(mta, "someone@fail.test", message("someone@fail.test"))
    assert (code, text[:6]) == (550, b"5.7.23")


def test_dmarc_reject_is_refused_at_end_of_data(mta):
    code, text = send(mta, "bounce@other.example", message("ceo@pass.test"))
    assert (code, text[:5]) == (550, b"5.7.1")
    assert b"DMARC" in text


def test_dmarc_quarantine_is_accepted_and_marked(mta):
    code, text = send(mta, "bounce@other.example", message("news@quarantine.test"))
    assert code == 250, text
    fields = top_fields(mta, text)
    marker = fields.index(b"X-Postroom-Quarantine: dmarc")
    assert fields[marker + 1].startswith(b"Authentication-Results: mail.example.test;")


def test_dns_timeout_gives_451_4_4_3(mta):
    code, text = send(mta, "bounce@other.example", message("x@slow.test"))
    assert (code, text[:5]) == (451, b"4.4.3")


def proxy_v2(src: str, sport: int = 40000) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("192.0.2.25") + struct.pack("!HH", sport, 25)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


def test_proxied_client_address_is_used_for_checks_and_spool(proxied_mta):
    c = RawClient(proxied_mta.ports["mx"])
    try:
        c.send(proxy_v2("198.51.100.7"))
        assert c.reply()[0] == 220
        assert c.cmd(b"EHLO client.example")[0] == 250
        assert c.cmd(b"MAIL FROM:<x@proxied.test>")[0] == 250
        assert c.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
        assert c.cmd(b"DATA")[0] == 354
        code, text = c.cmd(message("x@proxied.test") + b".")
        assert code == 250, text
    finally:
        c.close()
    sf = proxied_mta.find(queue_id_of(text))
    assert sf.envelope.client_address == "198.51.100.7"
    assert b"spf=pass smtp.mailfrom=proxied.test" in sf.read_message()


def test_proxied_client_on_a_blocklist_is_refused_at_connect(proxied_mta):
    c = RawClient(proxied_mta.ports["mx"])
    try:
        c.send(proxy_v2("198.51.100.66"))
        code, text = c.reply()
        assert (code, text[:5]) == (554, "5.7.1")
        assert "bl.test" in text and "198.51.100.66" in text
    finally:
        c.close()
