"""LIST-EXTENDED (RFC 5258) and LIST-STATUS (RFC 5819) over a real socket: selection
and return options, several patterns, CHILDINFO, \\NonExistent, STATUS after each
selectable mailbox; the basic LIST is unchanged."""

from __future__ import annotations

import pytest

from .imap2_raw import Raw


@pytest.fixture
def c(imapd):
    client = Raw(imapd.port, imapd.user)
    for name in (b"Work", b"Work.Projects", b"Work.Old", b"Private", b"a.b.c"):
        assert b" OK" in client.cmd(b"x CREATE " + name)[-1]
    for name in (b"Work.Projects", b"Gone", b"a.b.c"):
        assert b" OK" in client.cmd(b"x SUBSCRIBE " + name)[-1]
    assert b" OK" in client.cmd(b"x APPEND Private {12+}\r\nSubject: p\r\n")[-1]
    yield client
    client.close()


def untagged(lines):
    assert lines[-1].split()[1] == b"OK", lines
    return lines[:-1]


def test_capabilities(c):
    caps = c.cmd(b"c CAPABILITY")[0].split()
    assert b"LIST-EXTENDED" in caps and b"LIST-STATUS" in caps


def test_subscribed_with_several_patterns(c):
    assert untagged(c.cmd(b'l LIST (SUBSCRIBED) "" (Work* Gone)')) == [
        b'* LIST (\\NonExistent \\HasNoChildren \\Subscribed) "." Gone',
        b'* LIST (\\HasNoChildren \\Subscribed) "." Work.Projects',
    ]


def test_recursivematch_gives_childinfo(c):
    assert untagged(c.cmd(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" W%')) == [
        b'* LIST (\\HasChildren) "." Work ("CHILDINFO" ("SUBSCRIBED"))',
    ]
    assert untagged(c.cmd(b'l LIST (SUBSCRIBED RECURSIVEMATCH) "" a.%')) == [
        b'* LIST (\\Noselect \\HasChildren) "." a.b ("CHILDINFO" ("SUBSCRIBED"))',
    ]


def test_return_subscribed_and_children(c):
    assert untagged(c.cmd(b'l LIST "" Work* RETURN (SUBSCRIBED CHILDREN)')) == [
        b'* LIST (\\HasChildren) "." Work',
        b'* LIST (\\HasNoChildren) "." Work.Old',
        b'* LIST (\\HasNoChildren \\Subscribed) "." Work.Projects',
    ]


def test_list_status_follows_each_selectable_mailbox(c):
    assert untagged(c.cmd(b'l LIST "" (INBOX Priv* a*) RETURN (STATUS (MESSAGES SIZE UIDNEXT))')) == [
        b'* LIST (\\HasNoChildren) "." INBOX',
        b"* STATUS INBOX (MESSAGES 0 SIZE 0 UIDNEXT 1)",
        b'* LIST (\\HasNoChildren) "." Private',
        b"* STATUS Private (MESSAGES 1 SIZE 12 UIDNEXT 2)",
        b'* LIST (\\Noselect \\HasChildren) "." a',
        b'* LIST (\\Noselect \\HasChildren) "." a.b',
        b'* LIST (\\HasNoChildren) "." a.b.c',
        b"* STATUS a.b.c (MESSAGES 0 SIZE 0 UIDNEXT 1)",
    ]


def test_special_use_selection(c):
    lines = untagged(c.cmd(b'l LIST (SPECIAL-USE) "" * RETURN (SPECIAL-USE)'))
    names = sorted(line.rsplit(b" ", 1)[1] for line in lines)
    assert names == [b"Archive", b"Drafts", b"Junk", b"Sent", b"Trash"]
    assert all(b"\\" + n in line for line, n in zip(sorted(lines, key=lambda x: x.rsplit(b" ", 1)[1]), names))


def test_basic_list_unchanged_and_bad_options(c):
    assert untagged(c.cmd(b'l LIST "" Work.%')) == [
        b'* LIST (\\HasNoChildren) "." Work.Old', b'* LIST (\\HasNoChildren) "." Work.Projects']
    assert untagged(c.cmd(b'l LIST () "" Work.%')) == [
        b'* LIST (\\HasNoChildren) "." Work.Old', b'* LIST (\\HasNoChildren) "." Work.Projects']
    for bad in (b'LIST (RECURSIVEMATCH) "" *', b'LIST (BOGUS) "" *', b'LIST "" * RETURN (BOGUS)',
                b'LIST "" * RETURN (STATUS (NOSUCH))', b'LIST "" * RETURN', b'LIST "" ()'):
        assert c.cmd(b"b " + bad)[-1].startswith(b"b BAD"), bad
    assert c.cmd(b"n NOOP")[-1] == b"n OK NOOP completed"
