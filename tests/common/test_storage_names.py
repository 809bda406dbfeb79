"""Mailbox names: modified UTF-7 (RFC 3501 5.1.3) and the validation that keeps every
name inside the user's maildir."""

import pytest

from common.storage import InvalidMailboxName, MailStore, decode_mutf7, encode_mutf7, validate_mailbox_name


@pytest.mark.parametrize("text, encoded", [
    ("~peter/mail/\u53f0\u5317/\u65e5\u672c\u8a9e", "~peter/mail/&U,BTFw-/&ZeVnLIqe-"),  # RFC 3501's example
    ("\u263a!", "&Jjo-!"),
    ("a&b", "a&-b"),
    ("Entw\u00fcrfe", "Entw&APw-rfe"),
    ("Gel\u00f6schte Elemente", "Gel&APY-schte Elemente"),
    ("\U0001F4EC mail", "&2D3c7A- mail"),  # outside the BMP: a surrogate pair
    ("plain", "plain"),
])
def test_mutf7_round_trip(text, encoded):
    assert encode_mutf7(text) == encoded
    assert decode_mutf7(encoded) == text


@pytest.mark.parametrize("bad", [
    "&Jjo!",                 # no shift back before "!" (RFC 3501)
    "&U,BTFw-&ZeVnLIqe-",    # superfluous shift (RFC 3501)
    "&AGE-",                 # ASCII "a" encoded in base64
    "&2D0-",                 # a lone surrogate
    "caf\u00e9",             # 8-bit is never modified UTF-7
    "&A-",                   # bad run length
])
def test_mutf7_refuses_what_rfc3501_forbids(bad):
    with pytest.raises(ValueError):
        decode_mutf7(bad)


@pytest.mark.parametrize("name", [
    "..", "a..b", ".hidden", "trailing.", "a/b", "../etc", "/abs", "x\x00y", "tab\there", "new\nline",
    "del\x7f", "c1\x85", "", "wild*", "per%cent", "back\\slash", "x" * 300,
])
def test_invalid_names_refused(name):
    with pytest.raises(InvalidMailboxName):
        validate_mailbox_name(name)


def test_inbox_is_case_insensitive_and_names_are_unicode():
    assert validate_mailbox_name("inbox") == "INBOX"
    assert validate_mailbox_name("Inbox.Sub") == "INBOX.Sub"
    assert validate_mailbox_name("Arch\u00efv.2024") == "Arch\u00efv.2024"


def test_invalid_names_never_touch_the_disk(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    for name in ("..", "../../escape", "a/b", "x\ny"):
        with pytest.raises(InvalidMailboxName):
            store.create_mailbox(name)
        with pytest.raises(InvalidMailboxName):
            store.deliver(b"x\n", name, create=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Maildir"]
    assert sorted(p.name for p in (tmp_path / "Maildir").iterdir()) == ["cur", "new", "tmp"]


def test_folder_on_disk_is_modified_utf7(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    store.create_mailbox("Entw\u00fcrfe.Alt")
    assert (tmp_path / "Maildir" / ".Entw&APw-rfe.Alt" / "cur").is_dir()
    assert (tmp_path / "Maildir" / ".Entw&APw-rfe.Alt" / "maildirfolder").exists()
    assert store.list_mailboxes() == ["INBOX", "Entw\u00fcrfe.Alt"]
