"""Hostile input never crashes the grammar, the connection or the MIME code."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imapd.fetch import LoadedMessage, body_structure, envelope, section_bytes
from imapd.parser import ParseError, Reader
from imapd.protocol import ImapConnection, Settings
from imapd.search import Candidate, Evaluator, decoder_for

PIECES = st.sampled_from([
    b"a1 ", b"LOGIN ", b"SELECT ", b"FETCH ", b"UID ", b"SEARCH ", b"BODY[", b"]", b"(", b")", b"{5}\r\n",
    b"{3+}\r\n", b"\"", b"\\", b"*", b":", b",", b"1", b"\r\n", b"\n", b" ", b"NIL", b"<0.1>", b"\x00", b"\xff",
    b"AUTHENTICATE PLAIN", b"IDLE", b"DONE", b"STARTTLS",
])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(PIECES, st.binary(max_size=20)), max_size=40))
def test_connection_survives_any_bytes(chunks):
    conn = ImapConnection(Settings(tls_available=True, open_store=lambda user: None))
    conn.greeting()
    for chunk in chunks:
        out = conn.receive(chunk)
        assert all(isinstance(x, bytes) or x.__class__.__module__ == "imapd.protocol" for x in out)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(PIECES, st.binary(max_size=10)), max_size=30))
def test_grammar_raises_only_parse_errors(chunks):
    data = b"".join(chunks)
    decode = decoder_for("UTF-8")
    for method in ("fetch_atts", "sequence_set", "astring", "flag_list", "date_time"):
        try:
            getattr(Reader(data), method)()
        except ParseError:
            pass
    try:
        Reader(data).search_program(decode)
    except ParseError:
        pass


MIME_PIECES = st.sampled_from([
    b"Content-Type: multipart/mixed; boundary=b\r\n", b"Content-Type: message/rfc822\r\n", b"--b\r\n", b"--b--\r\n",
    b"\r\n", b"\n", b"From: a@b\r\n", b"To: \"x\" <y@z>, g: a@b;\r\n", b" folded\r\n", b"Content-Type: text/plain; charset=\"",
    b"Content-Disposition: attachment; filename=x\r\n", b"body", b"\xff\x00", b"(", b"<", b"@",
])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(MIME_PIECES, st.binary(max_size=10)), max_size=60))
def test_mime_never_crashes(chunks):
    from imapd.parser import Section
    m = LoadedMessage(b"".join(chunks))
    assert body_structure(m.tree, True).startswith(b"(")
    assert body_structure(m.tree, False).startswith(b"(")
    assert envelope(m.tree).startswith(b"(")
    for section in (Section(), Section((1,)), Section((1, 1), "MIME"), Section((2,), "HEADER"), Section((), "TEXT"),
                    Section((), "HEADER.FIELDS", ("FROM",))):
        section_bytes(m.tree, section)
    evaluator = Evaluator(1, 1)
    key = Reader(b"OR TEXT a (BODY b SENTSINCE 1-Jan-2000 HEADER From x)").search_program(decoder_for("UTF-8"))
    evaluator.matches(key, Candidate(1, 1, frozenset(), False, 0.0, lambda: 1, lambda: m))


COMMANDS = st.sampled_from([
    b"FETCH 1:* (FLAGS BODY.PEEK[1.2] ENVELOPE)", b"FETCH * BODY[]<2.5>", b"UID FETCH 2:* (BODYSTRUCTURE)",
    b"STORE 1 +FLAGS (\\Deleted)", b"UID STORE 1:* -FLAGS (\\Seen kw)", b"EXPUNGE", b"UID EXPUNGE 2",
    b"SEARCH OR SEEN NOT DELETED", b"UID SEARCH TEXT body", b"COPY 1:2 Trash", b"MOVE 1 Trash", b"UID MOVE * Trash",
    b"NOOP", b"CHECK", b"CLOSE", b"UNSELECT", b"SELECT INBOX", b"EXAMINE INBOX", b"STATUS INBOX (MESSAGES UNSEEN)",
    b"CREATE X", b"DELETE X", b"RENAME X Y", b"LIST \"\" *", b"LSUB \"\" %", b"FETCH 99 FLAGS", b"APPEND INBOX {3+}\r\nx\r\n",
])


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(COMMANDS, min_size=1, max_size=12))
def test_any_command_sequence_is_answered(commands):
    import tempfile
    from pathlib import Path

    from common.storage import MailStore
    from imapd.protocol import CheckPassword

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "Maildir"
        store = MailStore(root)
        for _ in range(3):
            store.deliver(b"Subject: s\r\n\r\nbody\r\n")
        conn = ImapConnection(Settings(secure=True, open_store=lambda user: MailStore(root),
                                       special_use_defaults={"Trash": "\\Trash"}))
        out = conn.receive(b"l LOGIN u p\r\ns SELECT INBOX\r\n")
        assert isinstance(out[-1], CheckPassword)
        conn.password_checked(type("U", (), {"name": "u"})())
        for i, command in enumerate(commands):
            out = conn.receive(b"t%d " % i + command + b"\r\n")
            data = b"".join(x for x in out if isinstance(x, bytes))
            assert b"\r\nt%d " % i in b"\r\n" + data, (command, data)
            assert b"SERVERBUG" not in data, (command, data)


def _split_by_definition(body: bytes, boundary: bytes) -> list[bytes]:
    """RFC 2046 5.1.1's delimiter lines as one regular expression: the reference the
    faster split_multipart must agree with."""
    import re

    from imapd.mime import MAX_PARTS
    delim = re.compile(rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)", re.M)
    parts: list[bytes] = []
    start = None
    for m in delim.finditer(body):
        if start is not None:
            parts.append(body[start:m.start()])
        if m.group(1):
            return parts
        start = m.end()
        if len(parts) >= MAX_PARTS:
            return parts
    if start is not None:
        parts.append(body[start:])
    return parts


BODY_PIECES = st.sampled_from([b"--b", b"--b--", b"\r\n", b"\n", b"\r", b" ", b"\t", b"x", b"-", b"b",
                               b"--bx", b"--b--x", b"--b \t", b"y\r\n"])


@settings(max_examples=3000, deadline=None)
@given(st.lists(BODY_PIECES, max_size=16))
def test_multipart_split_agrees_with_the_delimiter_grammar(pieces):
    from imapd.mime import split_multipart
    body = b"".join(pieces)
    assert split_multipart(body, b"b") == _split_by_definition(body, b"b")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([b"Content-Type: multipart/mixed; boundary=b", b"Subject: x", b"\r\n", b"\n",
                                 b"--b", b"--b--", b" folded", b"body", b":", b""]), max_size=20))
def test_header_and_text_without_the_tree_are_the_trees(pieces):
    raw = b"".join(pieces)
    tree = LoadedMessage(raw).tree
    assert LoadedMessage(raw).header_and_body() == (tree.header, tree.body)
