"""postroom-mta over real sockets: smtplib, raw bytes, Twisted's ESMTP client, swaks."""

from __future__ import annotations

import base64
import smtplib
import subprocess
import sys
import textwrap

import pytest

from tests.support import require_tool

from .smtpd_fixture import RawClient, client_tls_context, queue_id_of, start_mta

MSG = b"From: a@example.org\r\nTo: alice@example.test\r\nSubject: test\r\n\r\nHello.\r\n"


@pytest.fixture(scope="module")
def mta(tmp_path_factory):
    # No password on plaintext even from loopback, so AUTH-before-TLS is testable.
    inst = start_mta(tmp_path_factory.mktemp("mta"), core_extra="  loopback_is_secure: false\n")
    yield inst
    inst.daemon.stop()


def send_raw(mta, port_name="mx", data: bytes = b""):
    c = RawClient(mta.ports[port_name])
    assert c.reply()[0] == 220
    return c


def test_accept_and_spool_with_received_header(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo("client.example.org")
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        code, text = s.data(MSG)
    assert code == 250
    sf = mta.find(queue_id_of(text))
    env = sf.envelope
    assert env.sender == "a@example.org" and env.helo == "client.example.org" and env.client_address == "127.0.0.1"
    assert [r.address for r in env.recipients] == ["alice@example.test"]
    assert sf.path.stat().st_mode & 0o777 == 0o600
    msg = sf.read_message()
    assert msg.startswith(b"Received: from client.example.org (unknown [127.0.0.1])\r\n\tby mail.example.test (postroom) with ESMTP id ")
    assert b"\tfor <alice@example.test>;" in msg
    assert msg.endswith(MSG)


def test_pipelined_commands_answered_in_order(mta):
    c = send_raw(mta)
    c.send(b"EHLO c.example\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<nobody@example.test>\r\n"
           b"RCPT TO:<alice@example.test>\r\nRCPT TO:<x@elsewhere.example>\r\nNOOP\r\nDATA\r\n")
    ehlo = c.reply()
    assert ehlo[0] == 250 and "PIPELINING" in ehlo[1]
    got = c.replies(6)
    assert [code for code, _ in got] == [250, 550, 250, 554, 250, 354]
    assert got[1][1].startswith("5.1.1") and got[3][1].startswith("5.7.1")
    c.send(MSG + b".\r\nRSET\r\nQUIT\r\n")
    code, text = c.reply()
    assert code == 250 and "queued as" in text
    assert c.replies(2) == [(250, "2.0.0 Reset OK"), (221, "2.0.0 Bye")]
    c.close()


def test_input_after_starttls_in_same_packet_is_discarded(mta):
    c = send_raw(mta)
    c.cmd(b"EHLO c.example")
    c.send(b"STARTTLS\r\nRSET\r\n")
    assert c.reply() == (220, "2.0.0 Ready to start TLS")
    c.starttls()
    # Had the RSET been executed, its reply would come before NOOP's.
    assert c.cmd(b"NOOP") == (250, "2.0.0 OK")
    ehlo = c.cmd(b"EHLO c.example")
    assert "STARTTLS" not in ehlo[1]
    c.close()


def test_bare_lf_in_data_refused_and_never_ends_message(mta):
    before = mta.queued_ids()
    c = send_raw(mta)
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
    c.send(b"Subject: x\r\n\r\nbody\n.\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    code, text = c.reply()
    assert code == 521 and text.startswith("5.5.2")
    assert c.closed_by_peer()
    assert mta.queued_ids() == before


def test_open_relay_refused_on_every_listener(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt("victim@elsewhere.example")[0] == 554
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.starttls(context=client_tls_context())
        s.ehlo()
        s.mail("alice@example.test")
        assert s.rcpt("victim@elsewhere.example")[0] == 554
    with smtplib.SMTP("127.0.0.1", mta.ports["submission"]) as s:
        s.ehlo()
        assert s.mail("a@example.org")[0] == 530
        s.starttls(context=client_tls_context())
        s.ehlo()
        code, text = s.mail("a@example.org")
        assert (code, text) == (530, b"5.7.0 Authentication required")
        assert s.rcpt("victim@elsewhere.example")[0] == 503
    with smtplib.SMTP_SSL("127.0.0.1", mta.ports["submissions"], context=client_tls_context()) as s:
        s.ehlo()
        assert s.mail("a@example.org")[0] == 530
        assert s.rcpt("victim@elsewhere.example")[0] == 503


def test_auth_refused_before_tls_then_relays_after(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["submission"]) as s:
        s.ehlo()
        assert not s.has_extn("auth")
        plain = base64.b64encode(b"\0alice@example.test\0postroom")
        assert s.docmd("AUTH", "PLAIN " + plain.decode()) == (538, b"5.7.11 Encryption required for requested authentication mechanism")
        s.starttls(context=client_tls_context())
        s.ehlo()
        assert "PLAIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice@example.test", "wrong")
        assert e.value.smtp_code == 535
    with smtplib.SMTP("127.0.0.1", mta.ports["submission"]) as s:
        s.starttls(context=client_tls_context())
        s.login("alice@example.test", "postroom")
        s.mail("alice@example.test")
        assert s.rcpt("friend@elsewhere.example")[0] == 250
        code, text = s.data(b"Subject: no date\r\n\r\nhi\r\n")
    assert code == 250
    sf = mta.find(queue_id_of(text))
    msg = sf.read_message()
    assert sf.envelope.auth_user == "alice@example.test" and sf.envelope.source == "submission"
    assert b"with ESMTPSA id" in msg and b"\ttls " in msg
    assert b"\r\nDate: " in msg and b"\r\nMessage-ID: <" in msg
    assert sf.envelope.tls_version in ("TLSv1.2", "TLSv1.3") and sf.envelope.tls_cipher


def test_implicit_tls_submission_with_auth_login(mta):
    with smtplib.SMTP_SSL("127.0.0.1", mta.ports["submissions"], context=client_tls_context()) as s:
        s.ehlo()
        s.user, s.password = "bob@example.test", "postroom"
        assert s.auth("LOGIN", s.auth_login)[0] == 235
        s.mail("bob@example.test")
        assert s.rcpt("someone@elsewhere.example")[0] == 250
        assert s.data(MSG)[0] == 250


def test_size_and_line_limits(mta):
    c = send_raw(mta)
    c.cmd(b"EHLO c")
    assert c.cmd(b"MAIL FROM:<a@example.org> SIZE=999999999999")[0] == 552
    assert c.cmd(b"NOOP " + b"x" * 5000)[0] == 500
    assert c.cmd(b"NOOP") == (250, "2.0.0 OK")
    c.send(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
    assert [code for code, _ in c.replies(3)] == [250, 250, 354]
    c.send(b"Subject: long\r\n\r\n" + b"y" * 2000 + b"\r\n.\r\n")
    code, text = c.reply()
    assert code == 500 and "line too long" in text
    assert c.cmd(b"QUIT")[0] == 221


def test_unknown_user_alias_and_subaddress(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt("nobody@example.test") == (550, b"5.1.1 No such user here")
        assert s.rcpt("team@example.test")[0] == 250
        assert s.rcpt("alice+lists@example.test")[0] == 250
        assert s.rcpt("postmaster")[0] == 250
        code, text = s.data(MSG)
    env = mta.find(queue_id_of(text)).envelope
    got = {(r.address, r.original, r.folder) for r in env.recipients}
    assert got == {("alice@example.test", "team@example.test", None), ("bob@example.test", "team@example.test", None),
                   ("alice@example.test", "alice+lists@example.test", "lists"), ("demo@example.test", "postmaster", None)}


def test_bdat(mta):
    c = send_raw(mta)
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<bob@example.test>\r\n")
    assert "CHUNKING" in c.reply()[1]
    c.replies(2)
    part1, part2 = MSG[:20], MSG[20:]
    c.send(b"BDAT %d\r\n" % len(part1) + part1 + b"BDAT %d LAST\r\n" % len(part2) + part2)
    assert c.reply()[0] == 250
    code, text = c.reply()
    assert code == 250
    assert mta.find(queue_id_of(text)).read_message().endswith(MSG)
    c.close()


def test_dsn_parameters_kept_in_spool(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        assert s.has_extn("dsn")
        s.mail("a@example.org", ["RET=HDRS", "ENVID=env+2B1"])
        assert s.rcpt("alice@example.test", ["NOTIFY=SUCCESS,DELAY", "ORCPT=rfc822;alice@example.test"])[0] == 250
        assert s.rcpt("bob@example.test", ["NOTIFY=NEVER"])[0] == 250
        code, text = s.data(MSG)
    env = mta.find(queue_id_of(text)).envelope
    assert env.ret == "HDRS" and env.envid == "env+2B1"
    alice, bob = env.recipients
    assert alice.notify == ("SUCCESS", "DELAY") and alice.orcpt == "rfc822;alice@example.test"
    assert bob.notify == ("NEVER",) and bob.orcpt is None


def test_mail_loop_refused(mta):
    looped = b"".join(b"Received: from x by y; Sun, 1 Jan 2026 00:00:00 +0000\r\n" for _ in range(51)) + MSG
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        s.mail("a@example.org")
        s.rcpt("alice@example.test")
        assert s.data(looped) == (554, b"5.4.6 Too many Received headers: mail loop")


def test_twisted_esmtp_client_with_starttls_and_auth(mta):
    lf_message = MSG.replace(b"\r\n", b"\n")  # Twisted's client turns each LF into CRLF itself
    script = textwrap.dedent(f"""
        import sys
        from io import BytesIO
        from twisted.internet import reactor, defer, ssl
        from twisted.mail.smtp import ESMTPSenderFactory
        from OpenSSL import SSL
        ctx = ssl.CertificateOptions(verify=False)
        d = defer.Deferred()
        f = ESMTPSenderFactory(b"alice@example.test", b"postroom", "alice@example.test",
                               ["carol@elsewhere.example"], BytesIO({lf_message!r}), d,
                               contextFactory=ctx, requireAuthentication=True, requireTransportSecurity=True)
        result = []
        d.addCallbacks(lambda r: result.append(("ok", r[0])), lambda f: result.append(("fail", str(f.value))))
        d.addBoth(lambda _: reactor.stop())
        reactor.connectTCP("127.0.0.1", {mta.ports['submission']}, f)
        reactor.callLater(15, reactor.stop)
        reactor.run()
        print(result)
        sys.exit(0 if result and result[0] == ("ok", 1) else 1)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_swaks_pipelining_and_auth(mta):
    swaks = require_tool("swaks")
    proc = subprocess.run(
        [swaks, "--server", "127.0.0.1", "--port", str(mta.ports["submissions"]), "--tlsc", "--pipeline",
         "--auth", "PLAIN", "--auth-user", "demo@example.test", "--auth-password", "postroom",
         "--from", "demo@example.test", "--to", "x@elsewhere.example,alice@example.test",
         "--helo", "swaks.example", "--timeout", "10"],
        capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "queued as" in proc.stdout
