"""The maildir store: delivery discipline, UIDs, flags, keywords, expunge, copy/move,
folders, subscriptions, special use, quota and the POP3 lock."""

import os
import stat

import pytest

from common.storage import (INBOX, InvalidMailboxName, MailboxExists, MailboxInUse, MailboxNotFound, MailStore,
                            QuotaExceeded, StorageError)
from common.storage.quota import RECALC_SIZE

MSG = b"From: a@example.test\nSubject: hello\n\nbody line\n"


@pytest.fixture
def store(tmp_path):
    return MailStore(tmp_path / "Maildir")


def test_delivery_is_complete_and_durable_in_new(store, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(stat.S_IFMT(os.fstat(fd).st_mode)), real_fsync(fd)))
    name = store.deliver(MSG)
    # The file was fsync'd before the rename, and then the directory it was renamed into.
    assert synced == [stat.S_IFREG, stat.S_IFDIR]
    assert (store.root / "new" / name).read_bytes() == MSG
    assert os.listdir(store.root / "tmp") == []
    crlf_size = len(MSG) + MSG.count(b"\n")
    assert f",S={len(MSG)},W={crlf_size}" in name
    assert stat.S_IMODE(os.stat(store.root / "new" / name).st_mode) == 0o600


def test_delivery_with_flags_goes_to_cur(store):
    name = store.deliver(MSG, flags=["\\Seen", "\\Flagged"])
    assert name.endswith(":2,FS") and (store.root / "cur" / name).exists()


def test_delivery_unique_name_and_delivered(store):
    assert not store.delivered("q123.rcpt1")
    name = store.deliver(MSG, unique="q123.rcpt1")
    assert name.startswith("q123.rcpt1,S=")
    assert store.delivered("q123.rcpt1") and not store.delivered("q123.rcpt")
    store.open_mailbox(INBOX)  # moves it to cur/: still found
    assert store.delivered("q123.rcpt1")
    with pytest.raises(StorageError):
        store.deliver(MSG, unique="../evil")


def test_delivery_to_folders(store):
    with pytest.raises(MailboxNotFound):
        store.deliver(MSG, "Lists.python")
    store.deliver(MSG, "Lists.python", create=True)
    assert store.mailbox_exists("Lists.python")
    assert len(store.open_mailbox("Lists.python").messages) == 1


def test_uids_stable_across_reopen(store):
    for i in range(5):
        store.deliver(MSG + str(i).encode())
    box = store.open_mailbox(INBOX)
    first = [(m.uid, m.basename) for m in box.messages]
    assert [u for u, _ in first] == [1, 2, 3, 4, 5]
    assert box.recent == {1, 2, 3, 4, 5}  # this session is the first to see them
    assert os.listdir(store.root / "new") == []
    store.deliver(MSG)
    again = MailStore(store.root).open_mailbox(INBOX)
    assert [(m.uid, m.basename) for m in again.messages][:5] == first
    assert again.messages[-1].uid == 6 and again.uidnext == 7
    assert again.uidvalidity == box.uidvalidity
    # The first session had the old ones as \Recent; only the new one is recent here.
    assert again.recent == {6}
    assert store.open_mailbox(INBOX).recent == set()  # and no one else gets it again


def test_sync_reports_new_flags_and_expunges_from_another_session(store):
    store.deliver(MSG)
    store.deliver(MSG)
    a = store.open_mailbox(INBOX)
    b = store.open_mailbox(INBOX)
    a.store([1], ["\\Seen", "$Label1"], "add")
    a.store([2], ["\\Deleted"], "add")
    assert a.expunge() == [2]
    store.deliver(MSG)
    changes = b.sync()
    assert [m.uid for m in changes.new] == [3]
    assert changes.expunged == [2]
    assert [(m.uid, m.flags) for m in changes.flags] == [(1, frozenset({"\\Seen", "$Label1"}))]
    assert not b.sync()  # nothing more


def test_store_modes_and_keywords(store):
    store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    box.store([1], ["\\Seen", "\\Answered", "Work", "$Forwarded"], "add")
    assert box.by_uid(1).flags == {"\\Seen", "\\Answered", "Work", "$Forwarded"}
    assert box.by_uid(1).filename.endswith(":2,RSab")
    box.store([1], ["\\seen", "work"], "remove")  # system flags and keywords are case-insensitive
    assert box.by_uid(1).flags == {"\\Answered", "$Forwarded"}
    box.store([1], ["\\Draft", "Later"], "replace")
    assert box.by_uid(1).flags == {"\\Draft", "Later"}
    assert (store.root / "dovecot-keywords").read_text() == "0 Work\n1 $Forwarded\n2 Later\n"
    with pytest.raises(StorageError):
        box.store([1], ["\\Bogus"], "add")
    with pytest.raises(StorageError):
        box.store([1], ["bad(keyword"], "add")


def test_append_copy_move_uids(store):
    store.create_mailbox("Archive")
    box = store.open_mailbox(INBOX)
    uid = box.append(b"Subject: a\r\n\r\nx\r\n", ["\\Seen", "Important"], internaldate=1_600_000_000)
    assert uid == 1 and box.uidnext == 2
    box.sync()
    msg = box.by_uid(1)
    assert msg.internaldate == 1_600_000_000 and msg.flags == {"\\Seen", "Important"}
    assert box.read(1) == b"Subject: a\r\n\r\nx\r\n"
    assert box.copy([1, 99], "Archive") == [(1, 1)]
    assert box.move([1], "Archive") == [(1, 2)]
    assert box.messages == [] and not box.sync()
    arch = store.open_mailbox("Archive")
    assert [(m.uid, m.flags, m.internaldate) for m in arch.messages] == \
        [(1, frozenset({"\\Seen", "Important"}), 1_600_000_000)] * 1 + [(2, frozenset({"\\Seen", "Important"}), 1_600_000_000)]
    with pytest.raises(MailboxNotFound):
        arch.copy([1], "Nope")


def test_expunge_only_deleted_and_limited(store):
    for _ in range(3):
        store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    box.store([1, 2, 3], ["\\Deleted"], "add")
    assert box.expunge([2]) == [2]
    assert box.expunge() == [1, 3]
    assert box.messages == [] and os.listdir(store.root / "cur") == []
    # The next UID stays; the uidlist drops the records of expunged messages when it is
    # rewritten (as Dovecot's does), here forced by a low threshold.
    from common.storage import index
    index.UIDLIST_STALE_REWRITE = 0
    try:
        store.deliver(MSG)
        assert [m.uid for m in box.sync().new] == [4]
    finally:
        index.UIDLIST_STALE_REWRITE = 1000
    assert [line.split()[0] for line in (store.root / "dovecot-uidlist").read_text().splitlines()[1:]] == ["4"]
    assert store.open_mailbox(INBOX).uidnext == 5


def test_flag_change_races_a_rename_by_another_session(store):
    store.deliver(MSG)
    a = store.open_mailbox(INBOX)
    b = store.open_mailbox(INBOX)
    a.store([1], ["\\Flagged"], "add")
    # b still has the old file name: its change must chase the rename and keep \Flagged.
    b.store([1], ["\\Seen"], "add")
    assert b.by_uid(1).flags == {"\\Seen", "\\Flagged"}
    assert a.sync().flags[0].flags == {"\\Seen", "\\Flagged"}
    assert b.read(1) == MSG
    # And an expunge by b of a message a renamed meanwhile still happens.
    a.store([1], ["\\Deleted"], "add")
    b.sync()
    a.store([1], ["\\Answered"], "add")
    assert b.expunge() == [1]
    assert a.sync().expunged == [1]


def test_readonly_does_not_move_or_change(store):
    name = store.deliver(MSG)
    box = store.open_mailbox(INBOX, readonly=True)
    assert [m.uid for m in box.messages] == [1]
    assert os.listdir(store.root / "new") == [name]
    with pytest.raises(StorageError):
        box.store([1], ["\\Seen"], "add")
    with pytest.raises(StorageError):
        box.expunge()


def test_folders_create_rename_delete_with_rfc3501_inbox_rules(store):
    store.create_mailbox("Work")
    store.create_mailbox("Work.2024")
    with pytest.raises(MailboxExists):
        store.create_mailbox("Work")
    with pytest.raises(MailboxExists):
        store.create_mailbox("inbox")
    store.rename_mailbox("Work", "Job")
    assert store.list_mailboxes() == ["INBOX", "Job", "Job.2024"]
    with pytest.raises(StorageError):
        store.delete_mailbox("INBOX")
    store.deliver(MSG)
    store.rename_mailbox("INBOX", "Old")
    assert len(store.open_mailbox("Old").messages) == 1
    assert store.open_mailbox(INBOX).messages == []
    store.delete_mailbox("Job")
    assert store.list_mailboxes() == ["INBOX", "Job.2024", "Old"]
    with pytest.raises(MailboxNotFound):
        store.delete_mailbox("Job")
    with pytest.raises(InvalidMailboxName):
        store.rename_mailbox("Old", "../x")


def test_subscriptions_and_special_use(store):
    store.ensure_default_mailboxes({"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash",
                                    "Junk": "\\Junk", "Archive": "\\Archive"})
    assert store.special_use() == {"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash",
                                   "Junk": "\\Junk", "Archive": "\\Archive"}
    assert store.subscriptions() == ["Drafts", "Sent", "Trash", "Junk", "Archive"]
    store.subscribe("Entw\u00fcrfe")
    assert (store.root / "subscriptions").read_text().endswith("Entw&APw-rfe\n")
    store.unsubscribe("Junk")
    assert "Junk" not in store.subscriptions()
    store.rename_mailbox("Sent", "Sent Items")
    assert store.special_use()["Sent Items"] == "\\Sent"
    store.ensure_default_mailboxes({"Sent": "\\Sent"})  # the user's renamed Sent keeps the role
    assert store.special_use()["Sent Items"] == "\\Sent" and "Sent" not in store.special_use()


def test_dovecot_subscriptions_v2_format_is_read(store):
    (store.root / "subscriptions").write_text("V\t2\n\nINBOX\nLists\tpython\nEntw\u00fcrfe\n")
    assert store.subscriptions() == ["INBOX", "Lists.python", "Entw\u00fcrfe"]


def test_symlinks_are_not_followed(store, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"not mail")
    store.deliver(MSG)
    os.symlink(secret, store.root / "cur" / "1.M1P1.evil,S=8:2,")
    box = store.open_mailbox(INBOX)
    evil = [m for m in box.messages if "evil" in m.filename][0]
    with pytest.raises(StorageError):
        box.read(evil.uid)
    # A folder that is a symlink is not a folder.
    outside = tmp_path / "outside"
    for sub in ("cur", "new", "tmp"):
        (outside / sub).mkdir(parents=True)
    os.symlink(outside, store.root / ".Linked")
    assert "Linked" not in store.list_mailboxes() and not store.mailbox_exists("Linked")
    with pytest.raises(MailboxNotFound):
        store.deliver(MSG, "Linked")
    # A tmp/ swapped for a symlink does not redirect a delivery.
    store.create_mailbox("Box")
    box_tmp = store.root / ".Box" / "tmp"
    os.rmdir(box_tmp)
    os.symlink(outside / "tmp", box_tmp)
    with pytest.raises(StorageError):
        store.deliver(MSG, "Box")
    assert os.listdir(outside / "tmp") == []


def test_quota_accounting(store):
    limits = (1000, 3)
    store.deliver(b"x" * 100, quota=limits)
    assert (store.root / "maildirsize").read_text().splitlines()[0] == "1000S,3C"
    store.deliver(b"x" * 200, quota=limits)
    assert store.quota_usage() == (300, 2)
    with pytest.raises(QuotaExceeded) as exc:
        store.deliver(b"x" * 800, quota=limits)
    assert exc.value.temporary is False
    with pytest.raises(QuotaExceeded) as exc:
        store.deliver(b"x" * 800, quota=limits, quota_temporary=True)
    assert exc.value.temporary is True
    store.deliver(b"x" * 10, quota=limits)
    with pytest.raises(QuotaExceeded):
        store.deliver(b"x", quota=limits)  # message count
    box = store.open_mailbox(INBOX)
    box.store([1], ["\\Deleted"], "add")
    box.expunge()
    assert store.quota_usage() == (210, 2)
    uid = box.append(b"y" * 50)
    assert store.quota_usage() == (260, 3) and uid == 4


def test_quota_recalculated_when_missing_large_or_changed(store):
    store.deliver(b"x" * 100)
    store.create_mailbox("Sub")
    store.deliver(b"x" * 50, "Sub")
    assert not (store.root / "maildirsize").exists()
    assert store.quota_usage() == (150, 2)
    # Grown past 5120 bytes of change lines: recalculated (and wrong lines forgotten).
    with open(store.root / "maildirsize", "a") as f:
        f.write("1 0\n" * (RECALC_SIZE // 4 + 1))
    assert store.quota_usage() == (150, 2)
    assert (store.root / "maildirsize").stat().st_size < 100
    store.deliver(b"x", quota=(None, 10))
    assert (store.root / "maildirsize").read_text().splitlines()[0] == "10C"


def test_pop3_lock_is_exclusive_and_released(store):
    lock = store.pop3_lock()
    with pytest.raises(MailboxInUse) as exc:
        store.pop3_lock()
    assert exc.value.temporary
    store.deliver(MSG)  # delivery never waits on it
    store.open_mailbox(INBOX).store([1], ["\\Seen"], "add")  # nor does IMAP
    lock.release()
    store.pop3_lock().release()


def test_stale_dotlock_is_broken(store):
    import time
    store.deliver(MSG)
    lock = store.root / "dovecot-uidlist.lock"
    lock.write_text("999999999:otherhost")
    old = time.time() - 600
    os.utime(lock, (old, old))
    assert len(store.open_mailbox(INBOX).messages) == 1
    assert not lock.exists()


@pytest.fixture
def tiny_filesystem(tmp_path):
    """A 64 KB tmpfs, so a disk-full error is real (needs root to mount)."""
    import subprocess
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    ok = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True).returncode == 0
    from tests.support import require
    require(ok, "root and tmpfs to make a full filesystem")
    yield mount_point
    subprocess.run(["umount", str(mount_point)], check=True)


def test_disk_full_is_a_temporary_no_space_and_leaves_nothing(tiny_filesystem):
    from common.storage import NoSpace
    store = MailStore(tiny_filesystem / "Maildir")
    with pytest.raises(NoSpace) as exc:
        store.deliver(b"x" * 200_000)
    assert exc.value.temporary
    assert os.listdir(store.root / "tmp") == [] and os.listdir(store.root / "new") == []
    store.deliver(b"small\n")  # and the store still works
    box = store.open_mailbox(INBOX)
    with pytest.raises(NoSpace):
        box.append(b"y" * 200_000)
    assert [m.uid for m in box.sync().new] == [] and len(box.messages) == 1
    box.close()  # a closed view holds no file open (the filesystem can be unmounted)


def test_owner_gets_created_files_and_folders(tmp_path):
    from tests.support import require
    require(os.geteuid() == 0, "root, to give files to another user")
    owner = (65534, 65534)
    store = MailStore(tmp_path / "Maildir", owner=owner)
    store.create_mailbox("Sub")
    name = store.deliver(b"x\n", "Sub")
    store.open_mailbox("Sub").store([1], ["Work"], "add")
    for path in (store.root, store.root / "cur", store.root / ".Sub", store.root / ".Sub" / "new",
                 store.root / ".Sub" / "dovecot-uidlist", store.root / ".Sub" / "dovecot-keywords",
                 store.root / ".Sub" / "cur" / (name + ":2,a")):
        st = os.lstat(path)
        assert (st.st_uid, st.st_gid) == owner, path


def test_sync_skips_settled_directories_yet_sees_every_change(store, monkeypatch):
    import time
    store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    old = time.time() - 60
    for sub in ("new", "cur"):
        os.utime(store.root / sub, (old, old))
    box.sync()  # a scan of directories unchanged for a minute: later syncs may skip
    listings = []
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p: (listings.append(p), real_listdir(p))[1])
    assert not box.sync() and listings == []
    store.deliver(MSG)
    assert [m.uid for m in box.sync().new] == [2] and listings
    other = store.open_mailbox(INBOX)
    for sub in ("new", "cur"):
        os.utime(store.root / sub, (old, old))
    box.sync()
    other.store([1], ["\\Flagged"], "add")  # a rename in cur/ by another session
    assert [m.flags for m in box.sync().flags] == [{"\\Flagged"}]


def test_quota_over_limit_file_is_rechecked_after_15_minutes(store):
    import time
    store.deliver(b"x" * 10)
    (store.root / "maildirsize").write_text("100S\n500 3\n")
    assert store.quota_usage() == (500, 3)  # fresh: trusted, even though over quota
    old = time.time() - 16 * 60
    os.utime(store.root / "maildirsize", (old, old))
    assert store.quota_usage() == (10, 1)  # over quota and stale: recalculated
    store.deliver(b"y" * 50, quota=(100, None))
    assert store.quota_usage() == (60, 2)


def test_dotlock_by_link_is_exclusive_and_says_who_holds_it(tmp_path):
    """link_holders(): the lock is a hard link of this process's holder in tmp/,
    holding "pid:host" with a fresh mtime (what Dovecot and the stale checks read);
    another taker waits; a holder swept from tmp/ is made again."""
    import time
    from common.storage import LockTimeout
    from common.storage.lock import DotLock, _HOST, link_holders
    folder = tmp_path / "Maildir"
    (folder / "tmp").mkdir(parents=True)
    holder = folder / "tmp" / f".dotlock.{_HOST}.{os.getpid()}"
    link_holders(True)
    try:
        lock = DotLock(folder / "dovecot-uidlist").acquire()
        lock_file = folder / "dovecot-uidlist.lock"
        st = os.stat(lock_file)
        assert lock_file.read_text() == f"{os.getpid()}:{_HOST}"
        assert st.st_nlink == 2 and st.st_ino == os.stat(holder).st_ino
        assert time.time() - st.st_mtime < 5
        with pytest.raises(LockTimeout):
            DotLock(folder / "dovecot-uidlist", timeout=0.2).acquire()
        lock.release()
        assert not lock_file.exists() and holder.exists()
        holder.unlink()  # swept from tmp/
        for _ in range(2):
            lock.acquire()
            assert lock_file.read_text() == f"{os.getpid()}:{_HOST}"
            lock.release()
        assert holder.exists() and not lock_file.exists()
    finally:
        link_holders(False)


def test_dotlock_holders_are_removed_at_exit(tmp_path):
    import subprocess
    import sys
    from tests.support import ROOT
    folder = tmp_path / "Maildir"
    (folder / "tmp").mkdir(parents=True)
    script = ("import os, sys; from pathlib import Path; from common.storage.lock import DotLock, link_holders;"
              "link_holders(); l = DotLock(Path(sys.argv[1]) / 'dovecot-uidlist').acquire();"
              "print(sorted(os.listdir(Path(sys.argv[1]) / 'tmp'))); l.release()")
    result = subprocess.run([sys.executable, "-c", script, str(folder)], capture_output=True, text=True,
                            timeout=60, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("['.dotlock.")  # there while it ran
    assert os.listdir(folder / "tmp") == [] and not (folder / "dovecot-uidlist.lock").exists()
