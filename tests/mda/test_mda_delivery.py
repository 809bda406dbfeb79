"""mda.delivery in process: folders, headers, Sieve outcomes, quota, loops, vacation,
duplicates and exactly-once retries, against real maildirs and a real spool."""

from __future__ import annotations

import os
import re
import shutil
import time

import pytest

from common.errors import PermanentError, TemporaryError
from common.spool import Spool, parse
from common.storage import StorageError
from mda.delivery import DeliveryRequest
from tests.mda.mda_support import (MESSAGE, all_message_files, deliverer, folder_files, maildir, mda_config,
                                   small_maildir_disk, write_script)
from tests.support import require


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


def test_exactly_once_with_a_key(tmp_path):
    """The same key (queue ID.recipient) delivered twice: the second attempt replays
    the first one's plan and finds every outcome already there."""
    write_script(tmp_path, 'require ["fileinto", "copy"]; fileinto :copy "Copy"; redirect :copy "bob@elsewhere.test";')
    d = deliverer(mda_config(tmp_path))
    first = d.deliver(request(key="0123ABCD.0"))
    assert sorted(first.mailboxes) == ["Copy", "INBOX"] and first.skipped == []
    again = d.deliver(request(key="0123ABCD.0"))
    assert sorted(again.skipped) == ["Copy", "INBOX"] and again.redirects == ["bob@elsewhere.test"]
    assert len(folder_files(tmp_path)) == 1 and len(folder_files(tmp_path, "Copy")) == 1
    assert len(Spool(tmp_path / "spool").list("maildrop")) == 1
    # Another recipient of the same message is another delivery.
    assert sorted(d.deliver(request(key="0123ABCD.1")).skipped) == []
    assert len(folder_files(tmp_path)) == 2


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


# -- names, headers, symlinks -------------------------------------------------------------------

#: the maildir rules' name: time.MusecPpidQcounter.host,S=size,W=size, flags after ":2,"
STANDARD_NAME = re.compile(r"\A(\d{9,})\.M(\d{1,6})P(\d+)Q(\d+)\.([^.,:/]+),S=(\d+),W=(\d+)(:2,[A-Za-z]*)?\Z")


def test_every_delivery_gets_the_standard_maildir_name(tmp_path):
    write_script(tmp_path, 'require ["fileinto", "copy", "imap4flags"]; fileinto :copy :flags "\\\\Seen" "Seen";')
    d = deliverer(mda_config(tmp_path))
    d.deliver(request())                               # LMTP and postroom-deliver: no key
    d.deliver(request(key="0123ABCD.0"))               # the spool consumer
    names = [f.name for f in folder_files(tmp_path) + folder_files(tmp_path, "Seen")]
    assert len(names) == 4
    for name in names:
        m = STANDARD_NAME.match(name)
        assert m, name
        assert abs(int(m.group(1)) - time.time()) < 60 and int(m.group(3)) == os.getpid()
        size = (maildir(tmp_path) / ("" if ":2," not in name else ".Seen") / ("cur" if ":2," in name else "new") / name).stat().st_size
        assert int(m.group(6)) == size
    assert len({STANDARD_NAME.match(n).group(4) for n in names}) == 4   # a counter each


def test_existing_return_path_is_replaced(tmp_path):
    d = deliverer(mda_config(tmp_path))
    d.deliver(request(b"Return-Path: <forged@evil.test>\r\nReturn-Path:\r\n <folded@evil.test>\r\n" + MESSAGE))
    [f] = folder_files(tmp_path)
    data = f.read_bytes()
    assert data.startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\nFrom: Sender")
    assert data.count(b"Return-Path") == 1 and b"evil.test" not in data


def test_folder_swapped_for_a_symlink_is_a_temporary_failure(tmp_path):
    write_script(tmp_path, 'require "fileinto"; fileinto "Work";')
    d = deliverer(mda_config(tmp_path))
    assert d.deliver(request()).mailboxes == ["Work"]
    outside = tmp_path / "outside"
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True)
    work = maildir(tmp_path) / ".Work"
    shutil.rmtree(work)
    work.symlink_to(outside)
    with pytest.raises(TemporaryError) as info:
        d.deliver(request())
    assert (info.value.code, info.value.enhanced) == (451, "4.3.0")
    # The same when the swap comes after the folder was checked (the race).
    store, _ = d.store_for(d.users.lookup("alice@example.test"))
    store.mailbox_exists = lambda name: True
    with pytest.raises(StorageError):
        store.deliver(MESSAGE, "Work")
    assert not any(os.listdir(outside / sub) for sub in ("cur", "new", "tmp"))
    assert len(folder_files(tmp_path)) == 0


def test_maildir_that_is_a_symlink_is_refused(tmp_path):
    d = deliverer(mda_config(tmp_path))
    real = tmp_path / "elsewhere"
    for sub in ("cur", "new", "tmp"):
        (real / sub).mkdir(parents=True)
    maildir(tmp_path).parent.mkdir(parents=True)
    maildir(tmp_path).symlink_to(real)
    with pytest.raises(TemporaryError) as info:
        d.deliver(request())
    assert info.value.enhanced == "4.3.0"
    assert not any(os.listdir(real / sub) for sub in ("cur", "new", "tmp"))


def test_write_killed_half_way_does_not_block_and_is_swept(tmp_path):
    """A tmp/ leftover (a write killed before its rename) never blocks a delivery; it
    is removed once it is older than 36 hours, a fresh one is left alone."""
    from common.storage import MailStore
    from common.storage import maildir as md
    store = MailStore(tmp_path / "Maildir")
    unique = md.new_unique()
    tmp = tmp_path / "Maildir" / "tmp"
    old = tmp / f"{unique},S={len(MESSAGE)},W={len(MESSAGE)}"
    old.write_bytes(MESSAGE[:10])
    os.utime(old, (time.time() - 37 * 3600,) * 2)
    fresh = tmp / "1.M1P1Q1.other"
    fresh.write_bytes(b"x")
    md._tmp_swept.clear()
    name = store.deliver(MESSAGE, unique=unique)
    assert name == f"{unique},S={len(MESSAGE)},W={len(MESSAGE)}" and store.delivered(unique)
    assert sorted(os.listdir(tmp)) == ["1.M1P1Q1.other"]


# -- Sieve in real deliveries ---------------------------------------------------------------------

def test_global_after_script_and_global_include(tmp_path):
    glob = tmp_path / "global"
    glob.mkdir()
    (glob / "spam.sieve").write_text('require "fileinto"; if header :contains "subject" "viagra" { fileinto "Spam"; stop; }')
    (tmp_path / "after.sieve").write_text(
        'require ["fileinto", "copy"]; if header :contains "subject" "hello" { fileinto :copy "Archive"; }')
    write_script(tmp_path, 'require ["include"]; include :global "spam";')
    d = deliverer(mda_config(tmp_path, f"sieve:\n  global_dir: {glob}\n  after: [{tmp_path / 'after.sieve'}]\n"))
    assert sorted(d.deliver(request()).mailboxes) == ["Archive", "INBOX"]
    report = d.deliver(request(MESSAGE.replace(b"Subject: hello", b"Subject: cheap viagra hello")))
    # stop in the global include ends the user's script only: the after script still runs.
    assert sorted(report.mailboxes) == ["Archive", "Spam"]
    assert len(folder_files(tmp_path, "Spam")) == 1 and len(folder_files(tmp_path, "Archive")) == 2


def test_mailboxexists_against_a_real_maildir(tmp_path):
    write_script(tmp_path, 'require ["mailbox", "fileinto"]; '
                           'if mailboxexists "Lists/Sieve" { fileinto "Lists/Sieve"; } else { fileinto "Missing"; }')
    d = deliverer(mda_config(tmp_path, "create_folders: true\n"))
    assert d.deliver(request()).mailboxes == ["Missing"]
    d.store_for(d.users.lookup("alice@example.test"))[0].create_mailbox("Lists.Sieve")
    assert d.deliver(request()).mailboxes == ["Lists.Sieve"]
    # A folder that is a file or a symlink does not exist for Sieve.
    (maildir(tmp_path) / ".Other").symlink_to(maildir(tmp_path) / ".Lists.Sieve")
    write_script(tmp_path, 'require ["mailbox", "fileinto"]; if mailboxexists "Other" { discard; }')
    assert d.deliver(request()).mailboxes == ["INBOX"]


def test_runtime_error_names_script_line_and_column(tmp_path):
    script = write_script(tmp_path, 'require ["include", "fileinto"];\nfileinto "A";\n  include "missing";\n')
    report = deliverer(mda_config(tmp_path)).deliver(request())
    assert report.mailboxes == ["INBOX"]
    assert report.sieve_errors[0].startswith(f"{script}:3:3: "), report.sieve_errors


def test_date_header_far_in_the_future_is_delivered(tmp_path):
    write_script(tmp_path, 'require ["date", "fileinto"]; if date :is "date" "year" "9999" { fileinto "Future"; }')
    msg = MESSAGE.replace(b"Date: Sun, 22 Nov 2026 01:00:00 +0000", b"Date: Fri, 31 Dec 9999 23:59:59 -1200")
    report = deliverer(mda_config(tmp_path)).deliver(request(msg))
    assert report.mailboxes == ["INBOX"] and not report.sieve_errors


def maildrop_messages(tmp_path):
    spool = Spool(tmp_path / "spool")
    return [parse(spool.path("maildrop", q)) for q in spool.list("maildrop")]


def test_vacation_from_addresses_mime_and_handle(tmp_path):
    mime = ('Content-Type: multipart/alternative; boundary=b1\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\n'
            'Away.\r\n--b1\r\nContent-Type: text/html\r\n\r\n<p>Away.</p>\r\n--b1--\r\n')
    script = ('require ["vacation"];\nvacation :days 3 :from "Alice Away <alice.away@example.test>" '
              ':addresses ["alias@example.test"] :mime :handle "%s" text:\n' + mime.replace("\r\n", "\n") + '.\n;\n')
    write_script(tmp_path, script % "h1")
    d = deliverer(mda_config(tmp_path))
    # Addressed only to an alias listed in :addresses: answered.
    to_alias = MESSAGE.replace(b"To: Alice <alice@example.test>", b"To: alias@example.test")
    assert d.deliver(request(to_alias)).vacation == "sent"
    [reply] = maildrop_messages(tmp_path)
    body = reply.read_message()
    assert reply.envelope.sender == "" and [r.address for r in reply.envelope.recipients] == ["sender@remote.test"]
    assert b"\r\nFrom: Alice Away <alice.away@example.test>\r\n" in b"\r\n" + body
    assert b"Content-Type: multipart/alternative; boundary=b1\r\n" in body and b"<p>Away.</p>" in body
    assert b"text/plain; charset=us-ascii" not in body          # :mime: our entity, not a wrapped one
    # Once per period and handle; a new handle starts a new period.
    assert d.deliver(request(to_alias)).vacation == "already replied within the period"
    write_script(tmp_path, script % "h2")
    assert d.deliver(request(to_alias)).vacation == "sent"
    assert len(maildrop_messages(tmp_path)) == 2
    # Not named in To/Cc at all (neither the address nor an alias): no reply.
    other = MESSAGE.replace(b"To: Alice <alice@example.test>", b"To: someone@example.test")
    assert d.deliver(request(other, sender="x@remote.test")).vacation == "the user is not named in To, Cc or Bcc"


# -- ownership ------------------------------------------------------------------------------------

def test_root_delivering_for_two_users_gives_each_their_ownership(tmp_path):
    require(os.geteuid() == 0, "root, to deliver for users with other uids")
    etc = mda_config(tmp_path, "detail_folders: true\n")
    users = etc / "users"
    lines = []
    for line in users.read_text().splitlines():
        f = line.split(":")
        if f[0] == "alice@example.test":
            f[2], f[3] = "61001", "61001"
        elif f[0] == "bob@example.test":
            f[2], f[3] = "61002", "61003"
        lines.append(":".join(f))
    users.write_text("\n".join(lines) + "\n")
    d = deliverer(etc)
    d.deliver(request(recipient="alice+work@example.test"))
    d.deliver(request(recipient="bob@example.test"))
    for user, (uid, gid) in (("alice", (61001, 61001)), ("bob", (61002, 61003))):
        root = maildir(tmp_path, user)
        files = all_message_files(tmp_path, user)
        assert files
        for path in [root, *(root / s for s in ("cur", "new", "tmp")), *files]:
            st = path.stat()
            assert (st.st_uid, st.st_gid) == (uid, gid), path
    work = maildir(tmp_path, "alice") / ".work"
    for path in [work, work / "new", work / "maildirfolder"]:
        assert (path.stat().st_uid, path.stat().st_gid) == (61001, 61001), path
