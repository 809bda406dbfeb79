"""CONDSTORE and QRESYNC (RFC 7162) over a real socket: modification sequences on
FETCH, STORE, SEARCH and STATUS, conditional STORE, and a client resynchronising
after changes by another session, after a restart of the server, and after its
index was deleted."""

from __future__ import annotations

import re
import shutil

from tests.support import Daemon

from .conftest import Raw, start_imapd


def login(server, user: str | None = None) -> Raw:
    c = Raw(server.port)
    c.line()
    assert c.cmd(b"l", b'LOGIN "%s" postroom' % (user or server.user).encode())[-1].startswith(b"l OK")
    return c


def append(c: Raw, n: int, flags: bytes = b"") -> None:
    for i in range(n):
        body = b"Subject: message %d\r\n\r\nbody %d\r\n" % (i, i)
        c.send(b"a APPEND INBOX %s{%d}\r\n" % (flags + b" " if flags else b"", len(body)))
        assert c.line().startswith(b"+")
        c.send(body + b"\r\n")
        assert c.until(b"a")[-1].startswith(b"a OK")


def code(lines: list[bytes], name: bytes) -> int:
    for line in lines:
        m = re.search(rb"\[" + name + rb" (\d+)\]", line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"no {name!r} in {lines}")


def modseqs(lines: list[bytes]) -> dict[int, int]:
    """{UID: MODSEQ} of the FETCH responses among lines."""
    out = {}
    for line in lines:
        m = re.match(rb"\* \d+ FETCH \(.*UID (\d+).*MODSEQ \((\d+)\)", line)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def test_capabilities_select_fetch_and_status_carry_modseqs(imapd):
    c = login(imapd)
    caps = c.cmd(b"c", b"CAPABILITY")[0].split()
    assert b"CONDSTORE" in caps and b"QRESYNC" in caps
    append(c, 3)
    out = c.cmd(b"s", b"SELECT INBOX")
    highest = code(out, b"HIGHESTMODSEQ")
    assert highest > 0
    got = modseqs(c.cmd(b"f", b"UID FETCH 1:* (MODSEQ)"))
    assert sorted(got) == [1, 2, 3] and max(got.values()) == highest
    out = c.cmd(b"t", b"UID STORE 2 +FLAGS (\\Flagged)")
    changed = modseqs(out)
    assert changed[2] > highest  # a STORE gives the message a new, higher mod-sequence
    assert b"MODSEQ" in out[0]  # CONDSTORE is on (FETCH MODSEQ enabled it): STORE answers carry it
    # CHANGEDSINCE: only what changed after the value, with MODSEQ even if not asked for
    out = c.cmd(b"g", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
    assert [line for line in out if b"FETCH" in line] == [b"* 2 FETCH (UID 2 FLAGS (\\Flagged \\Recent) MODSEQ (%d))"
                                                          % changed[2]]
    status = c.cmd(b"st", b"STATUS INBOX (HIGHESTMODSEQ MESSAGES)")[0]
    assert status == b"* STATUS INBOX (HIGHESTMODSEQ %d MESSAGES 3)" % changed[2]
    # SEARCH MODSEQ: the matches and the highest mod-sequence among them
    out = c.cmd(b"q", b"SEARCH MODSEQ %d" % (highest + 1))
    assert out[0] == b"* SEARCH 2 (MODSEQ %d)" % changed[2]
    out = c.cmd(b"q2", b'UID SEARCH RETURN (ALL) MODSEQ "/flags/\\\\flagged" all 1')
    assert out[0] == b'* ESEARCH (TAG "q2") UID ALL 1:3 MODSEQ %d' % changed[2]
    c.cmd(b"z", b"LOGOUT")


def test_conditional_store_leaves_changed_messages_alone(imapd):
    a = login(imapd)
    append(a, 3)
    out = a.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    start = code(out, b"HIGHESTMODSEQ")
    b = login(imapd)
    b.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"t", b"UID STORE 2 +FLAGS (\\Seen)")  # another session changes message 2
    out = a.cmd(b"t", b"STORE 1:3 (UNCHANGEDSINCE %d) +FLAGS.SILENT (\\Deleted)" % start)
    assert out[-1].startswith(b"t OK [MODIFIED 2]"), out
    # .SILENT: the new mod-sequences of the changed ones, no FLAGS; nothing for message 2
    silent = [line for line in out if line.startswith(b"* ") and b"FETCH" in line and b"FLAGS" not in line]
    assert sorted(int(line.split()[1]) for line in silent) == [1, 3]
    out = a.cmd(b"f", b"FETCH 1:3 (FLAGS)")
    flags = {int(line.split()[1]): line for line in out if b" FETCH " in line}
    assert b"\\Deleted" in flags[1] and b"\\Deleted" in flags[3] and b"\\Deleted" not in flags[2]
    assert b"\\Seen" in flags[2]
    # UNCHANGEDSINCE 0 always fails
    assert a.cmd(b"u", b"UID STORE 1 (UNCHANGEDSINCE 0) -FLAGS (\\Deleted)")[-1].startswith(b"u OK [MODIFIED 1]")
    for c in (a, b):
        c.cmd(b"z", b"LOGOUT")


def test_unsolicited_flag_changes_carry_modseq_once_enabled(imapd):
    a = login(imapd)
    append(a, 2)
    a.cmd(b"s", b"SELECT INBOX")
    out = a.cmd(b"e", b"FETCH 1 (MODSEQ)")  # a CONDSTORE enabling command in the selected state
    assert any(line.startswith(b"* OK [HIGHESTMODSEQ ") for line in out), out
    b = login(imapd)
    b.cmd(b"s", b"SELECT INBOX")
    new = modseqs(b.cmd(b"t", b"UID STORE 1 (UNCHANGEDSINCE 999999999999999999) +FLAGS (\\Answered)"))
    out = a.cmd(b"n", b"NOOP")
    assert out[0] == b"* 1 FETCH (UID 1 FLAGS (\\Answered \\Recent) MODSEQ (%d))" % new[1], out
    for c in (a, b):
        c.cmd(b"z", b"LOGOUT")


def test_qresync_vanished_replaces_expunge_and_select_needs_enable(imapd):
    c = login(imapd)
    append(c, 4)
    assert c.cmd(b"s", b"SELECT INBOX (QRESYNC (1 1))")[-1].startswith(b"s BAD")
    assert c.cmd(b"e", b"ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC"
    c.cmd(b"s", b"SELECT INBOX")
    c.cmd(b"d", b"UID STORE 2,3 +FLAGS.SILENT (\\Deleted)")
    out = c.cmd(b"x", b"EXPUNGE")
    assert out[0] == b"* VANISHED 2:3"
    highest = code(out, b"HIGHESTMODSEQ")
    # reselecting closes the old mailbox visibly
    out = c.cmd(b"s2", b"EXAMINE INBOX")
    assert out[0] == b"* OK [CLOSED] Previous mailbox closed"
    assert code(out, b"HIGHESTMODSEQ") == highest
    c.cmd(b"z", b"LOGOUT")


def resync(server, uidvalidity: int, highest: int, known: bytes = b"") -> list[bytes]:
    c = login(server)
    c.cmd(b"e", b"ENABLE QRESYNC")
    out = c.cmd(b"s", b"SELECT INBOX (QRESYNC (%d %d%s))" % (uidvalidity, highest, b" " + known if known else b""))
    c.cmd(b"z", b"LOGOUT")
    return out


def test_qresync_after_another_session_a_restart_and_a_lost_index(tmp_path):
    server = start_imapd(tmp_path)
    try:
        a = login(server, "alice@example.test")
        append(a, 5)
        out = a.cmd(b"s", b"SELECT INBOX")
        uidvalidity, before = code(out, b"UIDVALIDITY"), code(out, b"HIGHESTMODSEQ")
        a.cmd(b"z", b"LOGOUT")
        # Meanwhile another session flags 2, expunges 3 and a message arrives.
        b = login(server, "alice@example.test")
        b.cmd(b"s", b"SELECT INBOX")
        b.cmd(b"t", b"UID STORE 2 +FLAGS (\\Flagged)")
        b.cmd(b"t2", b"UID STORE 3 +FLAGS (\\Deleted)")
        b.cmd(b"x", b"UID EXPUNGE 3")
        b.cmd(b"z", b"LOGOUT")
        server.deliver(b"Subject: new one\r\n\r\nhello\r\n", "alice@example.test")

        def check(out, exact_vanished: bool):
            assert code(out, b"UIDVALIDITY") == uidvalidity
            vanished = [line for line in out if line.startswith(b"* VANISHED (EARLIER) ")]
            assert vanished == [b"* VANISHED (EARLIER) 3"] if exact_vanished else len(vanished) == 1
            assert b"3" in vanished[0].split()[-1].split(b",")
            changed = modseqs(out)
            assert 2 in changed and 6 in changed and all(m > before for m in changed.values())
            assert 1 not in changed or not exact_vanished
            return code(out, b"HIGHESTMODSEQ")

        first = check(resync(server, uidvalidity, before), exact_vanished=True)
        # Only what the client knows: UID 3 is outside 1:2 here, so nothing vanished.
        out = resync(server, uidvalidity, before, b"1:2")
        assert not any(line.startswith(b"* VANISHED") for line in out)
        # A wrong UIDVALIDITY: a plain SELECT, nothing resynchronised.
        out = resync(server, uidvalidity + 1, before)
        assert not any(b"VANISHED" in line or b"FETCH" in line for line in out)

        # After a restart the history is still there (it is in the index).
        assert server.daemon.stop() == 0
        server.daemon = Daemon("imapd.main", server.etc).start(wait_ports=(server.port, server.tls_port))
        assert check(resync(server, uidvalidity, before), exact_vanished=True) == first

        # With the index deleted: rebuilt from the maildir, the same UIDs, mod-sequences
        # above anything handed out before; VANISHED then lists every UID not here.
        for name in ("postroom-index", "postroom-index.log"):
            (server.maildir("alice@example.test") / name).unlink()
        assert server.daemon.stop() == 0
        server.daemon = Daemon("imapd.main", server.etc).start(wait_ports=(server.port, server.tls_port))
        out = resync(server, uidvalidity, before)
        assert check(out, exact_vanished=False) > first
        assert modseqs(out).keys() == {1, 2, 4, 5, 6}  # everything counts as changed, same UIDs
        c = login(server, "alice@example.test")
        c.cmd(b"s", b"SELECT INBOX")
        out = c.cmd(b"f", b"UID FETCH 1:* (FLAGS)")
        assert [int(line.split()[4]) for line in out if b" FETCH " in line] == [1, 2, 4, 5, 6]
        assert b"\\Flagged" in next(line for line in out if b"UID 2 " in line)
        c.cmd(b"z", b"LOGOUT")
    finally:
        server.daemon.stop()
        shutil.rmtree(tmp_path / "mail", ignore_errors=True)


def test_uid_fetch_changedsince_vanished(imapd):
    c = login(imapd)
    append(c, 5)
    c.cmd(b"e", b"ENABLE QRESYNC")
    out = c.cmd(b"s", b"SELECT INBOX")
    start = code(out, b"HIGHESTMODSEQ")
    c.cmd(b"t", b"UID STORE 1,4 +FLAGS.SILENT (\\Deleted)")
    c.cmd(b"x", b"UID EXPUNGE 1,4")
    c.cmd(b"t2", b"UID STORE 2 +FLAGS.SILENT (\\Seen)")
    out = c.cmd(b"f", b"UID FETCH 1:5 (FLAGS) (CHANGEDSINCE %d VANISHED)" % start)
    assert out[0] == b"* VANISHED (EARLIER) 1,4"
    assert [line for line in out if b"FETCH" in line] == [
        b"* 1 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ (%d))" % modseqs(out)[2]]
    # VANISHED needs UID FETCH and CHANGEDSINCE
    assert c.cmd(b"b1", b"FETCH 1:* (FLAGS) (CHANGEDSINCE 1 VANISHED)")[-1].startswith(b"b1 BAD")
    assert c.cmd(b"b2", b"UID FETCH 1:* (FLAGS) (VANISHED)")[-1].startswith(b"b2 BAD")
    c.cmd(b"z", b"LOGOUT")
