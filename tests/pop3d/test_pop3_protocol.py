"""The POP3 core fed with bytes: every command in every state, response codes,
limits, STLS discarding, SASL, and the message formatting."""

import base64

import pytest

from pop3d.protocol import (Authenticate, Close, Commit, Fetch, Limits, Listing, Pop3Conn, Send, StartTLS,
                            format_message, format_uidl)

MESSAGES = [Listing(3, 100, "u3"), Listing(7, 250, "u7"), Listing(9, 50, "u9")]


def sent(events) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, Send))


def logged_in(**kw) -> Pop3Conn:
    conn = Pop3Conn(plaintext_allowed_in_clear=True, **kw)
    conn.greeting()
    events = conn.receive(b"USER alice\r\nPASS secret word\r\n")
    assert events[-1] == Authenticate("alice", "secret word", "")
    conn.login_succeeded(MESSAGES)
    return conn


def test_greeting_and_capa_before_and_after_login():
    conn = Pop3Conn(stls_available=True, plaintext_allowed_in_clear=True, login_delay=30)
    assert sent(conn.greeting()).startswith(b"+OK ")
    capa = sent(conn.receive(b"CAPA\r\n")).split(b"\r\n")
    assert capa[0].startswith(b"+OK") and capa[-2:] == [b".", b""]
    for cap in (b"TOP", b"UIDL", b"USER", b"SASL PLAIN LOGIN", b"RESP-CODES", b"AUTH-RESP-CODE",
                b"PIPELINING", b"STLS", b"LOGIN-DELAY 30", b"IMPLEMENTATION postroom"):
        assert cap in capa
    conn.receive(b"USER a\r\nPASS b\r\n")
    conn.login_succeeded([])
    capa = sent(conn.receive(b"capa\r\n")).split(b"\r\n")
    assert b"STLS" not in capa and b"USER" not in capa and b"TOP" in capa


def test_plaintext_refused_on_clear_connection_until_stls():
    conn = Pop3Conn(stls_available=True, plaintext_allowed_in_clear=False)
    conn.greeting()
    capa = sent(conn.receive(b"CAPA\r\n"))
    assert b"USER" not in capa and b"SASL" not in capa and b"STLS" in capa
    out = sent(conn.receive(b"USER a\r\nPASS b\r\nAUTH PLAIN AGEAYg==\r\n"))
    assert out.count(b"-ERR [AUTH] Plaintext authentication disallowed") == 3
    events = conn.receive(b"STLS\r\nUSER injected\r\nPASS injected\r\n")
    # The reply, then the handshake; the pipelined lines after STLS were thrown away.
    assert events == [Send(b"+OK Begin TLS negotiation now.\r\n"), StartTLS()]
    out = sent(conn.receive(b"PASS x\r\n"))
    assert out.startswith(b"-ERR No user name given")
    assert b"USER" in sent(conn.receive(b"CAPA\r\n"))
    assert b"-ERR" in sent(conn.receive(b"STLS\r\n"))  # once only


def test_stls_unavailable_without_tls():
    conn = Pop3Conn(stls_available=False, plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"STLS\r\n")).startswith(b"-ERR")


def test_user_pass_failure_codes_and_limit():
    conn = Pop3Conn(plaintext_allowed_in_clear=True, limits=Limits(max_auth_failures=2))
    assert sent(conn.receive(b"PASS x\r\n")).startswith(b"-ERR No user name")
    conn.receive(b"USER a\r\nPASS wrong\r\n")
    assert sent(conn.login_failed("AUTH", "Authentication failed.")) == b"-ERR [AUTH] Authentication failed.\r\n"
    conn.receive(b"USER a\r\nPASS wrong\r\n")
    events = conn.login_failed("AUTH", "Authentication failed.")
    assert isinstance(events[-1], Close)


@pytest.mark.parametrize("code", ["IN-USE", "LOGIN-DELAY", "SYS/TEMP", "SYS/PERM"])
def test_login_refusals_keep_authorization_state(code):
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    conn.receive(b"USER a\r\nPASS b\r\n")
    assert sent(conn.login_failed(code, "No.")) == f"-ERR [{code}] No.\r\n".encode()
    assert conn.state == "AUTHORIZATION"
    assert sent(conn.receive(b"STAT\r\n")).startswith(b"-ERR Command not allowed in this state")


def test_commands_wait_for_the_login_and_run_in_order():
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    events = conn.receive(b"USER a\r\nPASS b\r\nSTAT\r\nLIST 2\r\n")
    assert isinstance(events[-1], Authenticate)
    assert sent(conn.receive(b"UIDL 3\r\n")) == b""
    out = sent(conn.login_succeeded(MESSAGES))
    assert out == b"+OK Logged in, 3 messages.\r\n+OK 3 400\r\n+OK 2 250\r\n+OK 3 u9\r\n"


def test_auth_plain_with_initial_response_and_continuation():
    creds = base64.b64encode(b"\0alice\0pw pw").decode()
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert conn.receive(f"AUTH PLAIN {creds}\r\n".encode()) == [Authenticate("alice", "pw pw", "")]
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"AUTH plain\r\n")) == b"+ \r\n"
    assert conn.receive(creds.encode() + b"\r\n") == [Authenticate("alice", "pw pw", "")]
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"AUTH PLAIN\r\n*\r\n")).endswith(b"-ERR [AUTH] Authentication failed: authentication cancelled.\r\n")
    assert sent(conn.receive(b"AUTH PLAIN !!!\r\n")).startswith(b"-ERR [AUTH]")
    assert sent(conn.receive(b"AUTH CRAM-MD5\r\n")).startswith(b"-ERR Unsupported")
    assert sent(conn.receive(b"AUTH\r\n")) == b"+OK Mechanisms follow\r\nPLAIN\r\nLOGIN\r\n.\r\n"


def test_auth_login_prompts():
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"AUTH LOGIN\r\n")) == b"+ VXNlcm5hbWU6\r\n"
    assert sent(conn.receive(base64.b64encode(b"bob") + b"\r\n")) == b"+ UGFzc3dvcmQ6\r\n"
    assert conn.receive(base64.b64encode(b"pw") + b"\r\n") == [Authenticate("bob", "pw", "")]
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"AUTH LOGIN " + base64.b64encode(b"bob") + b"\r\n")) == b"+ UGFzc3dvcmQ6\r\n"


def test_transaction_commands():
    conn = logged_in()
    assert sent(conn.receive(b"STAT\r\n")) == b"+OK 3 400\r\n"
    assert sent(conn.receive(b"LIST\r\n")) == b"+OK 3 messages (400 octets)\r\n1 100\r\n2 250\r\n3 50\r\n.\r\n"
    assert sent(conn.receive(b"LIST 4\r\n")).startswith(b"-ERR There is no such message")
    for bad in (b"LIST 0", b"LIST -1", b"LIST x", b"LIST 01", b"RETR 99999999999"):
        assert sent(conn.receive(bad + b"\r\n")).startswith(b"-ERR"), bad
    assert sent(conn.receive(b"UIDL\r\n")) == b"+OK Unique-ID listing follows\r\n1 u3\r\n2 u7\r\n3 u9\r\n.\r\n"
    assert sent(conn.receive(b"NOOP\r\n")) == b"+OK\r\n"
    assert sent(conn.receive(b"DELE 2\r\n")) == b"+OK Marked to be deleted.\r\n"
    assert sent(conn.receive(b"DELE 2\r\n")).startswith(b"-ERR Message is deleted")
    assert sent(conn.receive(b"RETR 2\r\n")).startswith(b"-ERR Message is deleted")
    assert sent(conn.receive(b"STAT\r\nLIST\r\nUIDL\r\n")) == (
        b"+OK 2 150\r\n+OK 2 messages (150 octets)\r\n1 100\r\n3 50\r\n.\r\n"
        b"+OK Unique-ID listing follows\r\n1 u3\r\n3 u9\r\n.\r\n")
    assert sent(conn.receive(b"RSET\r\n")) == b"+OK 3 messages (400 octets)\r\n"
    assert sent(conn.receive(b"STAT\r\n")) == b"+OK 3 400\r\n"
    for cmd in (b"USER a", b"PASS a", b"STLS", b"AUTH PLAIN"):
        assert sent(conn.receive(cmd + b"\r\n")).startswith(b"-ERR Command not allowed in this state")
    for cmd in (b"STAT 1", b"DELE", b"TOP 1", b"TOP 1 x", b"RETR", b"NOOP x", b"APOP a b", b"XYZZY"):
        assert sent(conn.receive(cmd + b"\r\n")).startswith(b"-ERR"), cmd


def test_retr_top_and_update_at_quit():
    conn = logged_in()
    events = conn.receive(b"RETR 1\r\nTOP 2 0\r\nDELE 3\r\nQUIT\r\n")
    assert events == [Fetch(3, None)]
    events = conn.message(b"Subject: a\n\n.leading dot\nlast")
    assert sent(events) == b"+OK 100 octets\r\nSubject: a\r\n\r\n..leading dot\r\nlast\r\n.\r\n"
    assert events[-1] == Fetch(7, 0)
    events = conn.message(b"Subject: b\r\n\r\nbody\r\n")
    assert sent(events) == b"+OK Top of message follows\r\nSubject: b\r\n\r\n.\r\n+OK Marked to be deleted.\r\n"
    assert events[-1] == Commit(deleted=(9,), seen=(3,))
    events = conn.commit_done(None)
    assert sent(events) == b"+OK Logging out (2 messages left).\r\n" and isinstance(events[-1], Close)
    assert conn.receive(b"NOOP\r\n") == []


def test_fetch_failure_and_update_failure_codes():
    conn = logged_in()
    conn.receive(b"RETR 1\r\n")
    assert sent(conn.fetch_failed("SYS/TEMP", "Cannot read.")) == b"-ERR [SYS/TEMP] Cannot read.\r\n"
    conn.receive(b"DELE 1\r\nQUIT\r\n")
    assert sent(conn.commit_done("SYS/TEMP")) == b"-ERR [SYS/TEMP] Some deleted messages were not removed.\r\n"


def test_quit_in_authorization_deletes_nothing():
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    events = conn.receive(b"QUIT\r\n")
    assert sent(events) == b"+OK Logging out.\r\n" and isinstance(events[-1], Close)


def test_line_limits_and_bad_command_limit():
    conn = logged_in(limits=Limits(max_line_length=300, max_bad_commands=3))
    out = sent(conn.receive(b"NOOP " + b"x" * 400))
    assert out == b"-ERR Line too long.\r\n"
    assert sent(conn.receive(b"y" * 1000 + b"\r\nSTAT\r\n")) == b"+OK 3 400\r\n"  # rest of the long line skipped
    events = conn.receive(b"BOGUS\r\nBOGUS\r\nSTAT\r\n")
    assert sent(events).endswith(b"-ERR [SYS/PERM] Too many bad commands, closing.\r\n")
    assert isinstance(events[-1], Close)


def test_command_count_limit_and_pending_input_bound():
    conn = logged_in(limits=Limits(max_commands=4))
    events = conn.receive(b"NOOP\r\n" * 5)
    assert sent(events).endswith(b"-ERR [SYS/PERM] Too many commands, closing.\r\n")
    conn = logged_in()
    conn.receive(b"RETR 1\r\n")
    events = conn.receive(b"NOOP\r\n" * 200000)
    assert sent(events).startswith(b"-ERR [SYS/PERM]") and isinstance(events[-1], Close)


def test_8bit_and_control_characters_refused():
    conn = Pop3Conn(plaintext_allowed_in_clear=True)
    assert sent(conn.receive(b"USER \xff\r\n")).startswith(b"-ERR")
    assert sent(conn.receive(b"USER a\x00b\r\n")).startswith(b"-ERR")


@pytest.mark.parametrize("stored, top, wire", [
    (b"A: b\n\nx\n", None, b"A: b\r\n\r\nx\r\n.\r\n"),
    (b"A: b\r\n\r\nx\r\n", None, b"A: b\r\n\r\nx\r\n.\r\n"),
    (b".\n..\n.x\n", None, b"..\r\n...\r\n..x\r\n.\r\n"),
    (b"A: b\n\nno newline", None, b"A: b\r\n\r\nno newline\r\n.\r\n"),
    (b"", None, b".\r\n"),
    (b"A: b\n\n1\n2\n3\n", 2, b"A: b\r\n\r\n1\r\n2\r\n.\r\n"),
    (b"A: b\n\n1\n2\n3\n", 0, b"A: b\r\n\r\n.\r\n"),
    (b"A: b\n\n1\n2\n3\n", 100, b"A: b\r\n\r\n1\r\n2\r\n3\r\n.\r\n"),
    (b"A: b\nC: d\n", 5, b"A: b\r\nC: d\r\n.\r\n"),
    (b"A: b\n\n.dot\n", 1, b"A: b\r\n\r\n..dot\r\n.\r\n"),
])
def test_format_message(stored, top, wire):
    assert format_message(stored, top) == wire


def test_uidl_formats():
    assert format_uidl("%08Xu%08Xv", 5, 1700000000, "b") == "000000056553f100"
    assert format_uidl("%u.%v", 5, 17, "b") == "5.17"
    assert format_uidl("%f", 5, 17, "1700000000.M1P2.host") == "1700000000.M1P2.host"
    assert format_uidl("%xu%%u", 255, 1, "b") == "ff%u"


def test_a_megabyte_of_pipelined_commands_takes_linear_time():
    import time
    conn = logged_in(limits=Limits(max_commands=10**6, max_bad_commands=10**6))
    burst = b"NOOP\r\n" * 150000  # 900 KB in one read
    started = time.perf_counter()
    out = sent(conn.receive(burst))
    assert out == b"+OK\r\n" * 150000
    # Linear: about a second on an idle machine. Re-slicing per line would copy ~67 GB.
    assert time.perf_counter() - started < 30
