"""The sans-IO SMTP client core, tested with bytes: server replies in, commands out."""

from __future__ import annotations

import base64

from common.smtp.client import (ClientOptions, DataEncoder, Finished, Rcpt, SmtpClientConn, StartTls,
                                Transaction, encode_message)

EHLO_FULL = (b"250-mx.example.org\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n"
             b"250-DSN\r\n250-SMTPUTF8\r\n250 STARTTLS\r\n")


def make(msg=b"Subject: x\r\n\r\nhello\r\n", rcpts=("a@example.org",), tls="may", **kw):
    opts = ClientOptions(helo_name="client.example.test", tls=tls,
                         username=kw.pop("username", None), password=kw.pop("password", None))
    tx = Transaction(sender=kw.pop("sender", "s@example.test"),
                     recipients=[Rcpt(r, notify=kw.get("notify"), orcpt=kw.get("orcpt")) for r in rcpts],
                     message=msg, body=kw.get("body", "7BIT"), smtputf8=kw.get("smtputf8", False),
                     ret=kw.get("ret"), envid=kw.get("envid"))
    return SmtpClientConn(opts, tx)


def lines(c):
    return c.take_output().split(b"\r\n")


def test_plain_session_without_pipelining():
    c = make(tls="none")
    assert c.receive(b"220 mx ESMTP\r\n") == []
    assert c.take_output() == b"EHLO client.example.test\r\n"
    c.receive(b"250-mx\r\n250 SIZE 1000\r\n")
    assert c.take_output() == b"MAIL FROM:<s@example.test> SIZE=21\r\n"
    c.receive(b"250 2.1.0 ok\r\n")
    assert c.take_output() == b"RCPT TO:<a@example.org>\r\n"
    c.receive(b"250 2.1.5 ok\r\n")
    assert c.take_output() == b"DATA\r\n"
    c.receive(b"354 go\r\n")
    assert c.take_output() == b"Subject: x\r\n\r\nhello\r\n.\r\n"
    ev = c.receive(b"250 2.0.0 queued as X\r\n")
    assert c.take_output() == b"QUIT\r\n"
    (fin,) = ev
    assert isinstance(fin, Finished)
    assert fin.replies[0].code == 250 and fin.replies[0].enhanced == "2.0.0"
    assert fin.replies[0].text == "queued as X"


def test_helo_fallback_when_ehlo_refused():
    c = make(tls="may")
    c.receive(b"220 old\r\n")
    c.take_output()
    c.receive(b"502 what\r\n")
    assert c.take_output() == b"HELO client.example.test\r\n"
    c.receive(b"250 hi\r\n")
    assert c.take_output() == b"MAIL FROM:<s@example.test>\r\n"


def test_pipelining_per_recipient_replies_and_dsn_params():
    c = make(rcpts=("a@example.org", "b@example.org", "c@example.org"), tls="none",
             notify=("SUCCESS", "FAILURE"), orcpt="rfc822;A+1@example.org", ret="HDRS", envid="id=1")
    c.receive(b"220 mx\r\n")
    c.take_output()
    c.receive(EHLO_FULL)
    out = lines(c)
    assert out[0] == b"MAIL FROM:<s@example.test> SIZE=21 RET=HDRS ENVID=id+3D1"
    assert out[1] == b"RCPT TO:<a@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;A+2B1@example.org"
    assert out[4] == b"DATA"
    c.receive(b"250 2.1.0 ok\r\n250 2.1.5 ok\r\n450 4.2.0 busy\r\n550 5.1.1 no such user\r\n354 go\r\n")
    assert c.take_output().endswith(b"\r\n.\r\n")
    (fin,) = c.receive(b"250 2.0.0 ok\r\n")
    assert [r.code for r in fin.replies] == [250, 450, 550]
    assert fin.replies[2].enhanced == "5.1.1" and fin.replies[2].stage == "RCPT"
    assert fin.dsn_offered


def test_pipelined_all_recipients_refused_sends_no_data():
    c = make(rcpts=("a@example.org",), tls="none")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(EHLO_FULL); c.take_output()
    ev = c.receive(b"250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n")
    assert c.take_output() == b"QUIT\r\n"
    assert ev[0].replies[0].code == 550


def test_starttls_discards_buffered_input_and_greets_again():
    c = make(tls="may")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(EHLO_FULL)
    assert c.take_output() == b"STARTTLS\r\n"
    # An injected command after the 220 must be thrown away (RFC 3207).
    ev = c.receive(b"220 2.0.0 go ahead\r\n250 injected\r\n")
    assert ev == [StartTls()]
    assert c.start_tls_done() == []
    assert c.take_output() == b"EHLO client.example.test\r\n"
    c.receive(b"250-mx\r\n250 PIPELINING\r\n")
    assert c.take_output().startswith(b"MAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")


def test_encrypt_level_defers_when_starttls_not_offered():
    c = make(tls="encrypt")
    c.receive(b"220 mx\r\n"); c.take_output()
    (fin,) = c.receive(b"250-mx\r\n250 8BITMIME\r\n")
    assert fin.replies[0].enhanced == "4.7.4" and fin.try_next_host
    assert c.take_output() == b"QUIT\r\n"


def test_auth_plain_after_tls():
    c = make(tls="encrypt", username="u", password="p\u00e9")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250-AUTH LOGIN PLAIN\r\n250 STARTTLS\r\n"); c.take_output()
    c.receive(b"220 go\r\n")
    c.start_tls_done(); c.take_output()
    c.receive(b"250-mx\r\n250 AUTH LOGIN PLAIN\r\n")
    out = c.take_output()
    assert out == b"AUTH PLAIN " + base64.b64encode("\0u\0p\u00e9".encode()) + b"\r\n"
    c.receive(b"235 2.7.0 ok\r\n")
    assert c.take_output() == b"MAIL FROM:<s@example.test>\r\n"


def test_auth_login_and_failure_defers():
    c = make(tls="none", username="user", password="secret")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250 AUTH LOGIN\r\n")
    assert c.take_output() == b"AUTH LOGIN\r\n"
    c.receive(b"334 VXNlcm5hbWU6\r\n")
    assert c.take_output() == base64.b64encode(b"user") + b"\r\n"
    c.receive(b"334 UGFzc3dvcmQ6\r\n")
    assert c.take_output() == base64.b64encode(b"secret") + b"\r\n"
    (fin,) = c.receive(b"535 5.7.8 bad credentials\r\n")
    assert fin.replies[0].code == 535 and "secret" not in fin.replies[0].text


def test_auth_refused_without_tls_unless_level_none():
    c = make(tls="may", username="u", password="p")
    c.receive(b"220 mx\r\n"); c.take_output()
    (fin,) = c.receive(b"250-mx\r\n250 AUTH PLAIN\r\n")
    assert fin.replies[0].temporary and c.take_output() == b"QUIT\r\n"


def test_size_refused_before_mail():
    c = make(msg=b"x" * 2000, tls="none")
    c.receive(b"220 mx\r\n"); c.take_output()
    (fin,) = c.receive(b"250-mx\r\n250 SIZE 1000\r\n")
    assert fin.replies[0].code == 552 and fin.replies[0].enhanced == "5.3.4"
    assert c.take_output() == b"QUIT\r\n"


def test_smtputf8_and_8bitmime_required():
    c = make(tls="none", smtputf8=True, sender="j\u00f6@example.test")
    c.receive(b"220 mx\r\n"); c.take_output()
    (fin,) = c.receive(b"250-mx\r\n250 8BITMIME\r\n")
    assert fin.replies[0].enhanced == "5.6.7" and not fin.replies[0].temporary
    c = make(tls="none", body="8BITMIME", msg="caf\u00e9\r\n".encode())
    c.receive(b"220 mx\r\n"); c.take_output()
    (fin,) = c.receive(b"250 mx\r\n")
    assert fin.replies[0].enhanced == "5.6.3"
    c = make(tls="none", smtputf8=True, body="8BITMIME", msg="caf\u00e9\r\n".encode())
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")
    assert c.take_output() == b"MAIL FROM:<s@example.test> BODY=8BITMIME SMTPUTF8\r\n"


def test_chunking_sends_bdat_without_dot_stuffing():
    c = make(msg=b".dot\r\nline\r\n", tls="none")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n")
    # Pipelined: BDAT goes in the same group as MAIL and RCPT (RFC 3030 4.2).
    assert c.take_output() == (b"MAIL FROM:<s@example.test>\r\nRCPT TO:<a@example.org>\r\n"
                               b"BDAT 12 LAST\r\n.dot\r\nline\r\n")
    (fin,) = c.receive(b"250 ok\r\n250 ok\r\n250 2.0.0 ok\r\n")
    assert fin.replies[0].code == 250
    # Without PIPELINING it waits for each reply, then sends BDAT.
    c = make(msg=b"x\r\n", tls="none", rcpts=("a@example.org", "b@example.org"))
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250 CHUNKING\r\n"); c.take_output()
    c.receive(b"250 ok\r\n"); c.take_output()
    c.receive(b"550 5.1.1 no\r\n"); c.take_output()
    c.receive(b"250 ok\r\n")
    assert c.take_output() == b"BDAT 3 LAST\r\nx\r\n"
    (fin,) = c.receive(b"250 2.0.0 ok\r\n")
    assert [r.code for r in fin.replies] == [550, 250]
    # Every recipient refused: the pipelined BDAT is refused too; nobody delivered.
    c = make(msg=b"x\r\n", tls="none")
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250-PIPELINING\r\n250 CHUNKING\r\n"); c.take_output()
    (fin,) = c.receive(b"250 ok\r\n550 5.1.1 no\r\n503 5.5.1 no valid recipients\r\n")
    assert fin.replies[0].code == 550 and c.take_output() == b"QUIT\r\n"


def test_4xx_greeting_means_next_host():
    c = make()
    (fin,) = c.receive(b"421 4.3.2 busy\r\n")
    assert fin.try_next_host and fin.replies[0].code == 421


def test_connection_lost_after_data_is_not_retried_elsewhere():
    c = make(tls="none")
    c.receive(b"220 mx\r\n250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n")
    c.take_output()
    (fin,) = c.connection_lost()
    assert not fin.try_next_host and fin.replies[0].temporary


def test_malformed_and_overlong_replies_defer():
    c = make()
    (fin,) = c.receive(b"hello there\r\n")
    assert fin.replies[0].temporary
    c = make()
    (fin,) = c.receive(b"220-" + b"x" * 5000)
    assert fin.replies[0].temporary
    c = make()
    (fin,) = c.receive(b"220-x\r\n" * 101)
    assert fin.replies[0].temporary


def test_dot_stuffing_and_line_ends():
    assert encode_message(b".a\n..b\r\nc.\r.\r\n", True) == b"..a\r\n...b\r\nc.\r\n..\r\n.\r\n"
    assert encode_message(b"no final newline", True) == b"no final newline\r\n.\r\n"
    # Across chunk boundaries: a dot at the start of a chunk that starts a line, a CRLF split.
    enc = DataEncoder()
    out = enc.feed(b"a\r") + enc.feed(b"\n.b\r\n") + enc.feed(b".") + enc.feed(b"c\r\n") + enc.end()
    assert out == b"a\r\n..b\r\n..c\r\n.\r\n"


def test_no_line_over_998_octets():
    msg = b"Subject: long\r\n\r\n" + b"y" * 5000 + b"\r\n." + b"z" * 997 + b"\r\n"
    wire = encode_message(msg, True)
    assert all(len(line) <= 998 for line in wire.split(b"\r\n"))
    assert wire.replace(b"\r\n ", b"").replace(b"\r\n..", b"\r\n.") == msg + b".\r\n"
    enc = DataEncoder()
    parts = [enc.feed(msg[i:i + 7]) for i in range(0, len(msg), 7)] + [enc.end()]
    assert b"".join(parts) == wire


def test_reuse_keeps_the_session_for_the_next_transaction():
    opts = ClientOptions(helo_name="c.example.test", tls="none", reuse=True)
    c = SmtpClientConn(opts, Transaction("s@example.test", [Rcpt("a@example.org")], b"one\r\n"))
    c.receive(b"220 mx\r\n"); c.take_output()
    c.receive(b"250-mx\r\n250 PIPELINING\r\n"); c.take_output()
    (fin,) = c.receive(b"250 ok\r\n250 ok\r\n354 go\r\n250 2.0.0 first\r\n")
    assert c.take_output() == b"one\r\n.\r\n" and c.idle and fin.replies[0].text == "first"
    ev = c.new_transaction(Transaction("t@example.test", [Rcpt("b@example.org")], b"two\r\n"))
    assert ev == [] and c.take_output() == b"MAIL FROM:<t@example.test>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
    (fin,) = c.receive(b"250 ok\r\n550 5.1.1 no\r\n554 5.5.1 no valid recipients\r\n")
    assert fin.replies[0].code == 550 and c.idle and c.transactions == 2
    c.quit()
    assert c.take_output() == b"QUIT\r\n"
    # A server that speaks while the session is idle (421 timeout) ends its reuse.
    c2 = SmtpClientConn(opts, Transaction("s@example.test", [Rcpt("a@example.org")], b"x\r\n"))
    c2.receive(b"220 mx\r\n250 mx\r\n250 ok\r\n250 ok\r\n354 go\r\n250 ok\r\n")
    assert c2.idle
    c2.receive(b"421 4.4.2 idle too long\r\n")
    assert not c2.idle
