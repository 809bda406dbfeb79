"""The mailbox index (common.storage.index): it survives restarts, is rebuilt from the
maildir with the same UIDs when deleted or damaged at any point, never lets a
modification sequence go backwards, notices what other software did to the
maildir, and keeps \\Recent for the first session that selects.

"Another process" is a forked child: each process has its own shared states."""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

from common.storage import INBOX, MailStore
from common.storage import index as index_mod

MSG = b"From: a@example.test\nSubject: hello\n\nbody line\n"


def in_child(fn, *args):
    """fn(*args) in a forked process (a fresh set of shared states); its result."""
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()

    def run():
        try:
            q.put(("ok", fn(*args)))
        except BaseException as e:  # report rather than hang
            q.put(("error", repr(e)))
    p = ctx.Process(target=run)
    p.start()
    kind, value = q.get(timeout=60)
    p.join(10)
    assert kind == "ok", value
    return value


def picture(root: str) -> dict:
    """What a fresh process sees: UIDVALIDITY, highest modseq, {uid: (base, flags, modseq)}."""
    box = MailStore(root).open_mailbox(INBOX, readonly=True)
    try:
        return {"uidvalidity": box.uidvalidity, "highest": box.highest_modseq, "uidnext": box.uidnext,
                "messages": {m.uid: (m.basename, sorted(m.flags), m.modseq) for m in box.messages}}
    finally:
        box.close()


@pytest.fixture
def root(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    for i in range(6):
        store.deliver(MSG + b"%d\n" % i)
    box = store.open_mailbox(INBOX)
    box.store([2], ["\\Seen", "Work"], "add")
    box.store([3], ["\\Deleted"], "add")
    box.expunge()
    box.close()
    return str(store.root)


def test_a_new_process_reads_the_same_state_from_the_index(root):
    here = picture(root)
    there = in_child(picture, root)
    assert there == here
    assert sorted(here["messages"]) == [1, 2, 4, 5, 6]
    assert here["messages"][2][1] == ["Work", "\\Seen"]
    assert here["highest"] > max(m for _b, _f, m in here["messages"].values())  # the expunge counts too
    # The expunge history is kept too (QRESYNC).
    store = MailStore(root)
    def history():
        box = MailStore(root).open_mailbox(INBOX)
        return box.vanished_since(box.state.vanished_floor), box.vanished_since(0)
    # complete since the index was made; before that, unknown (None: report what is missing)
    assert in_child(history) == ([3], None)
    assert store.open_mailbox(INBOX).vanished_since(here["highest"]) == []


DAMAGE = {
    "snapshot deleted": lambda d: (d / "postroom-index").unlink(),
    "log deleted": lambda d: (d / "postroom-index.log").unlink(),
    "both deleted": lambda d: [(d / n).unlink() for n in ("postroom-index", "postroom-index.log")],
    "snapshot truncated": lambda d: os.truncate(d / "postroom-index", 100),
    "snapshot byte flipped": lambda d: _flip(d / "postroom-index", 200),
    "garbage log record": lambda d: (d / "postroom-index.log").open("a").write("N 1 2 3 nonsense\n"),
    "log of another generation": lambda d: (d / "postroom-index.log").write_text("G 1\n"),
    "snapshot replaced by junk": lambda d: (d / "postroom-index").write_bytes(os.urandom(5000)),
}


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_a_damaged_or_deleted_index_is_rebuilt_with_the_same_uids(root, damage):
    from pathlib import Path
    before = in_child(picture, root)
    DAMAGE[damage](Path(root))
    after = in_child(picture, root)
    assert after["uidvalidity"] == before["uidvalidity"] and after["uidnext"] == before["uidnext"]
    assert {u: (b, f) for u, (b, f, _m) in after["messages"].items()} == \
        {u: (b, f) for u, (b, f, _m) in before["messages"].items()}
    assert after["highest"] >= before["highest"]
    if damage != "log deleted" and damage != "garbage log record" and damage != "log of another generation":
        assert after["highest"] > before["highest"]  # rebuilt: above anything handed out before
    # and it is usable again: a change gets a still higher mod-sequence
    def change():
        box = MailStore(root).open_mailbox(INBOX)
        box.store([4], ["\\Flagged"], "add")
        return box.by_uid(4).modseq
    assert in_child(change) > after["highest"]


def _busy(root: str, seed: int) -> None:
    """Change the mailbox as fast as possible until killed."""
    rng = random.Random(seed)
    store = MailStore(root)
    box = store.open_mailbox(INBOX)
    while True:
        box.sync()
        uids = [m.uid for m in box.messages]
        action = rng.random()
        if action < 0.5 and uids:
            box.store([rng.choice(uids)], [rng.choice(["\\Seen", "\\Flagged", "a", "b"])],
                      rng.choice(["add", "remove"]))
        elif action < 0.7 and len(uids) > 3:
            box.store([rng.choice(uids)], ["\\Deleted"], "add")
            box.expunge()
        elif action < 0.85:
            box.append(b"Subject: appended\r\n\r\nx\r\n")
        else:
            store.deliver(b"Subject: delivered\n\nx\n")


def test_killed_at_random_points_the_index_never_goes_backwards(root):
    """SIGKILL a process changing the mailbox at random moments, many times: every
    time a fresh process sees every file with its UID from dovecot-uidlist, no UID
    twice, and a highest mod-sequence at least the last one seen."""
    ctx = multiprocessing.get_context("fork")
    rng = random.Random(7)
    highest = in_child(picture, root)["highest"]
    deadline = time.monotonic() + 60
    for round_ in range(12):
        assert time.monotonic() < deadline
        p = ctx.Process(target=_busy, args=(root, round_))
        p.start()
        time.sleep(rng.uniform(0.05, 0.4))
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        seen = in_child(picture, root)
        assert seen["highest"] >= highest
        highest = seen["highest"]
        from common.storage import uidlist as uidfile
        records = uidfile.parse((__import__("pathlib").Path(root) / "dovecot-uidlist").read_bytes()).records
        on_disk = {f.partition(":")[0] for sub in ("cur", "new") for f in os.listdir(os.path.join(root, sub))}
        assert {b for b, _f, _m in seen["messages"].values()} == on_disk
        assert all(records[b].uid == u for u, (b, _f, _m) in seen["messages"].items())
        assert os.listdir(os.path.join(root, "tmp")) == [] or all(
            name.startswith(".tmp.") or "," in name for name in os.listdir(os.path.join(root, "tmp")))


def test_changes_by_other_software_are_noticed(root):
    """A flag renamed and a file removed in cur/ by some other program, a file put in
    new/: the next sync reports them, each with a higher mod-sequence."""
    store = MailStore(root)
    box = store.open_mailbox(INBOX)
    old = box.by_uid(5)
    start = box.highest_modseq
    cur = os.path.join(root, "cur")
    os.rename(os.path.join(cur, old.filename), os.path.join(cur, old.basename + ":2,F"))
    os.unlink(os.path.join(cur, box.by_uid(6).filename))
    with open(os.path.join(root, "new", "1700000000.M1P1.other,S=4"), "wb") as f:
        f.write(b"x\n\n\n")
    changes = box.sync()
    assert [m.uid for m in changes.flags] == [5] and changes.flags[0].flags == {"\\Flagged"}
    assert changes.flags[0].modseq > old.modseq
    assert changes.expunged == [6] and [m.uid for m in changes.new] == [7]
    assert box.vanished_since(start) == [6]
    box.close()


def test_recent_belongs_to_the_first_session_that_selects(root):
    store = MailStore(root)
    store.open_mailbox(INBOX).close()  # takes the old ones
    store.deliver(MSG)
    pop3 = store.open_mailbox(INBOX, claim_recent=False)   # POP3: takes nothing
    examine = store.open_mailbox(INBOX, readonly=True)      # EXAMINE: takes nothing
    assert pop3.recent == set() and examine.recent == set()
    assert store.mailbox_state(INBOX).recent_count() == 1  # STATUS sees it still recent
    first = store.open_mailbox(INBOX)
    assert first.recent == {7}
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).recent) == set()
    # Mail arriving while a session has the mailbox selected is that session's.
    store.deliver(MSG)
    first.sync()
    assert first.recent == {7, 8}
    for box in (pop3, examine, first):
        box.close()


def test_index_write_failure_falls_back_to_memory(root):
    """A maildir whose index cannot be written (read-only folder) still works."""
    d = __import__("pathlib").Path(root)
    for name in ("postroom-index", "postroom-index.log", "postroom-index.lock"):
        (d / name).unlink()
    (d / "postroom-index.lock").mkdir()  # cannot be opened as a file

    def use():
        box = MailStore(root).open_mailbox(INBOX)
        box.store([1], ["\\Flagged"], "add")
        return [m.uid for m in box.messages], box.state.persistent
    assert in_child(use) == ([1, 2, 4, 5, 6], False)
    assert index_mod.INDEX_LOCK == "postroom-index.lock"


def test_stale_uidlist_records_the_history_does_not_know_are_not_rewritten_every_time(tmp_path, monkeypatch):
    """After an index rebuild the expunge history is empty: old records it cannot place
    stay in dovecot-uidlist, and new UIDs do not rewrite the whole file each time."""
    store = MailStore(tmp_path / "Maildir")
    (store.root / "dovecot-uidlist").write_text("3 V1700000000 N21 G00\n" + "".join(
        f"{i} :gone.{i}\n" for i in range(1, 21)))  # twenty records whose files are long gone
    monkeypatch.setattr(index_mod, "UIDLIST_STALE_REWRITE", 2)
    box = store.open_mailbox(INBOX)
    inodes = set()
    for i in range(8):
        store.deliver(MSG)
        box.sync()
        inodes.add(os.stat(store.root / "dovecot-uidlist").st_ino)
    assert len(inodes) <= 4, inodes   # not rewritten at each new UID (that gave 8)
    assert [m.uid for m in box.messages] == list(range(21, 29))
    box.close()


def test_status_leaves_no_file_open(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    store.deliver(MSG)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        assert len(store.mailbox_state(INBOX).by_uid) == 1
    assert len(os.listdir("/proc/self/fd")) == before
