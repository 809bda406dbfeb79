"""mda.delivery in process: folders, headers, Sieve outcomes, quota, loops, vacation,
duplicates and exactly-once retries, against real maildirs and a real spool."""

from __future__ import annotations


import pytest

from common.errors import PermanentError, TemporaryError
from common.spool import Spool, parse
from mda.delivery import DeliveryRequest
from tests.mda.mda_support import MESSAGE, deliverer, folder_files, mda_config, small_maildir_disk, write_script


def request(msg: bytes = MESSAGE, **kw) -> DeliveryRequest:
    kw.setdefault("sender", "sender@remote.test")
    kw.setdefault("recipient", "alice@example.test")
    return DeliveryRequest(message=msg, **kw)


def test_plain_delivery_adds_return_path_and_delivered_to(tmp_path):
    d = deliverer(mda_config(tmp_path))
    report = d.deliver(request())
    assert report.mailboxes == ["INBOX"]
    [f] = folder_files(tmp_path)
    data = f.read_bytes()
    assert data.startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\nFrom: Sender")
    assert data.endswith(MESSAGE)


def test_unknown_user_is_550_511(tmp_path):
    d = deliverer(mda_config(tmp_path))
    with pytest.raises(PermanentError) as info:
        d.deliver(request(recipient="nobody@example.test"))
    assert (info.value.code, info.value.enhanced) == (550, "5.1.1")


def test_user_found_by_local_part_and_detail(tmp_path):
    d = deliverer(mda_config(tmp_path))
    assert d.deliver(request(recipient="alice")).user == "alice@example.test"
    assert d.deliver(request(recipient="alice+news@example.test")).mailboxes == ["INBOX"]


def test_detail_folder_when_configured(tmp_path):
    d = deliverer(mda_config(tmp_path, "detail_folders: true\n"))
    assert d.deliver(request(recipient="alice+news@example.test")).mailboxes == ["news"]
    assert len(folder_files(tmp_path, "news")) == 1


def test_fileinto_creates_folder_and_sets_flags(tmp_path):
    write_script(tmp_path, 'require ["fileinto", "imap4flags"]; '
                           'if header :contains "subject" "hello" { fileinto :flags "\\\\Seen" "Greetings/Daily"; }')
    d = deliverer(mda_config(tmp_path))
    report = d.deliver(request())
    assert report.mailboxes == ["Greetings.Daily"]
    [f] = folder_files(tmp_path, "Greetings.Daily")
    assert f.parent.name == "cur" and f.name.endswith(":2,S")
    assert folder_files(tmp_path) == []


def test_folder_not_created_when_not_allowed(tmp_path):
    write_script(tmp_path, 'require "fileinto"; fileinto "Nope";')
    d = deliverer(mda_config(tmp_path, "create_folders: false\n"))
    report = d.deliver(request())
    assert report.mailboxes == ["INBOX"] and "does not exist" in report.sieve_errors[0]
    write_script(tmp_path, 'require ["fileinto", "mailbox"]; fileinto :create "Yes";')
    assert d.deliver(request()).mailboxes == ["Yes"]


def test_invalid_folder_name_falls_back_to_inbox(tmp_path):
    write_script(tmp_path, 'require "fileinto"; fileinto "a..b";')
    report = deliverer(mda_config(tmp_path)).deliver(request())
    assert report.mailboxes == ["INBOX"] and "not valid" in report.sieve_errors[0]


@pytest.mark.parametrize("script", [
    'if header :is "subject" { discard; }',          # syntax error
    'require "nosuch"; discard;',                    # unknown extension
    'require "include"; include "missing"; discard;',  # runtime error
    "discard; \xff",                                  # not a character Sieve knows
])
def test_broken_scripts_deliver_to_inbox(tmp_path, script):
    write_script(tmp_path, script)
    report = deliverer(mda_config(tmp_path)).deliver(request())
    assert report.mailboxes == ["INBOX"] and report.sieve_errors
    assert len(folder_files(tmp_path)) == 1


def test_personal_include_from_the_sieve_folder(tmp_path):
    home = write_script(tmp_path, 'require ["include", "fileinto"]; include "lists"; fileinto "Other";').parent
    (home / "sieve").mkdir()
    (home / "sieve" / "lists.sieve").write_text('require "fileinto"; if header :contains "subject" "hello" { fileinto "Hello"; stop; }')
    assert deliverer(mda_config(tmp_path)).deliver(request()).mailboxes == ["Hello"]


def test_global_before_script_files_quarantined_mail(tmp_path):
    (tmp_path / "before.sieve").write_text(
        'require "fileinto"; if header :is "X-Postroom-Quarantine" "dmarc" { fileinto "Quarantine"; stop; }')
    d = deliverer(mda_config(tmp_path, f"sieve:\n  before: [{tmp_path / 'before.sieve'}]\n"))
    assert d.deliver(request(b"X-Postroom-Quarantine: dmarc\r\n" + MESSAGE)).mailboxes == ["Quarantine"]
    assert d.deliver(request()).mailboxes == ["INBOX"]


def test_user_rule_files_quarantined_mail(tmp_path):
    write_script(tmp_path, 'require "fileinto"; if exists "X-Postroom-Quarantine" { fileinto "Junk"; }')
    d = deliverer(mda_config(tmp_path))
    assert d.deliver(request(b"X-Postroom-Quarantine: dmarc\r\n" + MESSAGE)).mailboxes == ["Junk"]


def test_reject_is_550_571_with_the_reason(tmp_path):
    write_script(tmp_path, 'require "reject"; reject "Go away";')
    with pytest.raises(PermanentError) as info:
        deliverer(mda_config(tmp_path)).deliver(request())
    assert (info.value.code, info.value.enhanced, info.value.public) == (550, "5.7.1", "Go away")
    assert folder_files(tmp_path) == []


def test_discard_delivers_nothing(tmp_path):
    write_script(tmp_path, "discard;")
    report = deliverer(mda_config(tmp_path)).deliver(request())
    assert report.discarded and report.mailboxes == []


def test_over_quota_permanent_and_temporary(tmp_path):
    extra = {"alice@example.test": "userdb_quota_rule=*:messages=1"}
    d = deliverer(mda_config(tmp_path, user_extra=extra))
    d.deliver(request())
    with pytest.raises(PermanentError) as info:
        d.deliver(request())
    assert (info.value.code, info.value.enhanced) == (552, "5.2.2")
    d = deliverer(mda_config(tmp_path, "quota_temporary: true\n", user_extra=extra))
    with pytest.raises(TemporaryError) as info:
        d.deliver(request())
    assert (info.value.code, info.value.enhanced) == (452, "4.2.2")


def test_default_quota_from_config(tmp_path):
    d = deliverer(mda_config(tmp_path, "default_quota_storage: 100\n"))
    with pytest.raises(PermanentError) as info:
        d.deliver(request())
    assert info.value.enhanced == "5.2.2"


def test_redirect_goes_to_the_maildrop_with_the_original_sender(tmp_path):
    write_script(tmp_path, 'redirect "bob@elsewhere.test";')
    etc = mda_config(tmp_path)
    report = deliverer(etc).deliver(request())
    assert report.redirects == ["bob@elsewhere.test"] and report.mailboxes == []
    spool = Spool(tmp_path / "spool")
    [qid] = spool.list("maildrop")
    sf = parse(spool.path("maildrop", qid))
    assert sf.envelope.sender == "sender@remote.test" and sf.envelope.source == "local"
    assert [r.address for r in sf.envelope.recipients] == ["bob@elsewhere.test"]
    assert sf.read_message().startswith(b"Delivered-To: alice@example.test\r\nFrom: Sender")


def test_redirect_loop_is_kept_not_sent(tmp_path):
    write_script(tmp_path, 'redirect "bob@elsewhere.test";')
    report = deliverer(mda_config(tmp_path)).deliver(request(b"Delivered-To: alice@example.test\r\n" + MESSAGE))
    assert report.redirects == [] and report.mailboxes == ["INBOX"] and "loop" in report.sieve_errors[0]
    assert not (tmp_path / "spool" / "maildrop").exists() or not list((tmp_path / "spool" / "maildrop").iterdir())


def test_too_many_hops_is_554_546(tmp_path):
    msg = b"Delivered-To: x@y.test\r\n" * 20 + MESSAGE
    with pytest.raises(PermanentError) as info:
        deliverer(mda_config(tmp_path)).deliver(request(msg))
    assert (info.value.code, info.value.enhanced) == (554, "5.4.6")


def test_vacation_once_per_sender_and_never_to_lists(tmp_path):
    write_script(tmp_path, 'require "vacation"; vacation :days 1 :subject "Away" "I am away.";')
    d = deliverer(mda_config(tmp_path))
    spool = Spool(tmp_path / "spool")
    assert d.deliver(request()).vacation == "sent"
    [qid] = spool.list("maildrop")
    sf = parse(spool.path("maildrop", qid))
    reply = sf.read_message()
    assert sf.envelope.sender == "" and [r.address for r in sf.envelope.recipients] == ["sender@remote.test"]
    assert b"Auto-Submitted: auto-replied" in reply and b"Subject: Away\r\n" in reply
    assert b"In-Reply-To: <m1@remote.test>" in reply and reply.endswith(b"I am away.\r\n") or b"I am away." in reply
    # Once per sender per period.
    assert d.deliver(request()).vacation == "already replied within the period"
    # Never to a list, bulk mail, auto-submitted mail or the null sender.
    assert d.deliver(request(b"List-Id: <l.example>\r\n" + MESSAGE, sender="other@remote.test")).vacation == "message is list mail"
    assert d.deliver(request(b"Precedence: bulk\r\n" + MESSAGE, sender="other@remote.test")).vacation == "message is bulk or list mail"
    assert d.deliver(request(b"Auto-Submitted: auto-generated\r\n" + MESSAGE, sender="other@remote.test")).vacation == "message is auto-submitted"
    assert d.deliver(request(sender="")).vacation == "null sender"
    assert d.deliver(request(sender="owner-list@remote.test")).vacation == "sender is a list or mailer address"
    not_named = MESSAGE.replace(b"To: Alice <alice@example.test>", b"To: someone@else.test")
    assert d.deliver(request(not_named, sender="third@remote.test")).vacation == "the user is not named in To, Cc or Bcc"
    assert len(spool.list("maildrop")) == 1
    # Every message was still delivered.
    assert len(folder_files(tmp_path)) == 8


def test_duplicate_is_recorded_only_after_delivery(tmp_path):
    write_script(tmp_path, 'require ["duplicate", "fileinto"]; if duplicate { fileinto "Dups"; }')
    d = deliverer(mda_config(tmp_path))
    assert d.deliver(request()).mailboxes == ["INBOX"]
    assert d.deliver(request()).mailboxes == ["Dups"]
    other = MESSAGE.replace(b"<m1@remote.test>", b"<m2@remote.test>")
    assert d.deliver(request(other)).mailboxes == ["INBOX"]


def test_exactly_once_with_unique_and_retry(tmp_path):
    write_script(tmp_path, 'require ["fileinto", "copy"]; fileinto :copy "Copy"; redirect :copy "bob@elsewhere.test";')
    d = deliverer(mda_config(tmp_path))
    first = d.deliver(request(unique="H1.0"))
    assert sorted(first.mailboxes) == ["Copy", "INBOX"]
    again = d.deliver(request(unique="H1.0", retry=True))
    assert sorted(again.skipped) == ["Copy", "INBOX"]
    assert len(folder_files(tmp_path)) == 1 and len(folder_files(tmp_path, "Copy")) == 1
    assert len(Spool(tmp_path / "spool").list("maildrop")) == 1


def test_disk_full_is_temporary_452_431(tmp_path):
    with small_maildir_disk(tmp_path) as (mount, core_extra):
        d = deliverer(mda_config(tmp_path, core_extra=core_extra))
        with pytest.raises(TemporaryError) as info:
            d.deliver(request(MESSAGE + b"x" * 200_000))
        assert (info.value.code, info.value.enhanced) == (452, "4.3.1")
        assert not any((mount / "alice" / "new").iterdir())


def test_redirect_that_cannot_be_sent_is_kept(tmp_path):
    import shutil
    write_script(tmp_path, 'redirect "bob@elsewhere.test";')
    etc = mda_config(tmp_path)
    shutil.rmtree(tmp_path / "spool")          # the MTA's spool is out of reach
    report = deliverer(etc).deliver(request())
    assert report.redirects == [] and report.mailboxes == ["INBOX"]
    assert "failed" in report.sieve_errors[0]


def test_include_limits(tmp_path):
    home = write_script(tmp_path, 'require "include"; include "a0"; discard;').parent
    (home / "sieve").mkdir()
    for i in range(12):
        (home / "sieve" / f"a{i}.sieve").write_text(f'require "include"; include "a{i + 1}";')
    (home / "sieve" / "a12.sieve").write_text("keep;")
    report = deliverer(mda_config(tmp_path)).deliver(request())
    assert report.mailboxes == ["INBOX"] and "nested too deeply" in report.sieve_errors[0]
    d = deliverer(mda_config(tmp_path, "sieve:\n  max_include_depth: 20\n  max_includes: 5\n"))
    report = d.deliver(request())
    assert "too many includes" in report.sieve_errors[0]
    d = deliverer(mda_config(tmp_path, "sieve:\n  max_include_depth: 20\n"))
    report = d.deliver(request())
    assert report.mailboxes == ["INBOX"] and not report.sieve_errors   # the explicit keep at the bottom
