"""postroom-mta over real sockets: what the core's byte tests cover, against the daemon
(VRFY, HELP, HELO, limits, bare CR/LF, BODY/SMTPUTF8, enhanced codes, PROXY), and
the receiving side's own work: the client's verified name from a DNS server on
loopback, trace IDs in the log, forged Authentication-Results removed on every
listener, IANA cipher names in Received."""

from __future__ import annotations

import re
import smtplib
import socket
import ssl
import struct
import time

import pytest

from common.proxyproto import V2_SIGNATURE
from tests.support import free_port, wait_for_port
from tests.support.dnsserver import dns_server_fixture

from .smtpd_fixture import RawClient, client_tls_context, greeted, listener, queue_id_of, start_mta

MSG = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: receiving\r\n\r\nHello.\r\n"
FORGED = (b"Authentication-Results: mail.example.test; dmarc=pass header.from=example.test\r\n"
          b"Authentication-Results: (comment) \"mail.example.test\"; spf=pass\r\n"
          b"X-Postroom-Quarantine: none\r\n"
          b"Authentication-Results: other.example; spf=fail\r\n")

RECORDS = {
    "1.0.0.127.in-addr.arpa": {"PTR": ["client.example.test"]},
    "client.example.test": {"A": ["127.0.0.1"]},
    "2.0.0.127.in-addr.arpa": {"PTR": ["liar.example.test"]},   # its A points elsewhere
    "liar.example.test": {"A": ["192.0.2.1"]},
    "3.0.0.127.in-addr.arpa": {"PTR": "timeout"},
}


dns_server = dns_server_fixture(RECORDS)


@pytest.fixture(scope="module")
def mta(tmp_path_factory, dns_server):
    ports = {name: free_port() for name in ("mx", "nochecks", "submission", "proxied", "untrusted")}
    inst = start_mta(tmp_path_factory.mktemp("receiving"), listeners=(
        listener("mx", ports["mx"])
        + listener("nochecks", ports["nochecks"], tls="none", checks="false")
        + listener("submission", ports["submission"], "submission")
        + listener("proxied", ports["proxied"], tls="none", checks="false", proxy_protocol="true",
                   proxy_from="[127.0.0.1]")
        + listener("untrusted", ports["untrusted"], tls="none", proxy_protocol="true", proxy_from="[127.0.0.9]")
    ), recipients_yaml="  trusted_networks: [127.0.0.2/32]\n  vrfy: true\n", extra_yaml=f"""\
dns:
  nameservers: [127.0.0.1]
  port: {dns_server.port}
  timeout: 3s
limits:
  max_commands_before_mail: 8
  reverse_dns_timeout: 1s
""", wait=False)
    for port in ports.values():
        wait_for_port(port, proc=inst.daemon.proc)
    yield inst
    inst.daemon.stop()


def send(port: int, data: bytes = MSG, source: str = "127.0.0.1", helo: str = "client.example",
         rcpt: str = "alice@example.test", login: tuple[str, str] | None = None) -> bytes:
    with smtplib.SMTP("127.0.0.1", port, timeout=10, source_address=(source, 0)) as s:
        s.ehlo(helo)
        if login:
            s.starttls(context=client_tls_context())
            s.login(*login)
        s.mail("a@example.org" if not login else login[0])
        s.rcpt(rcpt)
        code, text = s.data(data)
    assert code == 250, text
    return text


def log_line(mta, queue_id: str) -> str:
    lines = [line for line in mta.daemon.output().splitlines() if f"queue_id={queue_id}" in line and "queued" in line]
    assert len(lines) == 1, lines
    return lines[0]


# -- the client's name, and the trace ID in the log

def test_verified_client_name_in_received_spool_and_log(mta):
    qid = queue_id_of(send(mta.ports["nochecks"]))
    sf = mta.find(qid)
    assert sf.envelope.client_name == "client.example.test"
    assert sf.read_message().startswith(b"Received: from client.example (client.example.test [127.0.0.1])\r\n")
    line = log_line(mta, qid)
    assert f"trace_id={sf.envelope.trace_id}" in line
    assert "client client.example.test[127.0.0.1]" in line


def test_name_that_does_not_point_back_is_unknown(mta):
    qid = queue_id_of(send(mta.ports["nochecks"], source="127.0.0.2"))
    sf = mta.find(qid)
    assert sf.envelope.client_name is None
    assert sf.read_message().startswith(b"Received: from client.example (unknown [127.0.0.2])\r\n")
    assert "client unknown[127.0.0.2]" in log_line(mta, qid)


def test_slow_reverse_dns_delays_the_greeting_at_most_the_bound(mta):
    started = time.monotonic()
    c = greeted(mta.ports["nochecks"], source="127.0.0.3")  # its PTR query is never answered
    waited = time.monotonic() - started
    assert 0.8 < waited < 3, waited
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
    code, text = c.cmd(MSG + b".")
    assert code == 250
    assert mta.find(queue_id_of(text)).envelope.client_name is None
    c.close()


# -- forged results removed whatever the listener and client

@pytest.mark.parametrize("how", ["checks off", "trusted network", "submission", "checks on"])
def test_forged_authentication_results_removed(mta, how):
    data = FORGED + MSG
    if how == "checks off":
        text = send(mta.ports["nochecks"], data)
    elif how == "trusted network":
        text = send(mta.ports["mx"], data, source="127.0.0.2", rcpt="x@elsewhere.example")
    elif how == "submission":
        text = send(mta.ports["submission"], data, login=("alice@example.test", "postroom"), rcpt="x@elsewhere.example")
    else:
        text = send(mta.ports["mx"], data)
    head = mta.find(queue_id_of(text)).read_message().split(b"\r\n\r\n", 1)[0]
    assert b"dmarc=pass header.from=example.test" not in head
    assert b'"mail.example.test"; spf=pass' not in head
    assert b"X-Postroom-Quarantine" not in head
    assert b"Authentication-Results: other.example; spf=fail" in head  # not ours: kept
    ours = head.count(b"Authentication-Results: mail.example.test;")
    assert ours == (1 if how == "checks on" else 0)


# -- TLS: IANA cipher names (RFC 8314 4.3)

@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_received_names_the_cipher_suite_as_iana_does(mta, version):
    context = client_tls_context()
    context.maximum_version = context.minimum_version = version
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"], timeout=10) as s:
        s.starttls(context=context)
        s.ehlo("client.example")
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        code, text = s.data(MSG)
    sf = mta.find(queue_id_of(text))
    m = re.search(rb"\ttls (\S+) \((TLSv1\.[23])\)", sf.read_message())
    assert m, sf.read_message()[:400]
    cipher = m.group(1).decode()
    assert re.fullmatch(r"TLS_[A-Z0-9_]+", cipher), cipher
    if version == ssl.TLSVersion.TLSv1_2:
        assert cipher.startswith("TLS_ECDHE_ECDSA_WITH_") and m.group(2) == b"TLSv1.2"
    else:
        assert cipher in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256", "TLS_CHACHA20_POLY1305_SHA256")
    assert sf.envelope.tls_cipher == cipher


# -- VRFY, HELP, HELO, limits, strictness

def test_vrfy_enabled_names_local_mailboxes_only(mta):
    c = greeted(mta.ports["nochecks"])
    assert c.cmd(b"EHLO c")[0] == 250
    assert c.cmd(b"VRFY alice@example.test") == (250, "2.1.5 <alice@example.test>")
    assert c.cmd(b"VRFY Alice Liddell <ALICE@example.test>") == (250, "2.1.5 <alice@example.test>")
    assert c.cmd(b"VRFY bob") == (250, "2.1.5 <bob@example.test>")
    assert c.cmd(b"VRFY nobody@example.test") == (550, "5.1.1 No such user here")
    c.close()
    c = greeted(mta.ports["nochecks"])  # a new session: VRFY counts against max_commands_before_mail
    for other in (b"victim@elsewhere.example", b"outside@example.test", b"team@example.test", b"<%%%\x01>"):
        code, text = c.cmd(b"VRFY " + other)
        assert code == 252 and text.startswith("2.5.0 "), other
        assert other.decode(errors="replace").split("@")[0].strip("<") not in text, (other, text)
    c.close()


def test_help_helo_and_a_helo_session(mta):
    c = greeted(mta.ports["nochecks"])
    assert c.cmd(b"HELP") == (214, "2.0.0 See RFC 5321; commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT "
                                     "HELP VRFY STARTTLS AUTH")
    assert c.cmd(b"HELO old.example") == (250, "mail.example.test")
    assert c.cmd(b"MAIL FROM:<a@example.org>")[0] == 250
    assert c.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert c.cmd(b"DATA")[0] == 354
    code, text = c.cmd(MSG + b".")
    assert code == 250
    assert b"Received: from old.example (client.example.test [127.0.0.1])\r\n\tby mail.example.test (postroom) " \
           b"with SMTP id " in mta.find(queue_id_of(text)).read_message()
    assert c.cmd(b"QUIT") == (221, "2.0.0 Bye")
    c.close()


def test_commands_before_mail_limit(mta):
    c = greeted(mta.ports["nochecks"])
    c.send(b"EHLO c\r\n" + b"NOOP\r\n" * 6 + b"RSET\r\nNOOP\r\n")
    codes = [code for code, _ in c.replies(9)]
    assert codes == [250] * 8 + [421]
    assert c.closed_by_peer()
    c = greeted(mta.ports["nochecks"])
    c.send(b"EHLO c\r\n" + b"NOOP\r\n" * 6 + b"MAIL FROM:<a@example.org>\r\n" + b"NOOP\r\n" * 8 + b"QUIT\r\n")
    assert [code for code, _ in c.replies(17)] == [250] * 16 + [221]  # MAIL starts the count again
    c.close()


@pytest.mark.parametrize("line", [b"NOOP\rx", b"NOOP\nx", b"MAIL FROM:<a@exa\rmple.org>", b"RCPT TO:<a\n@example.test>"])
def test_bare_cr_or_lf_in_a_command_is_refused(mta, line):
    c = greeted(mta.ports["nochecks"])
    assert c.cmd(b"EHLO c")[0] == 250
    assert c.cmd(line) == (500, "5.5.2 Bare CR or LF in command; only CRLF ends a line")
    if b"\n" in line:  # the bare LF ended that line: what follows it is a line of its own
        assert c.reply() == (500, "5.5.2 Syntax error, command unrecognized")
    assert c.cmd(b"NOOP") == (250, "2.0.0 OK")  # the session goes on
    c.close()


def test_body_8bitmime_and_smtputf8(mta):
    body = "From: José <jose@exämple.org>\r\nSubject: 8bit\r\n\r\nÇa va?\r\n".encode()
    c = greeted(mta.ports["nochecks"])
    assert c.cmd(b"EHLO c")[0] == 250
    assert c.cmd("MAIL FROM:<josé@exämple.org> BODY=8BITMIME SMTPUTF8".encode())[0] == 250
    assert c.cmd(b"RCPT TO:<alice@example.test>")[0] == 250
    assert c.cmd(b"DATA")[0] == 354
    code, text = c.cmd(body + b".")
    assert code == 250
    sf = mta.find(queue_id_of(text))
    assert (sf.envelope.body, sf.envelope.smtputf8, sf.envelope.sender) == ("8BITMIME", True, "josé@exämple.org")
    assert b"with UTF8SMTP id" in sf.read_message() and sf.read_message().endswith(body)
    assert c.cmd("MAIL FROM:<josé@exämple.org>".encode())[0] == 553  # UTF-8 without SMTPUTF8
    c.close()


def test_every_reply_carries_an_enhanced_status_code(mta):
    """Every reply line but the greeting, HELO/EHLO's and 354 (RFC 2034)."""
    c = greeted(mta.ports["nochecks"])
    c.send(b"EHLO c\r\n")
    c.reply()
    # Nine error replies: one fewer than max_errors, which would close the session.
    session = [b"NOOP", b"HELP", b"VRFY bob", b"EXPN team", b"MAIL FROM:<a@example.org> SIZE=99999999999",
               b"RCPT TO:<alice@example.test>", b"MAIL FROM:<a@example.org>",
               b"MAIL FROM:<a@example.org>", b"RCPT TO:<nobody@example.test>", b"RCPT TO:<x@elsewhere.example>",
               b"RCPT TO:<alice@example.test>", b"BDAT 5", b"DATA", b"RSET", b"STARTTLS now", b"AUTH PLAIN",
               b"MAIL FROM:<a@example.org>", b"RCPT TO:<bob@example.test>", b"DATA", MSG + b".", b"QUIT"]
    raw = b""
    c.sock.settimeout(10)
    for line in session:
        c.send(line + b"\r\n")
        if line == b"BDAT 5":
            c.send(b"12345")
        reply = b""
        deadline = time.monotonic() + 10
        while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", reply) and time.monotonic() < deadline:
            reply += c.sock.recv(65536)
        raw += reply
    lines = [line for line in raw.split(b"\r\n") if line]
    checked = 0
    for line in lines:
        if line.startswith(b"354 "):
            continue
        assert re.fullmatch(rb"[245]\d\d[ -][245]\.\d{1,3}\.\d{1,3} .*", line), line
        checked += 1
    assert checked >= len(session) - 1 and lines[-1] == b"221 2.0.0 Bye"
    c.close()


# -- PROXY protocol against the daemon

def proxy_v2(src: str, sport: int) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton("192.0.2.25") + struct.pack("!HH", sport, 25)
    return V2_SIGNATURE + struct.pack("!BBH", 0x21, 0x11, len(body)) + body


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_from_a_trusted_proxy(mta, version):
    src = f"198.51.100.{10 + version}"
    header = (f"PROXY TCP4 {src} 192.0.2.25 4000{version} 25\r\n".encode() if version == 1
              else proxy_v2(src, 40000 + version))
    c = RawClient(mta.ports["proxied"])
    c.send(header)
    assert c.reply()[0] == 220
    c.send(b"EHLO relay.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
    code, text = c.cmd(MSG + b".")
    assert code == 250
    c.close()
    qid = queue_id_of(text)
    sf = mta.find(qid)
    assert (sf.envelope.client_address, sf.envelope.client_port) == (src, 40000 + version)
    assert sf.read_message().startswith(f"Received: from relay.example (unknown [{src}])".encode())
    assert f"session=proxied:{src}:{40000 + version}" in log_line(mta, qid)


@pytest.mark.parametrize("version", [1, 2])
def test_proxy_header_from_an_untrusted_peer_is_refused(mta, version):
    header = (b"PROXY TCP4 198.51.100.20 192.0.2.25 40000 25\r\n" if version == 1
              else proxy_v2("198.51.100.20", 40000))
    got = b""
    try:  # the server aborts the connection at once: reset at connect, at send or at recv
        with socket.create_connection(("127.0.0.1", mta.ports["untrusted"]), timeout=10) as sock:
            sock.sendall(header + b"EHLO x\r\n")
            while chunk := sock.recv(4096):
                got += chunk
    except ConnectionError:
        pass
    assert got == b""  # no greeting, nothing at all
    assert "PROXY header refused from untrusted peer 127.0.0.1" in mta.daemon.output()
