"""Sieve base language (RFC 5228): the grammar, errors with line and column, every
command and test, comparators and match types, with the RFC's own examples."""

from __future__ import annotations

import pytest

from mda.sieve import EnvelopeInfo, Environment, Limits, Message, SieveSyntaxError, parse, run

MSG = (b"Return-Path: <tim@example.com>\r\n"
       b"From: Tim <tim@example.com>\r\n"
       b"To: Me <me@example.com>, other@example.org\r\n"
       b"Cc: friend@example.net\r\n"
       b"Sender: owner-ietf-mta-filters@imc.org\r\n"
       b"Subject: Make lots of money fast\r\n"
       b"Date: Tue, 15 Mar 2005 14:30:00 -0800\r\n"
       b"Message-ID: <1@example.com>\r\n"
       b"\r\n"
       b"Hello there.\r\n")


def decide(script: str, msg: bytes = MSG, sender: str = "tim@example.com", rcpt: str = "me@example.com",
           env: Environment | None = None, limits: Limits | None = None):
    return run(parse(script, "test.sieve"), Message(msg), EnvelopeInfo(sender, rcpt), env, limits)


def folders(result) -> list[str]:
    return [d.mailbox for d in result.deliveries]


def syntax_error(script: str) -> SieveSyntaxError:
    with pytest.raises(SieveSyntaxError) as info:
        parse(script, "bad.sieve")
    return info.value


RFC5228_EXAMPLE = """#
# Example Sieve Filter
# Declare any optional features or extension used by the script
#
require ["fileinto"];

#
# Handle messages from known mailing lists
# Move messages from IETF filter discussion list to filter mailbox
#
if header :is "Sender" "owner-ietf-mta-filters@imc.org"
        {
        fileinto "filter";  # move to "filter" mailbox
        }
#
# Keep all messages to or from people in my company
#
elsif address :DOMAIN :is ["From", "To"] "example.com"
        {
        keep;               # keep in "In" mailbox
        }

#
# Try and catch unsolicited email.  If a message is not to me,
# or it contains a subject known to be spam, file it away.
#
elsif anyof (NOT address :all :contains
               ["To", "Cc", "Bcc"] "me@example.com",
             header :matches "subject"
               ["*make*money*fast*", "*university*dipl*mas*"])
        {
        fileinto "spam";   # move to "spam" mailbox
        }
else
        {
        # Move all other (non-company) mail to "personal"
        # mailbox.
        fileinto "personal";
        }
"""


def test_rfc5228_section9_example_each_branch():
    assert folders(decide(RFC5228_EXAMPLE)) == ["filter"]
    company = MSG.replace(b"Sender: owner-ietf-mta-filters@imc.org\r\n", b"")
    assert folders(decide(RFC5228_EXAMPLE, company)) == ["INBOX"]
    spam = company.replace(b"tim@example.com", b"tim@spam.test").replace(b"me@example.com", b"me@elsewhere.test")
    assert folders(decide(RFC5228_EXAMPLE, spam)) == ["spam"]
    # :contains "me@example.com" also matches me@example.com.au, whose domain is not example.com
    personal = spam.replace(b"Make lots of money fast", b"Lunch?").replace(b"me@elsewhere.test", b"me@example.com.au")
    r = decide(RFC5228_EXAMPLE, personal)
    assert folders(r) == ["personal"] and not r.errors


def test_implicit_keep_and_explicit_keep():
    r = decide("")
    assert folders(r) == ["INBOX"] and r.deliveries[0].implicit
    r = decide("keep; keep;")
    assert folders(r) == ["INBOX"] and not r.deliveries[0].implicit


def test_discard_cancels_implicit_keep():
    r = decide('if size :over 100 { discard; }')
    assert r.deliveries == [] and r.discarded
    assert folders(decide('if size :over 500K { discard; }')) == ["INBOX"]
    assert folders(decide('if size :under 1M { discard; }')) == []


def test_stop_ends_the_script():
    assert folders(decide('stop; discard;')) == ["INBOX"]


def test_redirect_cancels_keep_and_is_recorded():
    r = decide('redirect "bart@example.com";')
    assert [x.address for x in r.redirects] == ["bart@example.com"] and r.deliveries == []


def test_redirect_needs_a_valid_address():
    e = syntax_error('redirect "not an address";')
    assert (e.line, e.column) == (1, 1)


def test_header_and_exists_and_not():
    assert folders(decide('if header :contains ["from","cc"] "FRIEND@example.net" { discard; }')) == []
    assert folders(decide('if exists ["From","Date"] { discard; }')) == []
    assert folders(decide('if not exists ["From","X-Nope"] { discard; }')) == []
    assert folders(decide('if exists "X-Nope" { discard; }')) == ["INBOX"]


def test_comparator_octet_is_case_sensitive():
    s = 'if header :contains :comparator "i;octet" "Subject" "MAKE MONEY" { discard; }'
    assert folders(decide(s)) == ["INBOX"]
    s = 'if header :contains :comparator "i;octet" "Subject" "Make lots" { discard; }'
    assert folders(decide(s)) == []


def test_matches_wildcards_and_escapes():
    assert folders(decide('if header :matches "Subject" "Make*fast" { discard; }')) == []
    assert folders(decide('if header :matches "Subject" "Make?lots*" { discard; }')) == []
    assert folders(decide('if header :matches "Subject" "Make" { discard; }')) == ["INBOX"]
    msg = MSG.replace(b"Make lots of money fast", b"what?*")
    assert folders(decide('if header :matches "Subject" "what\\\\?\\\\*" { discard; }', msg)) == []
    assert folders(decide('if header :matches "Subject" "what\\\\?x" { discard; }', msg)) == ["INBOX"]


def test_address_parts():
    assert folders(decide('if address :is :all "from" "tim@example.com" { discard; }')) == []
    assert folders(decide('if address :localpart "to" "other" { discard; }')) == []
    assert folders(decide('if address :domain :is "cc" "EXAMPLE.NET" { discard; }')) == []
    assert folders(decide('if address :domain :is "cc" "example.org" { discard; }')) == ["INBOX"]


def test_address_refuses_headers_without_addresses():
    assert "Subject" in str(syntax_error('if address "Subject" "x" { discard; }'))


def test_allof_anyof_true_false():
    assert folders(decide('if allof (true, exists "From") { discard; }')) == []
    assert folders(decide('if allof (true, false) { discard; }')) == ["INBOX"]
    assert folders(decide('if anyof (false, false) { discard; }')) == ["INBOX"]
    assert folders(decide('if anyof (false, true) { discard; }')) == []


def test_if_elsif_else_chain():
    s = 'require "fileinto"; if false { fileinto "a"; } elsif false { fileinto "b"; } else { fileinto "c"; }'
    assert folders(decide(s)) == ["c"]


def test_strings_escapes_and_multiline():
    e = syntax_error('require "fileinto";\nfileinto text:\nfo\n..o\n.\n;')
    assert (e.line, e.column) == (2, 1) and "control characters" in e.message
    r = decide('require "fileinto"; if header :is "Subject" "a\\"b\\\\c" { discard; }',
               MSG.replace(b"Make lots of money fast", b'a"b\\c'))
    assert folders(r) == []


def test_multiline_string_value():
    script = parse('require "vacation";\nvacation text:\nline one\n..dot\n.\n;\n')
    assert script.commands[0].positional[0] == "line one\n.dot\n"


def test_numbers_with_quantifiers():
    script = parse("if size :over 2K { discard; }")
    assert script.commands[0].branches[0][0].positional[0] == 2048
    script = parse("if size :over 1m { discard; }")
    assert script.commands[0].branches[0][0].positional[0] == 1 << 20


@pytest.mark.parametrize("script,line,column,text", [
    ('keep', 1, 5, "expected ';'"),
    ('if true { keep;', 1, 16, "missing '}'"),
    ('\n\n  frobnicate;', 3, 3, "unknown command"),
    ('require "fileinto";\nkeep;\nrequire "envelope";', 3, 1, "require must come before"),
    ('fileinto "x";', 1, 1, 'needs require "fileinto"'),
    ('require "nosuch";', 1, 9, "unknown extension"),
    ('if header :is :contains "a" "b" { keep; }', 1, 15, "cannot be combined"),
    ('if header "a" { keep; }', 1, 4, "takes 2 arguments"),
    ('if header :frob "a" "b" { keep; }', 1, 11, "no tag :frob"),
    ('else { keep; }', 1, 1, "without a preceding if"),
    ('keep "x";', 1, 6, "takes 0 arguments"),
    ('if "x" { keep; }', 1, 4, "takes a test"),
    ('"unterminated', 1, 1, "unterminated string"),
    ('/* open', 1, 1, "unterminated /* comment"),
    ('if size 100 { keep; }', 1, 4, "size needs :over or :under"),
    ('if header :comparator "i;nope" "a" "b" { keep; }', 1, 4, "unknown comparator"),
    ('if header :comparator "i;ascii-numeric" "a" "b" { keep; }', 1, 4, "comparator-i;ascii-numeric"),
    ('keep;\n  stop 3;', 2, 8, "takes 0 arguments"),
    ('if true { keep; } else { keep; } else { keep; }', 1, 34, "without a preceding if"),
    ('discard { }', 1, 1, "takes no block"),
    ('if exists "a" "b" { }', 1, 15, "takes 1 argument"),
    ('true;', 1, 1, "is a test, not a command"),
])
def test_errors_have_line_and_column(script, line, column, text):
    e = syntax_error(script)
    assert (e.line, e.column) == (line, column), str(e)
    assert text in e.message
    assert str(e).startswith(f"bad.sieve:{line}:{column}: ")


def test_comments_and_case_insensitive_identifiers():
    s = "# comment\n/* block\ncomment */ IF Header :CONTAINS \"subject\" \"money\" { DISCARD; }"
    assert folders(decide(s)) == []


def test_nesting_is_bounded():
    deep = "if true { " * 40 + "keep;" + " }" * 40
    assert "nested too deeply" in syntax_error(deep).message


def test_runtime_limit_on_actions_falls_back_to_inbox():
    s = 'require ["fileinto"];' + "".join(f'fileinto "f{i}";' for i in range(40))
    r = decide(s, limits=Limits(max_actions=10))
    assert folders(r) == ["INBOX"] and r.errors and "actions" in r.errors[0]


def test_runtime_limit_on_redirects():
    s = "".join(f'redirect "u{i}@example.org";' for i in range(6))
    r = decide(s, limits=Limits(max_redirects=3))
    assert folders(r) == ["INBOX"] and r.redirects == [] and "redirects" in r.errors[0]


def test_run_time_limit():
    s = 'require "variables";' + 'if header :matches "Subject" "*a*b*c*d*e*f*g*h*" { keep; }' * 200
    r = decide(s, limits=Limits(max_run_time=0.0))
    assert folders(r) == ["INBOX"] and "run time" in r.errors[0]


def test_same_folder_once():
    r = decide('require "fileinto"; fileinto "a"; fileinto "a"; keep; fileinto "INBOX";')
    assert folders(r) == ["a", "INBOX"]


def test_global_before_and_after_share_actions():
    before = parse('require "fileinto"; if header :contains "X-Postroom-Quarantine" "dmarc" { fileinto "Quarantine"; stop; }', "before")
    user = parse('discard;', "user")
    msg = b"X-Postroom-Quarantine: dmarc\r\n" + MSG
    r = run([before, user], Message(msg), EnvelopeInfo("a@b.c", "me@example.com"))
    assert folders(r) == ["Quarantine"]
    r = run([before, user], Message(MSG), EnvelopeInfo("a@b.c", "me@example.com"))
    assert folders(r) == []


def test_rfc2047_header_is_decoded_for_matching():
    msg = MSG.replace(b"Make lots of money fast", b"=?utf-8?q?Gr=C3=BC=C3=9Fe?=")
    assert folders(decide('if header :is "subject" "Grüße" { discard; }', msg)) == []


def test_folded_header_is_unfolded():
    msg = MSG.replace(b"Make lots of money fast", b"Make lots\r\n of money")
    assert folders(decide('if header :is "subject" "Make lots of money" { discard; }', msg)) == []


def test_script_must_be_utf8():
    from mda.sieve import parse_bytes
    with pytest.raises(SieveSyntaxError) as info:
        parse_bytes(b'keep;\n# \xff\n', "x")
    assert info.value.line == 2


def test_mailbox_environment_is_consulted():
    class Env(Environment):
        def mailbox_exists(self, name):
            return name == "Lists"
    r = decide('require ["mailbox", "fileinto"]; if mailboxexists "Lists" { fileinto "Lists"; }', env=Env())
    assert folders(r) == ["Lists"]
    r = decide('require ["mailbox", "fileinto"]; if mailboxexists ["Lists", "Nope"] { fileinto "Lists"; }', env=Env())
    assert folders(r) == ["INBOX"]
