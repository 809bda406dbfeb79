"""Untagged updates between two real sessions over sockets (RFC 3501 7.4.1): an expunge
by session B reaches session A only with a command that does not use sequence
numbers, and A's numbers keep their meaning until then; a selected mailbox deleted by
B ends A's session with BYE."""

from __future__ import annotations

import re

from .conftest import Raw

MSG = b"Subject: m%d\r\n\r\nbody %d\r\n"


def session(imapd) -> Raw:
    c = Raw(imapd.port)
    assert c.line().startswith(b"* OK")
    assert c.cmd(b"l", b"LOGIN " + imapd.user.encode() + b" postroom")[-1].startswith(b"l OK")
    return c


def append(c: Raw, count: int, folder: bytes = b"INBOX") -> None:
    for i in range(count):
        msg = MSG % (i, i)
        c.send(b"a APPEND %s {%d+}\r\n%s\r\n" % (folder, len(msg), msg))
        assert c.until(b"a")[-1].startswith(b"a OK")


def expunges(lines: list[bytes]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.fullmatch(rb"\* (\d+) EXPUNGE", line))]


def apply_expunges(uids: list[int], numbers: list[int]) -> list[int]:
    """A's view after the EXPUNGE responses, each taken in turn as RFC 3501 7.4.1 says."""
    uids = list(uids)
    for n in numbers:
        del uids[n - 1]
    return uids


def expunge_elsewhere(imapd, uids: bytes) -> None:
    b = session(imapd)
    b.cmd(b"s", b"SELECT INBOX")
    assert b.cmd(b"d", b"UID STORE " + uids + b" +FLAGS.SILENT (\\Deleted)")[-1].startswith(b"d OK")
    assert b.cmd(b"e", b"UID EXPUNGE " + uids)[-1].startswith(b"e OK")
    b.cmd(b"z", b"LOGOUT")


def test_expunge_by_another_session_waits_for_noop(imapd):
    a = session(imapd)
    append(a, 5)
    assert b"* 5 EXISTS" in a.cmd(b"s", b"SELECT INBOX")
    expunge_elsewhere(imapd, b"2,4")

    # FETCH, STORE and SEARCH use sequence numbers: no EXPUNGE, A's numbers still hold.
    out = a.cmd(b"f", b"FETCH 1:5 (UID)")
    assert out == [b"* %d FETCH (UID %d)" % (n, n) for n in range(1, 6)] + [b"f OK Fetch completed"]
    out = a.cmd(b"t", b"STORE 5 +FLAGS (\\Flagged)")
    assert out == [b"* 5 FETCH (FLAGS (\\Flagged \\Recent))", b"t OK Store completed"]
    out = a.cmd(b"r", b"SEARCH FLAGGED")
    assert out == [b"* SEARCH 5", b"r OK Search completed"]
    out = a.cmd(b"q", b"SEARCH UID 3:5")
    assert out == [b"* SEARCH 3 4 5", b"q OK Search completed"]
    # The body of an expunged message is gone: the Dovecot answer, still no EXPUNGE.
    out = a.cmd(b"b", b"FETCH 2 (BODY.PEEK[])")
    assert out == [b"b NO [EXPUNGEISSUED] Some messages were expunged"]

    # NOOP may carry it: two EXPUNGEs that, taken in turn, leave UIDs 1, 3, 5.
    out = a.cmd(b"n", b"NOOP")
    assert out[-1] == b"n OK NOOP completed" and len(out) == 3, out
    assert apply_expunges([1, 2, 3, 4, 5], expunges(out)) == [1, 3, 5]
    out = a.cmd(b"g", b"FETCH 1:* (UID FLAGS)")
    assert out[:-1] == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))", b"* 2 FETCH (UID 3 FLAGS (\\Recent))",
                        b"* 3 FETCH (UID 5 FLAGS (\\Flagged \\Recent))"], out
    a.cmd(b"z", b"LOGOUT")


def test_expunge_by_another_session_comes_with_uid_fetch(imapd):
    a = session(imapd)
    append(a, 4)
    a.cmd(b"s", b"SELECT INBOX")
    expunge_elsewhere(imapd, b"1,3")
    out = a.cmd(b"u", b"UID FETCH 1:* (UID)")
    assert out[-1] == b"u OK Fetch completed", out
    # The FETCH lines use the numbers A had when they were sent, then the EXPUNGEs
    # renumber: every line must agree with the view at its point in the stream.
    view = [1, 2, 3, 4]
    fetched = set()
    for line in out[:-1]:
        if m := re.fullmatch(rb"\* (\d+) FETCH \(UID (\d+)\)", line):
            assert view[int(m.group(1)) - 1] == int(m.group(2)), (line, view)
            fetched.add(int(m.group(2)))
        else:
            view = apply_expunges(view, expunges([line]))
            assert expunges([line]), line
    assert view == [2, 4] and {2, 4} <= fetched
    assert a.cmd(b"f", b"FETCH 2 (UID)")[0] == b"* 2 FETCH (UID 4)"
    # Nothing left to report.
    assert a.cmd(b"n", b"NOOP") == [b"n OK NOOP completed"]
    a.cmd(b"z", b"LOGOUT")


def test_selected_mailbox_deleted_by_another_session_ends_with_bye(imapd):
    a = session(imapd)
    assert a.cmd(b"c", b"CREATE Doomed")[-1].startswith(b"c OK")
    append(a, 2, b"Doomed")
    assert b"* 2 EXISTS" in a.cmd(b"s", b"SELECT Doomed")
    b = session(imapd)
    assert b.cmd(b"d", b"DELETE Doomed")[-1].startswith(b"d OK")
    b.cmd(b"z", b"LOGOUT")
    out = a.cmd(b"n", b"NOOP")
    assert out == [b"n OK NOOP completed"], out
    assert a.line() == b"* BYE Selected mailbox was deleted, have to disconnect"
    assert a.closed_by_server()
