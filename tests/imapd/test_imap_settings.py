"""imapd.yaml settings that change what a client sees, each on its own postroom-imapd
over real sockets: LITERAL- instead of LITERAL+, and the special-use folders (a
custom mapping and none at all)."""

from __future__ import annotations

import pytest

from .conftest import Raw, start_imapd

MSG = b"Subject: literal\r\n\r\nbody\r\n"


@pytest.fixture
def server(tmp_path, request):
    server = start_imapd(tmp_path, request.param)
    try:
        yield server
    finally:
        assert server.daemon.stop() == 0, server.daemon.output()
        assert "Traceback" not in server.daemon.output()


@pytest.mark.parametrize("server", ["limits:\n  literal: minus\n"], indirect=True)
def test_literal_minus(server):
    c = Raw(server.port)
    greeting = c.line()
    assert b" LITERAL- " in greeting and b"LITERAL+" not in greeting
    login = c.cmd(b"l", b"LOGIN alice@example.test postroom")[-1]
    assert b" LITERAL- " in login and b"LITERAL+" not in login
    # Up to 4096 bytes a literal needs no continuation (RFC 7888).
    body = MSG + b"x" * (4096 - len(MSG))
    c.send(b"a APPEND INBOX {4096+}\r\n" + body + b"\r\n")
    assert c.until(b"a")[-1].startswith(b"a OK [APPENDUID")
    # One byte more: tagged BAD [TOOBIG], and the literal is read and thrown away,
    # not taken for commands (it holds a LOGOUT line here).
    body = MSG + b"\r\nz LOGOUT\r\n" + b"y" * (4097 - len(MSG) - 12)
    assert len(body) == 4097
    c.send(b"b APPEND INBOX {4097+}\r\n" + body + b"\r\nc NOOP\r\n")
    assert c.until(b"b") == [b"b BAD [TOOBIG] Non-synchronising literal over 4096 bytes"]
    assert c.until(b"c") == [b"c OK NOOP completed"]
    # A synchronising literal of any size within the limits still works.
    body = MSG + b"z" * 10000
    c.send(b"d APPEND INBOX {%d}\r\n" % len(body))
    assert c.line().startswith(b"+ ")
    c.send(body + b"\r\n")
    assert c.until(b"d")[-1].startswith(b"d OK [APPENDUID")
    out = c.cmd(b"s", b"STATUS INBOX (MESSAGES)")
    assert out[0] == b"* STATUS INBOX (MESSAGES 2)"


CUSTOM = 'special_use:\n  Papierkorb: "\\\\Trash"\n  Gesendet: "\\\\Sent"\n  Notizen: ""\n'


@pytest.mark.parametrize("server", [CUSTOM], indirect=True)
def test_custom_special_use_folders(server):
    c = server.client()
    typ, data = c.capability()
    assert b"SPECIAL-USE" in data[0]
    typ, data = c.list('""', "*")
    assert set(data) == {b'(\\HasNoChildren) "." INBOX', b'(\\HasNoChildren) "." Notizen',
                         b'(\\HasNoChildren \\Sent) "." Gesendet', b'(\\HasNoChildren \\Trash) "." Papierkorb'}
    typ, data = c._simple_command("LIST", '(SPECIAL-USE)', '""', "*")
    assert sorted(c.untagged_responses.pop("LIST")) == [b'(\\HasNoChildren \\Sent) "." Gesendet',
                                                        b'(\\HasNoChildren \\Trash) "." Papierkorb']
    assert sorted(c.lsub('""', "*")[1]) == [b'() "." Gesendet', b'() "." Notizen', b'() "." Papierkorb']
    folders = sorted(p.name for p in server.maildir().iterdir() if p.name.startswith("."))
    assert folders == [".Gesendet", ".Notizen", ".Papierkorb"]
    c.logout()


@pytest.mark.parametrize("server", ["special_use: {}\n"], indirect=True)
def test_no_special_use_folders(server):
    c = server.client()
    assert c.list('""', "*")[1] == [b'(\\HasNoChildren) "." INBOX']
    assert c.lsub('""', "*")[1] == [None]
    assert not [p for p in server.maildir().iterdir() if p.name.startswith(".")]
    # A folder the user makes is an ordinary one.
    assert c.create("Trash")[0] == "OK"
    assert c.list('""', "Trash")[1] == [b'(\\HasNoChildren) "." Trash']
    c.logout()
