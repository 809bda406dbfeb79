"""postroom-pop3d as a process, with poplib over real sockets: states, TLS, SASL, the
POP3 lock next to IMAP-style sessions, UPDATE only at QUIT, byte-exact messages, the
[SYS/TEMP] and [SYS/PERM] codes."""

from __future__ import annotations

import base64
import poplib

import pytest

from common.storage import INBOX
from tests.support import wait_for

from .pop3_fixtures import (PASSWORD, LineClient, login, maildir, pop3d_config, start, store_for, store_with,
                            tls_context)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pop3")
    etc, pop3, pop3s = pop3d_config(tmp)
    daemon = start(etc, pop3, pop3s)
    yield tmp, pop3, pop3s
    assert daemon.stop() == 0, daemon.output()
    assert "Traceback" not in daemon.output(), daemon.output()


def test_full_session_over_stls(server):
    tmp, pop3, _ = server
    user = "demo@example.test"
    store = store_for(tmp, user)
    bodies = [b"Subject: one\n\nfirst\n", b"Subject: two\n\nsecond\nline\n", b"Subject: three\r\n\r\nthird\r\n"]
    for body in bodies:
        store.deliver(body)
    client = poplib.POP3("127.0.0.1", pop3, timeout=10)
    capa = client.capa()
    assert {"TOP", "UIDL", "USER", "SASL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
            "IMPLEMENTATION"} <= set(capa)
    assert capa["SASL"] == ["PLAIN", "LOGIN"]
    client.stls(tls_context())
    assert "STLS" not in client.capa()
    client.user(user)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    crlf = [b.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for b in bodies]
    assert client.stat() == (3, sum(len(b) for b in crlf))
    resp, listing, _ = client.list()
    assert listing == [f"{i} {len(b)}".encode() for i, b in enumerate(crlf, 1)]
    assert client.list(2) == f"+OK 2 {len(crlf[1])}".encode()
    box = store.open_mailbox(INBOX, readonly=True)
    expected_uidls = [f"{i} {m.uid:08x}{box.uidvalidity:08x}".encode() for i, m in enumerate(box.messages, 1)]
    assert client.uidl()[1] == expected_uidls
    assert client.uidl(3) == b"+OK " + expected_uidls[2]
    resp, lines, octets = client.retr(2)
    assert resp == f"+OK {len(crlf[1])} octets".encode() and b"\r\n".join(lines) + b"\r\n" == crlf[1]
    assert client.top(1, 0)[1] == [b"Subject: one", b""]
    assert client.noop() == b"+OK"
    assert client.dele(1).startswith(b"+OK")
    with pytest.raises(poplib.error_proto):
        client.retr(1)
    assert client.rset().startswith(b"+OK")
    assert client.dele(3).startswith(b"+OK")
    assert client.stat()[0] == 2
    assert client.quit().startswith(b"+OK")
    box = store.open_mailbox(INBOX)
    assert len(box.messages) == 2
    # Retrieved with RETR: \Seen (as Dovecot does); only looked at with TOP: not.
    assert [sorted(m.flags) for m in box.messages] == [[], ["\\Seen"]]


def test_pop3s_and_sasl(server):
    tmp, _, pop3s = server
    user = "alice@example.test"
    store_for(tmp, user).deliver(b"Subject: s\n\nx\n")
    client = LineClient(pop3s, implicit_tls=True)
    assert client.greeting.startswith(b"+OK")
    plain = base64.b64encode(f"\0{user}\0{PASSWORD}".encode()).decode()
    assert client.cmd(f"AUTH PLAIN {plain}").startswith(b"+OK Logged in, 1 messages")
    assert client.cmd("QUIT").startswith(b"+OK")
    client = LineClient(pop3s, implicit_tls=True)
    assert client.cmd("AUTH LOGIN") == b"+ VXNlcm5hbWU6"
    assert client.cmd(base64.b64encode(user.encode()).decode()) == b"+ UGFzc3dvcmQ6"
    assert client.cmd(base64.b64encode(b"wrong").decode()) == b"-ERR [AUTH] Authentication failed."
    assert client.cmd("AUTH PLAIN") == b"+ "
    assert client.cmd(plain).startswith(b"+OK")
    assert client.cmd("STAT") == b"+OK 1 17"
    client.cmd("QUIT")


def test_wrong_password_and_unknown_user_look_the_same(server):
    _, pop3, _ = server
    answers = []
    for user in ("bob@example.test", "nobody@example.test"):
        client = poplib.POP3("127.0.0.1", pop3, timeout=10)
        client.user(user)
        with pytest.raises(poplib.error_proto) as exc:
            client.pass_("wrong")
        answers.append(exc.value.args[0])
        client.close()
    assert answers == [b"-ERR [AUTH] Authentication failed."] * 2


def test_second_session_in_use_while_imap_works(server):
    tmp, pop3, pop3s = server
    user = "carol@example.test"
    store = store_for(tmp, user)
    store.deliver(b"Subject: a\n\nx\n")
    first = login(pop3, user)
    client = poplib.POP3_SSL("127.0.0.1", pop3s, context=tls_context(), timeout=10)
    client.user(user)
    with pytest.raises(poplib.error_proto) as exc:
        client.pass_(PASSWORD)
    assert exc.value.args[0].startswith(b"-ERR [IN-USE]")
    # Still in AUTHORIZATION: the client may try again later on the same connection.
    assert client.capa()
    # IMAP-style access and delivery go on meanwhile.
    box = store.open_mailbox(INBOX)
    box.store([1], ["\\Flagged"], "add")
    store.deliver(b"Subject: b\n\ny\n")
    assert first.stat()[0] == 1  # the snapshot taken at login
    first.quit()
    client.user(user)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    assert client.stat()[0] == 2
    client.quit()


def test_dele_quit_is_an_expunge_for_an_open_imap_session(server):
    tmp, pop3, _ = server
    user = "dave@example.test"
    store = store_with(tmp, user, 3)
    imap_side = store.open_mailbox(INBOX)
    assert [m.uid for m in imap_side.messages] == [1, 2, 3]
    client = login(pop3, user)
    client.dele(1)
    client.dele(3)
    assert not imap_side.sync()  # nothing happens before QUIT
    client.quit()
    changes = imap_side.sync()
    assert changes.expunged == [1, 3] and [m.uid for m in imap_side.messages] == [2]


def test_dele_then_dropped_connection_removes_nothing(server):
    tmp, pop3, _ = server
    user = "erin@example.test"
    store = store_with(tmp, user, 2)
    client = LineClient(pop3)
    assert client.cmd(f"USER {user}").startswith(b"+OK")
    assert client.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    assert client.cmd("DELE 1").startswith(b"+OK")
    assert client.cmd("DELE 2").startswith(b"+OK")
    client.close()  # no QUIT: RFC 1939 says nothing is deleted

    def relogin():
        try:
            return login(pop3, user)
        except poplib.error_proto:  # [IN-USE] until the server noticed the drop
            return None
    again = wait_for(relogin, timeout=10, what="the POP3 lock to be released")
    assert again.stat()[0] == 2
    again.quit()
    assert len(store.open_mailbox(INBOX).messages) == 2


def test_stls_injection_is_discarded(server):
    _, pop3, _ = server
    client = LineClient(pop3)
    # USER is sent in the same packet as STLS, before the handshake: it must not count.
    client.send(b"STLS\r\nUSER frank@example.test\r\n")
    assert client.line().startswith(b"+OK Begin TLS")
    assert client.buf == b""
    client.sock = tls_context().wrap_socket(client.sock)
    assert client.cmd(f"PASS {PASSWORD}").startswith(b"-ERR No user name given")
    assert client.cmd("USER frank@example.test").startswith(b"+OK")
    assert client.cmd(f"PASS {PASSWORD}").startswith(b"+OK Logged in")
    client.cmd("QUIT")


def test_top_and_leading_dots_round_trip_exactly(server):
    tmp, pop3, _ = server
    user = "grace@example.test"
    store = store_for(tmp, user)
    body = b"".join(f"line {i}\r\n".encode() for i in range(200))
    tricky = b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\n...three\r\n \r\n.\r\nend"
    store.deliver(b"Subject: long\r\nX-A: b\r\n\r\n" + body)
    store.deliver(tricky)
    client = login(pop3, user)
    assert client.top(1, 0)[1] == [b"Subject: long", b"X-A: b", b""]
    assert client.top(1, 5)[1] == [b"Subject: long", b"X-A: b", b""] + [f"line {i}".encode() for i in range(5)]
    assert client.top(1, 10000)[1][3:] == [f"line {i}".encode() for i in range(200)]
    # poplib undoes the dot-stuffing: what it hands back is exactly what was stored.
    lines = client.retr(2)[1]
    assert b"\r\n".join(lines) == tricky
    client.quit()


def test_dot_stuffing_on_the_wire(server):
    tmp, pop3, _ = server
    user = "heidi@example.test"
    store_for(tmp, user).deliver(b"A: b\n\n.\n.x\nlast")
    client = LineClient(pop3)
    client.cmd(f"USER {user}")
    assert client.cmd(f"PASS {PASSWORD}").startswith(b"+OK")
    client.send(b"RETR 1\r\n")
    assert client.line().startswith(b"+OK")
    assert client.multiline() == [b"A: b", b"", b"..", b"..x", b"last"]
    client.cmd("QUIT")


def test_pipelined_commands_answered_in_order(server):
    tmp, pop3, _ = server
    user = "ivan@example.test"
    store_with(tmp, user, 3, "body {i}")
    client = LineClient(pop3)
    client.send(f"USER {user}\r\nPASS {PASSWORD}\r\nSTAT\r\nRETR 1\r\nRETR 2\r\nLIST 3\r\nNOOP\r\nQUIT\r\n".encode())
    assert client.line().startswith(b"+OK")  # USER
    assert client.line().startswith(b"+OK Logged in")
    assert client.line().startswith(b"+OK 3 ")
    for i in (0, 1):
        assert client.line().startswith(b"+OK")
        assert client.multiline()[-1] == f"body {i}".encode()
    assert client.line().startswith(b"+OK 3 ")
    assert client.line() == b"+OK"
    assert client.line().startswith(b"+OK Logging out")
    assert client.closed_by_server()


def test_long_lines_and_garbage_do_not_break_the_session(server):
    _, pop3, _ = server
    client = LineClient(pop3)
    client.send(b"CAPA " + b"x" * 100000 + b"\r\n")
    assert client.line() == b"-ERR Line too long."
    assert client.cmd("NOOP").startswith(b"-ERR Command not allowed")
    assert client.cmd("CAPA").startswith(b"+OK")
    client.multiline()
    for _ in range(17):
        assert client.cmd("BOGUS").startswith(b"-ERR")
    assert client.cmd("BOGUS") == b"-ERR Unknown command."
    assert client.line() == b"-ERR [SYS/PERM] Too many bad commands, closing."
    assert client.closed_by_server()


def test_message_expunged_by_imap_during_the_session(server):
    tmp, pop3, _ = server
    user = "judy@example.test"
    store = store_for(tmp, user)
    store.deliver(b"Subject: a\n\nx\n")
    store.deliver(b"Subject: b\n\ny\n")
    client = login(pop3, user)
    imap_side = store.open_mailbox(INBOX)
    imap_side.store([1], ["\\Deleted"], "add")
    assert imap_side.expunge() == [1]
    with pytest.raises(poplib.error_proto) as exc:
        client.retr(1)
    assert exc.value.args[0] == b"-ERR Message was removed by another session."
    assert client.retr(2)[1][-1] == b"y"
    client.dele(1)
    assert client.quit().startswith(b"+OK")
    assert [m.uid for m in store.open_mailbox(INBOX).messages] == [2]


def test_auth_login_with_an_initial_response(server):
    tmp, pop3, _ = server
    user = "kate@example.test"
    store_for(tmp, user).deliver(b"Subject: k\n\nx\n")
    client = LineClient(pop3)
    client.starttls()
    b64 = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    # RFC 5034: the initial response is the user name; only the password is asked for.
    assert client.cmd(f"AUTH LOGIN {b64(user)}") == b"+ UGFzc3dvcmQ6"
    assert client.cmd(b64("wrong")) == b"-ERR [AUTH] Authentication failed."
    assert client.cmd(f"AUTH LOGIN {b64(user)}") == b"+ UGFzc3dvcmQ6"
    assert client.cmd(b64(PASSWORD)) == b"+OK Logged in, 1 messages."
    assert client.cmd("STAT") == b"+OK 1 17"
    assert client.cmd("QUIT").startswith(b"+OK")


def test_sys_temp_and_sys_perm_when_the_maildir_cannot_be_opened(server):
    """The codes RFC 3206 defines, for what truly yields each: a home that is a file
    (the maildir cannot be made under it) is temporary; a maildir whose cur/ is a
    file is a permanent storage problem. Neither answer shows a path, and the
    session stays in AUTHORIZATION."""
    tmp, pop3, _ = server
    home_file = maildir(tmp, "liam@example.test").parent
    home_file.parent.mkdir(parents=True, exist_ok=True)
    home_file.write_bytes(b"a file where the home should be")
    bad_cur = maildir(tmp, "mona@example.test")
    for sub in ("new", "tmp"):
        (bad_cur / sub).mkdir(parents=True)
    (bad_cur / "cur").write_bytes(b"not a directory")

    client = LineClient(pop3)
    client.starttls()
    assert client.cmd("USER liam@example.test").startswith(b"+OK")
    assert client.cmd(f"PASS {PASSWORD}") == b"-ERR [SYS/TEMP] Cannot open the mailbox now."
    assert client.cmd("USER mona@example.test").startswith(b"+OK")
    assert client.cmd(f"PASS {PASSWORD}") == b"-ERR [SYS/PERM] Cannot open the mailbox now."
    # Temporary indeed: once the home is a folder, the same connection logs in.
    home_file.unlink()
    assert client.cmd("USER liam@example.test").startswith(b"+OK")
    assert client.cmd(f"PASS {PASSWORD}") == b"+OK Logged in, 0 messages."
    assert client.cmd("QUIT").startswith(b"+OK")
