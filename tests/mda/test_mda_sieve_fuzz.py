"""Untrusted scripts and messages: whatever the input, parsing raises only
SieveSyntaxError (with a line and column) and running never raises."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mda.sieve import EnvelopeInfo, Message, SieveSyntaxError, parse, parse_bytes, run

TOKENS = ['require', '"fileinto"', '"variables"', '["regex", "relational"]', 'if', 'elsif', 'else', '{', '}',
          '(', ')', '[', ']', ',', ';', 'header', 'address', ':contains', ':matches', ':regex', ':is', ':count',
          '"ge"', ':comparator', '"i;ascii-numeric"', '"Subject"', '"*"', '"${1}"', 'fileinto', 'set', '"x"',
          'anyof', 'allof', 'not', 'true', 'false', 'stop', 'keep', 'discard', '42', '10K', 'text:\n.\n',
          'size', ':over', 'exists', '"From"', '"(a|b)*"', 'redirect', '"u@example.org"', '#c\n', '/*c*/']

MESSAGE = b"From: a@example.org\r\nSubject: hello [list] world\r\n\r\nbody\r\n"

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_token_soup_parses_or_fails_cleanly(tokens):
    text = " ".join(tokens)
    try:
        script = parse(text, "fuzz")
    except SieveSyntaxError as e:
        assert e.line >= 1 and e.column >= 1
        return
    result = run(script, Message(MESSAGE), EnvelopeInfo("a@example.org", "b@example.org"))
    assert result.deliveries or result.redirects or result.discarded or result.reject


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_parser(data):
    try:
        parse_bytes(data, "fuzz")
    except SieveSyntaxError as e:
        assert e.line >= 1 and e.column >= 1


@FUZZ
@given(st.binary(max_size=500))
def test_random_messages_never_crash_a_script(raw):
    script = parse('require ["body", "envelope", "date", "variables", "regex", "relational"];\n'
                   'if anyof (header :matches "subject" "*", address :domain "from" "x", body :contains "a",\n'
                   '          date :value "ge" :originalzone "date" "year" "2000", exists "to",\n'
                   '          header :regex "received" "(.*)") { keep; }', "fixed")
    result = run(script, Message(raw), EnvelopeInfo("", "b@example.org"))
    assert result.deliveries and not result.errors
