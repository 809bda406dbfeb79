"""The IMAP grammar and framing, byte by byte: literals (both kinds, LITERAL-),
limits refused before reading, sequence sets, fetch attributes, search keys."""

from __future__ import annotations

import datetime as dt

import pytest

from imapd.parser import (Command, CommandFramer, Continue, Limits, ParseError, Reader, Refused, Section,
                          SequenceSet, parse_command_head)
from imapd.search import decoder_for


def frame(data: bytes, limits: Limits = Limits()) -> list:
    return CommandFramer(limits).feed(data)


def test_simple_lines_and_pipelining():
    events = frame(b"a1 NOOP\r\na2 CAPABILITY\r\n")
    assert events == [Command(b"a1 NOOP"), Command(b"a2 CAPABILITY")]


def test_partial_line_waits_for_rest():
    f = CommandFramer()
    assert f.feed(b"a1 NO") == []
    assert f.feed(b"OP\r\n") == [Command(b"a1 NOOP")]


def test_synchronising_literal_asks_for_continuation():
    f = CommandFramer()
    assert f.feed(b"a LOGIN {5}\r\n") == [Continue()]
    assert f.feed(b"alice {3}\r\n") == [Continue()]
    assert f.feed(b"pw!\r\n") == [Command(b"a LOGIN {5}\r\nalice {3}\r\npw!")]
    tag, name, r = parse_command_head(b"a LOGIN {5}\r\nalice {3}\r\npw!")
    r.sp()
    assert r.astring() == b"alice"
    r.sp()
    assert r.astring() == b"pw!"
    r.end()


def test_non_synchronising_literal_needs_no_continuation():
    assert frame(b"a LOGIN {5+}\r\nalice pw\r\n") == [Command(b"a LOGIN {5+}\r\nalice pw")]


def test_literal_over_limit_refused_before_reading_and_connection_survives():
    f = CommandFramer(Limits(max_literal=100))
    events = f.feed(b"t1 APPEND INBOX {1000}\r\n")
    assert events == [Refused(b"t1", b"t1 NO [TOOBIG] Literal too big\r\n")]
    assert not any(isinstance(e, Continue) for e in events)
    # The client, having had no continuation, goes on with a new command.
    assert f.feed(b"t2 NOOP\r\n") == [Command(b"t2 NOOP")]


def test_non_synchronising_literal_over_limit_is_skipped_not_stored():
    f = CommandFramer(Limits(max_literal=100))
    events = f.feed(b"t1 APPEND INBOX {300+}\r\n" + b"x" * 300 + b"\r\nt2 NOOP\r\n")
    assert events[0] == Refused(b"t1", b"t1 NO [TOOBIG] Literal too big\r\n")
    assert events[1:] == [Command(b"t2 NOOP")]
    assert f.pending == 0


def test_literal_minus_refuses_big_non_synchronising_literal():
    f = CommandFramer(Limits(literal_minus=True))
    events = f.feed(b"t1 APPEND INBOX {5000+}\r\n" + b"y" * 5000 + b"\r\nt2 NOOP\r\n")
    assert events[0].response.startswith(b"t1 BAD [TOOBIG]")
    assert events[1:] == [Command(b"t2 NOOP")]
    # A small one is fine.
    assert frame(b"t3 APPEND INBOX {3+}\r\nabc\r\n", Limits(literal_minus=True)) == [
        Command(b"t3 APPEND INBOX {3+}\r\nabc")]


def test_line_too_long_is_refused_then_next_command_works():
    f = CommandFramer(Limits(max_line=100))
    events = f.feed(b"t1 NOOP " + b"a" * 500)
    assert events == [Refused(b"t1", b"t1 BAD Command line too long\r\n")]
    assert f.feed(b"aaaa\r\nt2 NOOP\r\n") == [Command(b"t2 NOOP")]
    assert f.pending < 200


def test_bare_lf_refused():
    events = frame(b"t1 NOOP\nt2 NOOP\r\n")
    assert events == [Refused(b"t1", b"t1 BAD Lines must end with CRLF\r\n"), Command(b"t2 NOOP")]


def test_too_many_literals_refused():
    data = b"t1 X" + b" {1+}\r\na" * 5 + b"\r\n"
    events = frame(data, Limits(max_literals=3))
    assert isinstance(events[0], Refused) and events[0].response.startswith(b"t1 BAD")


def test_quoted_strings_and_escapes():
    r = Reader(b'"a \\"b\\" \\\\c" rest')
    assert r.astring() == b'a "b" \\c'
    with pytest.raises(ParseError):
        Reader(b'"bad \\x"').astring()
    with pytest.raises(ParseError):
        Reader(b'"unterminated').astring()


def test_sequence_sets():
    s = Reader(b"1:3,5,7:*").sequence_set()
    assert s.resolve(10) == [(1, 3), (5, 5), (7, 10)]
    assert s.numbers(10, 10) == [1, 2, 3, 5, 7, 8, 9, 10]
    assert Reader(b"*:4").sequence_set().resolve(2) == [(2, 4)]
    for bad in (b"0", b"1:", b",1", b"a", b"4294967296"):
        with pytest.raises(ParseError):
            r = Reader(bad)
            r.sequence_set()
            r.end()


def test_fetch_attributes():
    atts = Reader(b"(UID BODY.PEEK[HEADER.FIELDS (From Subject)]<0.100> BODY[1.2.MIME] BODYSTRUCTURE)").fetch_atts()
    assert atts[0].name == "UID"
    assert atts[1].name == "BODY.PEEK"
    assert atts[1].section == Section((), "HEADER.FIELDS", ("FROM", "SUBJECT"))
    assert atts[1].partial == (0, 100)
    assert atts[2].section == Section((1, 2), "MIME")
    assert [a.name for a in Reader(b"FAST").fetch_atts()] == ["FLAGS", "INTERNALDATE", "RFC822.SIZE"]
    assert [a.name for a in Reader(b"BODY[]").fetch_atts()] == ["BODY"]
    assert str(Reader(b"BODY[1.TEXT]").fetch_att().section) == "1.TEXT"
    for bad in (b"BODY[MIME]", b"NOSUCH", b"BODY[1.FOO]", b"BODY[]<1>", b"()"):
        with pytest.raises(ParseError):
            Reader(bad).fetch_atts()


def test_dates():
    assert Reader(b"1-Feb-2024").date() == dt.date(2024, 2, 1)
    assert Reader(b'"21-Jan-2024"').date() == dt.date(2024, 1, 21)
    when = Reader(b'" 7-Mar-2023 10:11:12 -0230"').date_time()
    assert when.utcoffset() == -dt.timedelta(hours=2, minutes=30) and when.day == 7
    for bad in (b"32-Jan-2024", b"1-Foo-2024", b"2024-01-01"):
        with pytest.raises(ParseError):
            Reader(bad).date()


def test_search_program():
    decode = decoder_for("UTF-8")
    key = Reader(b'OR FROM alice NOT (SEEN LARGER 100) UID 1:* HEADER X-Spam "yes" SINCE 1-Jan-2020').search_program(decode)
    assert key.op == "AND"
    ops = [k.op for k in key.args]
    assert ops == ["OR", "UID", "HEADER", "SINCE"]
    assert key.args[0].args[0].args == ("FROM", "alice")
    assert Reader(b"1:4,6").search_program(decode).op == "SEQ"
    with pytest.raises(ParseError):
        Reader(b"NOSUCHKEY").search_program(decode)
    with pytest.raises(ParseError):
        Reader(b"NOT " * 100 + b"ALL").search_program(decode)
    with pytest.raises(ParseError):
        Reader(b"BODY {2}\r\n\xff\xfe").search_program(decode)
    assert decoder_for("ISO-8859-1") is None


def test_flags():
    assert Reader(b"(\\seen $Junk \\Deleted)").flag_list() == ["\\Seen", "$Junk", "\\Deleted"]
    assert Reader(b"\\Seen \\Flagged").flags_arg() == ["\\Seen", "\\Flagged"]


def test_command_head():
    tag, name, _ = parse_command_head(b"x1 uid fetch 1 FLAGS")
    assert (tag, name) == (b"x1", "UID FETCH")
    with pytest.raises(ParseError):
        parse_command_head(b"+ NOOP")


def test_sequence_set_str():
    assert str(SequenceSet(((1, 3), (5, None)))) == "1:3,5:*"
