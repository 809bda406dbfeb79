"""RFC 7162 rules checked one by one over a real socket, beyond the walk-through of
test_imap2_condstore: what a STORE or an implicit \\Seen must say once CONDSTORE is
on, what .SILENT may leave out, and what HIGHESTMODSEQ may claim."""

from __future__ import annotations

import re

from .test_imap2_condstore import append, code, login, modseqs


def fetches(lines: list[bytes]) -> list[bytes]:
    return [line for line in lines if re.match(rb"\* \d+ FETCH ", line)]


def test_store_and_implicit_seen_carry_uid_and_modseq_once_enabled(imapd):
    # RFC 7162 3.1: once CONDSTORE is enabled, every untagged FETCH caused by STORE
    # (not only UID STORE) or by a FETCH that sets \Seen carries UID and MODSEQ.
    c = login(imapd)
    append(c, 3)
    c.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    out = fetches(c.cmd(b"t", b"STORE 2 +FLAGS (\\Flagged)"))
    assert len(out) == 1 and re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(\\Flagged \\Recent\) MODSEQ \(\d+\)\)",
                                          out[0]), out
    out = fetches(c.cmd(b"t2", b"STORE 3 +FLAGS.SILENT (\\Answered)"))
    assert len(out) == 1 and re.fullmatch(rb"\* 3 FETCH \(UID 3 MODSEQ \(\d+\)\)", out[0]), out
    out = c.cmd(b"f", b"FETCH 1 (BODY[TEXT])")
    assert out[0] == b"* 1 FETCH (UID 1 BODY[TEXT] {8}", out
    assert re.fullmatch(rb" FLAGS \(\\Seen \\Recent\) MODSEQ \(\d+\)\)", out[2]), out
    c.cmd(b"z", b"LOGOUT")


def test_silent_store_still_tells_what_another_session_changed(imapd):
    # .SILENT leaves out the client's own change, not another session's: had it been
    # left out, the client would hold the new MODSEQ with the old flags, and no
    # CHANGEDSINCE from there would ever bring them.
    a = login(imapd)
    append(a, 2)
    a.cmd(b"s", b"SELECT INBOX (CONDSTORE)")
    b = login(imapd)
    b.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"t", b"UID STORE 1 +FLAGS (\\Flagged)")
    out = a.cmd(b"t", b"UID STORE 1 +FLAGS.SILENT (\\Seen)")
    told = fetches(out)
    assert any(b"\\Flagged" in line for line in told), out
    highest = max(modseqs(told).values())
    out = a.cmd(b"f", b"UID FETCH 1:* (FLAGS) (CHANGEDSINCE %d)" % highest)
    assert not fetches(out)
    for c in (a, b):
        c.cmd(b"z", b"LOGOUT")


def resync_point(lines: list[bytes], point: int) -> int:
    """What a client keeps to resynchronise from after these responses: the last
    HIGHESTMODSEQ it was given, or a higher MODSEQ seen after it."""
    for line in lines:
        m = re.search(rb"\[HIGHESTMODSEQ (\d+)\]", line)
        if m:
            point = int(m.group(1))
        for m in re.finditer(rb"^\* \d+ FETCH \(.*MODSEQ \((\d+)\)", line):
            point = max(point, int(m.group(1)))
    return point


def test_a_held_back_vanished_is_not_skipped_by_a_later_resync(imapd):
    # RFC 7162 3.2.10 (RFC 5162 erratum 1810): while a VANISHED waits (STORE uses
    # sequence numbers), MODSEQs sent meanwhile come with a HIGHESTMODSEQ below the
    # expunge, so a client that loses the connection then still learns of it.
    a = login(imapd)
    append(a, 3)
    a.cmd(b"e", b"ENABLE QRESYNC")
    out = a.cmd(b"s", b"SELECT INBOX")
    uidvalidity, point = code(out, b"UIDVALIDITY"), code(out, b"HIGHESTMODSEQ")
    b = login(imapd)
    b.cmd(b"s", b"SELECT INBOX")
    b.cmd(b"d", b"UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    b.cmd(b"x", b"UID EXPUNGE 1")
    out = a.cmd(b"t", b"STORE 2 +FLAGS (\\Seen)")
    assert not any(b"VANISHED" in line for line in out)  # held back: STORE uses sequence numbers
    point = resync_point(out, point)
    a.sock.close()  # the connection is lost before the VANISHED is sent
    c = login(imapd)
    c.cmd(b"e", b"ENABLE QRESYNC")
    out = c.cmd(b"s", b"SELECT INBOX (QRESYNC (%d %d))" % (uidvalidity, point))
    assert b"* VANISHED (EARLIER) 1" in out, out
    assert modseqs(out).keys() == {2}
    for s in (b, c):
        s.cmd(b"z", b"LOGOUT")


def test_condstore_enabled_on_an_empty_mailbox_tells_a_valid_highestmodseq(imapd):
    # mod-sequence-value is 1*DIGIT with 1 <= n (RFC 7162 7): never 0
    c = login(imapd)
    c.cmd(b"c", b"CREATE Empty")
    c.cmd(b"s", b"SELECT Empty")
    out = c.cmd(b"f", b"UID FETCH 1:* (MODSEQ)")
    assert code(out, b"HIGHESTMODSEQ") >= 1, out
    c.cmd(b"z", b"LOGOUT")


def test_a_new_uidvalidity_ends_the_session_that_has_the_mailbox_selected(imapd):
    # dovecot-uidlist made anew (lost, or rebuilt by Dovecot after damage): UIDs are
    # given again from 1, so the UIDs this client holds name other messages now.
    c = login(imapd)
    append(c, 3)
    c.cmd(b"s", b"SELECT INBOX")
    c.cmd(b"d", b"UID STORE 1 +FLAGS.SILENT (\\Deleted)")
    c.cmd(b"x", b"EXPUNGE")
    (imapd.maildir() / "dovecot-uidlist").unlink()
    out = c.cmd(b"n", b"NOOP")
    assert out[-1] == b"n OK NOOP completed"
    assert c.line() == b"* BYE Selected mailbox UIDVALIDITY changed, have to disconnect"
    assert c.closed_by_server()
    # a new session sees the new numbering, with a new UIDVALIDITY
    d = login(imapd)
    out = d.cmd(b"s", b"SELECT INBOX")
    assert b"* 2 EXISTS" in out
    out = d.cmd(b"f", b"UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert [line for line in out if line.startswith(b"Subject:")] == [b"Subject: message 1", b"Subject: message 2"]
    d.cmd(b"z", b"LOGOUT")
