"""RFC 7162 rules checked one by one over a real socket, beyond the walk-through of
test_imap2_condstore: what a STORE or an implicit \\Seen must say once CONDSTORE is
on, what .SILENT may leave out, and what HIGHESTMODSEQ may claim."""

from __future__ import annotations

import re

from .test_imap2_condstore import append, login, modseqs


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
