"""SORT and THREAD (RFC 5256): base subjects, the pure ordering and threading, and
the commands over a real socket with imaplib against hand-checked answers."""

from __future__ import annotations

import imaplib

import pytest

import imapd.protocol  # noqa: F401 -- loads imapd.commands in its order
from imapd.summary import header_values
from imapd.sort import SortFields, base_subject, fields_of, sort_messages
from imapd.thread import references, render, ordered_subject


# ------------------------------------------------------------------ base subject (RFC 5256 2.1)

@pytest.mark.parametrize("subject, base, reply", [
    ("Hello", "HELLO", False),
    ("Re: Hello", "HELLO", True),
    ("RE: re: Fwd: Hello", "HELLO", True),
    ("Fw: Hello", "HELLO", True),
    ("Re [2]: Hello", "HELLO", True),
    ("[list] Re: Hello", "HELLO", True),
    ("[list] Hello", "HELLO", False),
    ("[list]", "[LIST]", False),       # the blob stays when nothing would be left
    ("Hello (fwd)", "HELLO", False),
    ("Hello (fwd) (FWD)  ", "HELLO", False),
    ("[Fwd: Re: Hello]", "HELLO", True),
    ("[fwd: [fwd: Hello]]", "HELLO", True),
    ("  Re:   Hello \t world ", "HELLO WORLD", True),
    ("Re:", "", True),
    ("", "", False),
    ("Grüße", "GRüßE", False),          # i;ascii-casemap folds ASCII letters only
])
def test_base_subject(subject, base, reply):
    assert base_subject(subject) == (base, reply)


def test_base_subject_re_with_counter_blob():
    # "Re[2]:" has no space between re and the blob: still re *WSP [subj-blob] ":"
    assert base_subject("Re[2]: Hello") == ("HELLO", True)


def test_base_subject_of_hostile_input_terminates():
    s = "Re: " * 5000 + "[" * 3000 + "x" + "]" * 3000 + " (fwd)" * 3000
    base, reply = base_subject(s)
    assert reply and len(base) <= 1000


# ------------------------------------------------------------------ pure SORT and THREAD

def F(seq, date, subject="", mid="", refs=(), frm="", size=0, arrival=None):
    base, reply = base_subject(subject)
    return SortFields(seq, seq * 10, arrival if arrival is not None else date, size, date, base, reply,
                      frm, "", "", mid, tuple(refs))


def test_sort_keys_reverse_and_ties_by_sequence():
    items = [F(1, 3, "b", frm="zed", size=5), F(2, 1, "a", frm="amy", size=5), F(3, 2, "Re: b", frm="amy", size=9)]
    seqs = lambda crit: [f.seq for f in sort_messages(items, crit)]
    assert seqs([("DATE", False)]) == [2, 3, 1]
    assert seqs([("DATE", True)]) == [1, 3, 2]
    assert seqs([("SUBJECT", False)]) == [2, 1, 3]
    assert seqs([("FROM", False), ("DATE", True)]) == [3, 2, 1]
    assert seqs([("SIZE", False)]) == [1, 2, 3]
    assert seqs([("SIZE", True)]) == [3, 1, 2]


def test_fields_of_header_values():
    h = {b"subject": b"=?utf-8?q?Re=3A_Gr=C3=BC=C3=9Fe?=", b"from": b'"Zed" <zed@example.test>',
         b"date": b"Tue, 2 Jan 2024 10:00:00 +0100", b"cc": b"group: a@x.test, b@y.test;",
         b"in-reply-to": b"<p1@x> <p2@x>", b"message-id": b"<m@x>"}
    f = fields_of(4, 7, 99.0, 123, h.get)
    assert (f.subject, f.is_reply, f.from_, f.cc) == ("GRüßE", True, "ZED", "A")
    assert f.date == 1704186000.0 and f.references == ("p1@x",) and f.message_id == "m@x"
    assert fields_of(1, 1, 99.0, 1, {b"date": b"garbage"}.get).date == 99.0


# A small mailbox, threaded by hand:
#   1 <a>             Plan
#   2 <b>  a          Re: Plan           date 2
#   3 <c>  a b        Re: Plan           date 4
#   4 <d>  a          Re: Plan           date 3
#   5 <e>             Other              date 5
#   6 <f>  missing    Lost parent        date 6
#   7 <g>  missing    Re: Lost parent    date 7
#   8 <h>             Re: Other          date 8 (no references: joined by subject)
MAILBOX = [
    (1, "a", (), "Plan", 1), (2, "b", ("a",), "Re: Plan", 2), (3, "c", ("a", "b"), "Re: Plan", 4),
    (4, "d", ("a",), "Re: Plan", 3), (5, "e", (), "Other", 5), (6, "f", ("missing",), "Lost parent", 6),
    (7, "g", ("missing",), "Re: Lost parent", 7), (8, "h", (), "Re: Other", 8),
]
REFERENCES = b"(1 (2 3)(4))(5 8)((6)(7))"
ORDERED = b"(1 (2)(4)(3))(5 8)(6 7)"


def mailbox_fields():
    return [F(seq, date, subject, mid, refs) for seq, mid, refs, subject, date in MAILBOX]


def test_thread_references_by_hand():
    assert render(references(mailbox_fields())) == REFERENCES


def test_thread_ordered_subject_by_hand():
    assert render(ordered_subject(mailbox_fields())) == ORDERED


def test_thread_uids_and_empty():
    assert render(ordered_subject([F(1, 1, "x")]), uid=True) == b"(10)"
    assert render(references([])) == b""


def test_thread_references_survives_loops_and_duplicate_ids():
    items = [F(1, 1, "x", "a", ("b",)), F(2, 2, "y", "b", ("a",)), F(3, 3, "z", "a", ("a",)),
             F(4, 4, "w", "c", ("c", "c"))]
    text = render(references(items)).decode()
    for n in "1234":
        assert text.count(n) == 1, text


def test_thread_references_subject_merge_of_two_originals():
    # two unrelated messages with one subject, neither a reply: a dummy holds both
    items = [F(1, 1, "Lunch", "a"), F(2, 2, "Lunch", "b"), F(3, 3, "Re: Lunch", "c", ("b",))]
    assert render(references(items)) == b"((1)(2 3))"


def test_thread_deep_chain_is_not_recursive():
    n = 5000
    items = [F(i, i, "s", f"m{i}", (f"m{i - 1}",) if i > 1 else ()) for i in range(1, n + 1)]
    assert render(references(items)) == ("(" + " ".join(str(i) for i in range(1, n + 1)) + ")").encode()


# ------------------------------------------------------------------ over IMAP

def message(mid, refs, subject, date, frm, size_pad=0):
    head = (f"From: {frm}\r\nTo: list@example.test\r\nSubject: {subject}\r\nMessage-ID: <{mid}@t>\r\n"
            f"Date: Mon, 1 Jan 2024 10:{date:02d}:00 +0000\r\n")
    if refs:
        head += "References: " + " ".join(f"<{r}@t>" for r in refs) + "\r\n"
    return (head + "\r\nbody\r\n" + "x" * size_pad).encode()


FROMS = ["carol@example.test", "Bob <bob@example.test>", "alice@example.test", "dave@example.test",
         "erin@example.test", "Alice <alice@example.test>", "zed@example.test", "bob@example.test"]


@pytest.fixture(scope="module")
def box(imapd_server):
    c = imapd_server.client("user39@example.test")
    for (seq, mid, refs, subject, date), frm in zip(MAILBOX, FROMS):
        # arrival in the opposite order of sequence
        c.append("INBOX", None, f'"01-Feb-2024 10:{60 - seq:02d}:00 +0000"', message(mid, refs, subject, date, frm, seq * 7 % 5))
    c.select("INBOX")
    yield c
    c.logout()


def answer(typ_data):
    typ, data = typ_data
    assert typ == "OK", data
    return data[0]


def test_capabilities_advertised(box):
    caps = answer(box.capability()).split()
    for cap in (b"SORT", b"THREAD=REFERENCES", b"THREAD=ORDEREDSUBJECT"):
        assert cap in caps


@pytest.mark.parametrize("criteria, expected", [
    ("(SUBJECT)", b"6 7 5 8 1 2 3 4"),
    ("(REVERSE DATE)", b"8 7 6 5 3 4 2 1"),
    ("(ARRIVAL)", b"8 7 6 5 4 3 2 1"),
    ("(FROM)", b"3 6 2 8 1 4 5 7"),
    ("(FROM REVERSE SUBJECT)", b"3 6 2 8 1 4 5 7"),
    ("(TO DATE)", b"1 2 4 3 5 6 7 8"),
    ("(CC REVERSE ARRIVAL)", b"1 2 3 4 5 6 7 8"),
])
def test_sort(box, criteria, expected):
    assert answer(box.sort(criteria, "UTF-8", "ALL")) == expected


def test_sort_with_search_and_uid(box):
    assert answer(box.sort("(REVERSE DATE)", "US-ASCII", "SUBJECT", "plan")) == b"3 4 2 1"
    assert answer(box.uid("SORT", "(DATE)", "UTF-8", "2:4")) == b"2 4 3"


def test_thread_references(box):
    assert answer(box.thread("REFERENCES", "UTF-8", "ALL")) == REFERENCES
    assert answer(box.uid("THREAD", "REFERENCES", "UTF-8", "1:4")) == b"(1 (2 3)(4))"


def test_thread_ordered_subject(box):
    assert answer(box.thread("ORDEREDSUBJECT", "UTF-8", "ALL")) == ORDERED
    assert answer(box.thread("ORDEREDSUBJECT", "UTF-8", "SUBJECT", "nothing-matches")) in (None, b"")


def test_bad_sort_and_thread_arguments(box):
    for args in (("SORT", "(NOSUCH)", "UTF-8", "ALL"), ("SORT", "(REVERSE)", "UTF-8", "ALL"),
                 ("SORT", "()", "UTF-8", "ALL"), ("THREAD", "NOSUCH", "UTF-8", "ALL")):
        with pytest.raises(imaplib.IMAP4.error):
            box._simple_command(*args)
    typ, data = box._simple_command("SORT", "(DATE)", "KOI8-R", "ALL")
    assert typ == "NO" and b"BADCHARSET" in data[0]


def test_header_values_unfolds_and_takes_the_first():
    header = (b"Received: from x\r\n\tsubject: not this\r\nSubject: first\r\n part\r\nsubject: second\r\n"
              b"FROM:  a@b.test\nReferences: <1@x>\n\t<2@x>\nX-To: no\r\n\r\n")
    assert header_values(header) == {b"subject": b"first part", b"from": b"a@b.test", b"references": b"<1@x>\t<2@x>"}
