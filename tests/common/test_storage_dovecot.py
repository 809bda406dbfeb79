"""A maildir as Dovecot leaves it (dovecot-uidlist v3 with extensions, dovecot-keywords,
Dovecot file names) is served with Dovecot's UIDs and keywords, and what we write back
keeps everything Dovecot put there."""

import os

from common.storage import INBOX, MailStore
from common.storage import uidlist as uidfile

UIDLIST = """3 V1700000000 N12 G3085f01b8ab1e25612000000f2b4dbd1
5 W130 :1700000000.M123P456.host,S=123,W=130
7 :1700000100.M5P99.host,S=200,W=210
9 G1ab2e3f4a5b6c7d8e9f0a1b2c3d4e5f6 :1700000200.M6P99.host,S=300,W=305
11 P0000abcd W33 :1700000300.M7P99.host
"""
KEYWORDS = "0 $Forwarded\n1 Junk\n3 $label1\n"
FILES = {
    "cur/1700000000.M123P456.host,S=123,W=130:2,Sa": b"a" * 123,
    "cur/1700000100.M5P99.host,S=200,W=210:2,RSbd": b"b" * 200,
    "new/1700000200.M6P99.host,S=300,W=305": b"c" * 300,
    "cur/1700000300.M7P99.host:2,": b"Subject: no size in the name\n\nd\n",
}


def make_dovecot_maildir(root):
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True)
    (root / "dovecot-uidlist").write_text(UIDLIST)
    (root / "dovecot-keywords").write_text(KEYWORDS)
    for name, data in FILES.items():
        (root / name).write_bytes(data)
    sent = root / ".Sent"
    for sub in ("cur", "new", "tmp"):
        (sent / sub).mkdir(parents=True)
    (sent / "maildirfolder").touch()
    (sent / "dovecot-uidlist").write_text("3 V1700000500 N3 G00112233445566778899aabbccddeeff\n2 :1700000600.M1P2.host,S=5,W=5\n")
    (sent / "cur" / "1700000600.M1P2.host,S=5,W=5:2,S").write_bytes(b"sent\n")
    return root


def test_dovecot_maildir_keeps_uids_and_keywords(tmp_path):
    root = make_dovecot_maildir(tmp_path / "Maildir")
    store = MailStore(root, create=False)
    assert store.list_mailboxes() == ["INBOX", "Sent"]
    box = store.open_mailbox(INBOX)
    assert box.uidvalidity == 1700000000
    assert [(m.uid, m.flags) for m in box.messages] == [
        (5, frozenset({"\\Seen", "$Forwarded"})),
        (7, frozenset({"\\Answered", "\\Seen", "Junk", "$label1"})),
        (9, frozenset()),
        (11, frozenset()),
    ]
    assert box.by_uid(5).size == 123 and box.by_uid(7).vsize == 210
    assert box.by_uid(11).vsize == 33  # from the W field Dovecot put in the uidlist
    assert box.by_uid(11).size == len(FILES["cur/1700000300.M7P99.host:2,"])
    assert box.by_uid(11).pop3_uidl == "0000abcd"
    assert box.uidnext == 12
    # A message Dovecot never saw gets the next UID, appended to the file as Dovecot
    # appends (Dovecot's header, GUID and record extensions stay as they were).
    store.deliver(b"Subject: new\n\nx\n")
    assert [m.uid for m in box.sync().new] == [12]
    written = uidfile.parse((root / "dovecot-uidlist").read_bytes())
    assert written.uidvalidity == 1700000000 and written.next_uid == 13
    assert written.guid == "3085f01b8ab1e25612000000f2b4dbd1"
    assert written.records["1700000000.M123P456.host,S=123,W=130"].extensions == ["W130"]
    assert written.records["1700000300.M7P99.host"].ext("P") == "0000abcd"
    text = (root / "dovecot-uidlist").read_text().splitlines()
    assert text[:5] == UIDLIST.splitlines()
    assert text[5].startswith("12 :") and len(text) == 6
    # Keyword letters follow dovecot-keywords; a new keyword takes the free slot 2.
    box.store([9], ["$label1", "Project"], "add")
    assert box.by_uid(9).filename.endswith(":2,cd")
    assert (root / "dovecot-keywords").read_text() == "0 $Forwarded\n1 Junk\n2 Project\n3 $label1\n"
    assert os.listdir(root / "new") == []
    sent = store.open_mailbox("Sent")
    assert sent.uidvalidity == 1700000500 and [m.uid for m in sent.messages] == [2]


def test_uidlist_version1_and_broken_files(tmp_path):
    ul = uidfile.parse(b"1 1600000000 4\n1 a.host\n3 b.host:2,S\n")
    assert ul.uidvalidity == 1600000000 and ul.next_uid == 4
    assert {b: r.uid for b, r in ul.records.items()} == {"a.host": 1, "b.host": 3}
    for bad in (b"", b"9 V1 N1\n", b"3 V1 N2\nx :a\n", b"3 V1 N5\n2 :a\n1 :b\n", b"3 N2\n"):
        try:
            uidfile.parse(bad)
        except uidfile.UidListError:
            continue
        raise AssertionError(f"accepted {bad!r}")
    # A broken uidlist is rebuilt under the lock with a new UIDVALIDITY.
    store = MailStore(tmp_path / "Maildir")
    store.deliver(b"x\n")
    (store.root / "dovecot-uidlist").write_text("garbage\n")
    box = store.open_mailbox(INBOX)
    assert [m.uid for m in box.messages] == [1] and box.uidvalidity > 0
