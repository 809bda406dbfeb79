"""The sans-IO SMTP/LMTP server core, fed bytes, compared on events and replies."""

from __future__ import annotations

import base64

import pytest

from common.smtp import replies as R
from common.smtp.server import (
    Authenticate, Close, Hello, MailFrom, Message, RcptTo, ServerSettings, SmtpServerConn, StartTLS, Verify,
)


def make(**kw):
    lmtp = kw.pop("lmtp", False)
    tls = kw.pop("tls", False)
    auth_allowed = kw.pop("auth_allowed", False)
    conn = SmtpServerConn(ServerSettings(hostname="mx.example.test", **kw), lmtp=lmtp, tls=tls, auth_allowed=auth_allowed)
    conn.greet()
    conn.data_to_send()
    return conn


def feed(conn, data: bytes, accept=True):
    """Feed data, answer every event positively (or not), return (events, output)."""
    seen = []
    events = conn.receive(data)
    while events:
        ev = events.pop(0)
        seen.append(ev)
        if ev.needs_answer:
            more = conn.accept("queued as X" if isinstance(ev, Message) else None) if accept else conn.reject(R.Reply(550, "5.1.1", "No"))
            events.extend(more)
    return seen, conn.data_to_send()


def codes(output: bytes) -> list[str]:
    return [line[:3].decode() for line in output.split(b"\r\n") if line and line[3:4] == b" "]


def test_greeting_and_ehlo_keywords():
    conn = SmtpServerConn(ServerSettings(hostname="mx.example.test", max_message_size=1000, starttls=True))
    conn.greet()
    assert conn.data_to_send() == b"220 mx.example.test ESMTP postroom\r\n"
    events, out = feed(conn, b"EHLO client.example\r\n")
    assert events == [Hello("client.example", True)]
    lines = out.decode().split("\r\n")
    assert lines[0] == "250-mx.example.test"
    for kw in ("PIPELINING", "SIZE 1000", "8BITMIME", "SMTPUTF8", "ENHANCEDSTATUSCODES", "DSN", "CHUNKING", "STARTTLS"):
        assert any(line[4:] == kw for line in lines), kw
    assert not any("AUTH" in line for line in lines)
    assert lines[-2].startswith("250 ")


def test_whole_transaction_with_pipelining_in_order():
    conn = make()
    data = (b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nRCPT TO:<c@example.test>\r\n"
            b"DATA\r\n")
    events, out = feed(conn, data)
    assert [type(e) for e in events] == [Hello, MailFrom, RcptTo, RcptTo]
    assert codes(out) == ["250", "250", "250", "250", "354"]
    events, out = feed(conn, b"Subject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    msg = events[0]
    assert isinstance(msg, Message)
    assert msg.data == b"Subject: x\r\n\r\n.dot\r\n"
    assert [r.address for r in msg.recipients] == ["b@example.test", "c@example.test"]
    assert out == b"250 2.0.0 queued as X\r\n221 2.0.0 Bye\r\n"
    assert isinstance(events[-1], Close)


def test_replies_wait_for_pending_answer():
    conn = make()
    feed(conn, b"EHLO c\r\n")
    events = conn.receive(b"MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nNOOP\r\n")
    assert [type(e) for e in events] == [MailFrom]
    assert conn.data_to_send() == b""
    assert conn.backlog > 0
    events = conn.receive(b"RCPT TO:<c@example.test>\r\n")
    assert events == []
    events = conn.accept()
    assert [type(e) for e in events] == [RcptTo]
    assert conn.data_to_send() == b"250 2.1.0 Sender OK\r\n"
    events = conn.reject(R.Reply(550, "5.1.1", "No such user"))
    assert [type(e) for e in events] == [RcptTo]
    events = conn.accept()
    assert events == []
    assert conn.data_to_send() == b"550 5.1.1 No such user\r\n250 2.0.0 OK\r\n250 2.1.5 Recipient OK\r\n"


@pytest.mark.parametrize("bad", [b"NOOP\n", b"NOOP\rX\r\n", b"NO\rOP\r\n"])
def test_bare_cr_or_lf_in_command_refused(bad):
    conn = make()
    events, out = feed(conn, bad + b"NOOP\r\n")
    assert codes(out) == ["500", "250"]
    assert b"5.5.2" in out


def test_bare_lf_in_data_refused_and_lf_dot_crlf_never_ends():
    conn = make()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    events, out = feed(conn, b"Subject: x\r\n\r\nsmuggle\n.\r\nMAIL FROM:<evil@example.org>\r\n")
    assert not any(isinstance(e, (Message, MailFrom)) for e in events)
    assert out.startswith(b"521 5.5.2")
    assert isinstance(events[-1], Close) and conn.closed


def test_bare_lf_split_across_packets_refused():
    conn = make()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    events, out = feed(conn, b"line one\r")
    assert out == b"" and events == []
    events, out = feed(conn, b"\nline two\n")
    assert out.startswith(b"521")
    assert not any(isinstance(e, Message) for e in events)


def test_bare_cr_in_data_refused():
    conn = make()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    events, out = feed(conn, b"a\rb\r\n.\r\n")
    assert out.startswith(b"521") and not any(isinstance(e, Message) for e in events)


def test_data_byte_by_byte_and_dot_unstuffing():
    conn = make()
    feed(conn, b"EHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    body = b"..\r\n...x\r\n.\r\n"
    seen = []
    for i in range(len(body)):
        events, out = feed(conn, body[i:i + 1])
        seen += events
    msgs = [e for e in seen if isinstance(e, Message)]
    assert len(msgs) == 1 and msgs[0].data == b".\r\n..x\r\n"
    assert msgs[0].sender == ""


def test_empty_message():
    conn = make()
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n.\r\n")
    assert [e.data for e in events if isinstance(e, Message)] == [b""]


def test_size_enforced_at_mail_and_in_data():
    conn = make(max_message_size=100)
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c> SIZE=101\r\n")
    assert codes(out)[-1] == "552" and b"5.3.4" in out
    events, out = feed(conn, b"MAIL FROM:<a@b.c> SIZE=50\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    events, out = feed(conn, b"x" * 60 + b"\r\n" + b"y" * 60 + b"\r\n.\r\nNOOP\r\n")
    assert not any(isinstance(e, Message) for e in events)
    assert codes(out) == ["552", "250"]


def test_text_line_limit_in_data():
    conn = make(max_text_line=100)
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\nDATA\r\n")
    events, out = feed(conn, b"x" * 150)
    assert out == b""
    events, out = feed(conn, b"x" * 150 + b"\r\nshort\r\n.\r\n")
    assert codes(out) == ["500"] and not any(isinstance(e, Message) for e in events)
    assert not conn.closed


def test_command_line_limit():
    conn = make(max_command_line=64)
    events, out = feed(conn, b"NOOP " + b"x" * 100)
    assert codes(out) == ["500"]
    events, out = feed(conn, b"yyy\r\nNOOP\r\n")
    assert codes(out) == ["250"]


def test_too_many_errors_disconnects():
    conn = make(max_errors=3)
    events, out = feed(conn, b"BAD\r\nBAD\r\nBAD\r\nNOOP\r\n")
    assert codes(out) == ["500", "500", "500", "421"]
    assert isinstance(events[-1], Close)


def test_commands_before_mail_limit():
    conn = make(max_commands_before_mail=3)
    events, out = feed(conn, b"NOOP\r\nNOOP\r\nNOOP\r\nNOOP\r\n")
    assert codes(out) == ["250", "250", "250", "421"]


def test_recipient_limit():
    conn = make(max_recipients=2)
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n" + b"RCPT TO:<b@example.test>\r\n" * 3)
    assert codes(out)[-3:] == ["250", "250", "452"]


def test_sequence_errors():
    conn = make()
    events, out = feed(conn, b"MAIL FROM:<a@b.c>\r\nEHLO c\r\nRCPT TO:<b@example.test>\r\nDATA\r\n"
                              b"MAIL FROM:<a@b.c>\r\nDATA\r\nMAIL FROM:<a@b.c>\r\n")
    assert codes(out) == ["503", "250", "503", "503", "250", "554", "503"]


def test_address_and_parameter_syntax():
    conn = make()
    feed(conn, b"EHLO c\r\n")
    _, out = feed(conn, b"MAIL FROM:<no-at-sign>\r\n")
    assert codes(out) == ["553"]
    _, out = feed(conn, b"MAIL FROM:<a@b.c> FOO=1\r\n")
    assert codes(out) == ["555"]
    _, out = feed(conn, "MAIL FROM:<j\u00f6@b.c>\r\n".encode())
    assert out.startswith(b"553 5.6.7")
    events, out = feed(conn, "MAIL FROM:<j\u00f6@b.c> SMTPUTF8 BODY=8BITMIME\r\n".encode())
    assert events[0].sender == "j\u00f6@b.c" and events[0].params == {"SMTPUTF8": True, "BODY": "8BITMIME"}
    _, out = feed(conn, b"RCPT TO:<@relay.example:user@example.test>\r\nRCPT TO:<postmaster>\r\n")
    assert codes(out) == ["250", "250"]


def test_dsn_parameters():
    conn = make()
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c> RET=HDRS ENVID=abc+2Bdef\r\n"
                              b"RCPT TO:<b@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;b+40example.test\r\n"
                              b"RCPT TO:<c@example.test> NOTIFY=NEVER\r\nRCPT TO:<d@example.test> NOTIFY=NEVER,DELAY\r\n")
    assert events[1].params == {"RET": "HDRS", "ENVID": "abc+2Bdef"}
    assert events[2].params == {"NOTIFY": ("SUCCESS", "FAILURE"), "ORCPT": "rfc822;b+40example.test"}
    assert events[3].params == {"NOTIFY": ("NEVER",)}
    assert codes(out) == ["250", "250", "250", "250", "501"]


def test_starttls_discards_pipelined_input():
    conn = make(starttls=True)
    feed(conn, b"EHLO c\r\n")
    events, out = feed(conn, b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\n")
    assert [type(e) for e in events] == [StartTLS]
    assert out == b"220 2.0.0 Ready to start TLS\r\n"
    assert conn.receive(b"RCPT TO:<x@example.test>\r\n") == []
    conn.tls_started()
    events, out = feed(conn, b"MAIL FROM:<a@b.c>\r\nEHLO c\r\n")
    assert codes(out) == ["503", "250"]
    assert b"STARTTLS" not in out
    events, out = feed(conn, b"STARTTLS\r\n")
    assert codes(out) == ["503"]


def test_auth_refused_before_tls_and_not_advertised():
    conn = make(auth_mechanisms=("PLAIN", "LOGIN"), starttls=True)
    _, out = feed(conn, b"EHLO c\r\n")
    assert b"AUTH" not in out
    _, out = feed(conn, b"AUTH PLAIN " + base64.b64encode(b"\0u@example.test\0pw") + b"\r\n")
    assert out.startswith(b"538 5.7.11")


def test_auth_plain_and_login():
    conn = make(auth_mechanisms=("PLAIN", "LOGIN"), tls=True, auth_allowed=True)
    _, out = feed(conn, b"EHLO c\r\n")
    assert b"250-AUTH PLAIN LOGIN" in out or b"250 AUTH PLAIN LOGIN" in out
    events, out = feed(conn, b"AUTH PLAIN " + base64.b64encode(b"\0u@example.test\0pw") + b"\r\n")
    assert events == [Authenticate("PLAIN", "", "u@example.test", "pw")]
    assert out == b"235 2.7.0 Authentication successful\r\n"
    conn = make(auth_mechanisms=("PLAIN", "LOGIN"), tls=True, auth_allowed=True)
    feed(conn, b"EHLO c\r\n")
    _, out = feed(conn, b"AUTH LOGIN\r\n")
    assert out == b"334 VXNlcm5hbWU6\r\n"
    _, out = feed(conn, base64.b64encode(b"u@example.test") + b"\r\n")
    assert out == b"334 UGFzc3dvcmQ6\r\n"
    events, out = feed(conn, base64.b64encode(b"secret") + b"\r\n", accept=False)
    assert events[0].password == "secret" and "secret" not in repr(events[0])
    assert codes(out) == ["550"]
    _, out = feed(conn, b"AUTH PLAIN\r\n*\r\n")
    assert out == b"334 \r\n501 5.0.0 Authentication cancelled\r\n"


def test_require_auth_and_tls_for_mail():
    conn = make(require_tls=True, require_auth=True, auth_mechanisms=("PLAIN",), starttls=True)
    _, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")
    assert out.endswith(b"530 5.7.0 Must issue a STARTTLS command first\r\n")
    conn = make(require_auth=True, auth_mechanisms=("PLAIN",), tls=True, auth_allowed=True)
    _, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\n")
    assert out.endswith(b"530 5.7.0 Authentication required\r\n")


def test_bdat_chunks():
    conn = make()
    events, out = feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\n"
                              b"BDAT 5\r\nhelloBDAT 8 LAST\r\n\r\n.\r\nx\r\n")
    msgs = [e for e in events if isinstance(e, Message)]
    assert msgs and msgs[0].data == b"hello\r\n.\r\nx\r\n"
    assert codes(out)[-2:] == ["250", "250"]
    assert b"5 octets received" in out


def test_bdat_without_recipients_consumes_chunk():
    conn = make()
    events, out = feed(conn, b"EHLO c\r\nBDAT 4 LAST\r\nNOOPNOOP\r\n")
    assert codes(out) == ["250", "503", "250"]


def test_bdat_too_big_and_bare_lf():
    conn = make(max_message_size=10)
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\n")
    _, out = feed(conn, b"BDAT 20 LAST\r\n" + b"x" * 20 + b"NOOP\r\n")
    assert codes(out) == ["552", "250"]
    conn = make()
    feed(conn, b"EHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\n")
    events, out = feed(conn, b"BDAT 3 LAST\r\na\nb")
    assert codes(out) == ["554"] and not any(isinstance(e, Message) for e in events)


def test_refused_greeting_allows_only_quit():
    conn = SmtpServerConn(ServerSettings())
    conn.greet(R.Reply(554, "5.7.1", "Listed"))
    assert conn.data_to_send() == b"554 5.7.1 Listed\r\n"
    _, out = feed(conn, b"EHLO c\r\nQUIT\r\n")
    assert codes(out) == ["503", "221"]


def test_vrfy_help_noop_rset_expn():
    conn = make()
    _, out = feed(conn, b"VRFY bob\r\nHELP\r\nNOOP\r\nRSET\r\nEXPN list\r\n")
    assert codes(out) == ["252", "214", "250", "250", "502"]


def test_lmtp_one_reply_per_recipient():
    conn = make(lmtp=True)
    _, out = feed(conn, b"EHLO c\r\n")
    assert codes(out) == ["500"]
    events = conn.receive(b"LHLO c\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\n")
    events += conn.accept()
    events += conn.accept()
    events += conn.receive(b"RCPT TO:<c@example.test>\r\n")
    events += conn.accept()
    events += conn.receive(b"DATA\r\nhi\r\n.\r\n")
    assert isinstance(events[-1], Message)
    conn.answer_each([R.Reply(250, "2.0.0", "delivered"), R.Reply(452, "4.2.2", "over quota")])
    out = conn.data_to_send()
    assert out.endswith(b"354 End data with <CR><LF>.<CR><LF>\r\n250 2.0.0 delivered\r\n452 4.2.2 over quota\r\n")
    assert out.startswith(b"220 ") is False


def test_every_reply_has_enhanced_code():
    conn = make(starttls=True)
    _, out = feed(conn, b"EHLO c\r\nNOOP\r\nRSET\r\nBOGUS\r\nMAIL FROM:<a@b.c>\r\nRCPT TO:<b@example.test>\r\nQUIT\r\n")
    for line in out.decode().split("\r\n")[:-1]:
        if line.startswith("250-") or line.startswith("250 AUTH") or line == "250 CHUNKING" or line == "250 STARTTLS":
            continue
        code, rest = line[:3], line[4:]
        assert rest.split(" ")[0].startswith(code[0] + "."), line


# -- properties: any bytes, any chunking ------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PIECES = [b"EHLO c\r\n", b"MAIL FROM:<a@b.c>\r\n", b"RCPT TO:<b@example.test>\r\n", b"DATA\r\n",
           b"BDAT 3\r\n", b"BDAT 2 LAST\r\n", b"xy", b".\r\n", b"..x\r\n", b"\r\n", b"\n", b"\r", b"NOOP\r\n",
           b"RSET\r\n", b"AUTH PLAIN\r\n", b"STARTTLS\r\n", b"\x00\xff", b"QUIT\r\n"]


def _run_chunks(chunks):
    conn = make(auth_mechanisms=("PLAIN", "LOGIN"), tls=True, auth_allowed=True, max_message_size=200,
                max_text_line=50, max_command_line=80)
    out = b""
    for chunk in chunks:
        events = conn.receive(chunk)
        while events:
            ev = events.pop(0)
            if ev.needs_answer:
                events.extend(conn.accept("ok") if not isinstance(ev, Message) else conn.accept("queued"))
        out += conn.data_to_send()
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.binary(max_size=20)), max_size=30), st.data())
def test_any_input_any_chunking_same_replies(pieces, data):
    stream = b"".join(pieces)
    whole = _run_chunks([stream])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert _run_chunks(chunks) == whole
    for line in whole.split(b"\r\n")[:-1]:
        assert len(line) >= 3 and line[:3].isdigit() and b"\n" not in line and b"\r" not in line


def test_vrfy_when_enabled_never_echoes_the_argument():
    conn = make(vrfy=True)
    events = conn.receive(b"VRFY <evil\x7fname@example.test>\r\n")
    assert isinstance(events[0], Verify) and events[0].argument == "<evil\x7fname@example.test>"
    conn.accept()
    assert conn.data_to_send() == b"252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
    conn.receive(b"VRFY alice\r\n")
    conn.accept("<alice@example.test>")
    assert conn.data_to_send() == b"250 2.1.5 <alice@example.test>\r\n"
