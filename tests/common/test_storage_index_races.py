"""The index (common.storage.index) and cache where processes meet: a change another
process makes at the worst moment, a log file whose inode number was freed and
given to a new log while a state of this process slept, several processes changing
one mailbox at once while their logs are folded into new snapshots, a view or a
process that has not caught up with a new UIDVALIDITY yet.

"Another process" is a forked child, as in test_storage_index."""

from __future__ import annotations

import multiprocessing
import os
import random
import time
from pathlib import Path

import pytest

from common.storage import INBOX, MailStore
from common.storage import index as index_mod

from .test_storage_index import in_child, picture

MSG = b"From: a@example.test\nSubject: hello\n\nbody line\n"


def _append_one(root: str) -> int:
    return MailStore(root).append_messages(INBOX, [(b"Subject: appended\r\n\r\nx\r\n", [], None)])[1][0]


def test_recent_of_a_message_another_process_adds_during_a_sync_is_kept(tmp_path):
    """A delivery arrives, and another process appends between this view's look at
    the maildir and its claim of \\Recent: both messages are \\Recent for this view
    (the first to see them), neither is for nobody."""
    store = MailStore(tmp_path / "Maildir")
    root = str(store.root)
    store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    assert box.recent == {1}
    store.deliver(MSG)
    state = box.state
    looked = state.refresh
    appended = []

    def refresh_then_another_process_appends(move_new=True):
        changed = looked(move_new)
        appended.append(in_child(_append_one, root))
        return changed

    state.refresh = refresh_then_another_process_appends
    try:
        box.sync()
    finally:
        del state.refresh
    box.sync()
    assert appended == [3] and box.by_uid(3) is not None
    assert box.recent == {1, 2, 3}
    box.close()


def _change_and_fold(root: str) -> None:
    """Changes, then enough more that the log is folded into a new snapshot, then
    one more change in the new log."""
    box = MailStore(root).open_mailbox(INBOX)
    generation = box.state._generation
    box.store([2], ["\\Flagged"], "add")
    box.store([4], ["\\Deleted"], "add")
    box.expunge()
    for i in range(400):
        box.store([3], ["\\Seen"], "add" if i % 2 == 0 else "remove")
        if box.state._generation != generation:
            break
    assert box.state._generation != generation
    box.store([5], ["\\Answered"], "add")
    box.close()


def test_an_idle_state_does_not_read_on_in_a_log_that_reused_its_inode(tmp_path, monkeypatch):
    """A state with no views closes its files and remembers the log's inode and how
    far it read. Another process folds the log into a new snapshot and starts a new
    log; the old log's inode number is free and the filesystem gives it to a later
    log (ext4 reuses a freed inode number at once). Reading on in that file from the
    old position would apply the new log's later records to the old picture and miss
    everything the new snapshot holds."""
    monkeypatch.setattr(index_mod, "LOG_COMPACT_BYTES", 4096)  # inherited by the child
    store = MailStore(tmp_path / "Maildir")
    root = str(store.root)
    for _ in range(6):
        store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    box.store([1], ["\\Seen"], "add")
    state = box.state
    box.close()  # idle: its files are closed, what it read is remembered
    log = Path(root, index_mod.INDEX_LOG)
    old_inode = Path(root, "old-log")
    os.link(log, old_inode)  # stands for the inode number that will be reused
    stopped_at = state._log_pos
    in_child(_change_and_fold, root)
    # The new log, in the old inode, with a record boundary where the idle state stopped.
    head, _, records = log.read_bytes().partition(b"\n")
    pad = stopped_at - len(head) - 1  # filled with records that change nothing ("R 1": \Recent from UID 1 on)
    filler = b"R 1\n" * (pad // 4 - 1) + b"R " + b"0" * (pad % 4) + b"1\n"
    assert pad > 8 and len(head) + 1 + len(filler) == stopped_at
    old_inode.write_bytes(head + b"\n" + filler + records)
    os.rename(old_inode, log)
    truth = in_child(picture, root)
    box = store.open_mailbox(INBOX, readonly=True)
    assert box.state is state
    here = {m.uid: (m.basename, sorted(m.flags), m.modseq) for m in box.messages}
    assert here == truth["messages"]
    assert box.highest_modseq == truth["highest"]
    box.close()


def _churn(root: str, seed: int, seconds: float, done, queue) -> None:
    """Random changes for a while; once every process is done, what this one sees."""
    try:
        queue.put(_churn_and_look(root, seed, seconds, done))
    except BaseException as e:  # noqa: BLE001 -- report rather than hang the parent
        queue.put(repr(e))


def _churn_and_look(root: str, seed: int, seconds: float, done) -> dict:
    rng = random.Random(seed)
    store = MailStore(root)
    box = store.open_mailbox(INBOX)
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline and count < 2000:
        count += 1
        box.sync()
        uids = [m.uid for m in box.messages]
        action = rng.random()
        if action < 0.6 and uids:
            box.store(rng.sample(uids, min(3, len(uids))), [rng.choice(["\\Seen", "\\Flagged", "k1", "k2"])],
                      rng.choice(["add", "remove"]))
        elif action < 0.75 and len(uids) > 5:
            box.store([rng.choice(uids)], ["\\Deleted"], "add")
            box.expunge()
        elif action < 0.9:
            box.append(b"Subject: appended\r\n\r\nx\r\n")
        else:
            store.deliver(MSG)
    done.wait(60)  # every process has made its last change
    box.sync()
    seen = {m.uid: (m.basename, sorted(m.flags), m.modseq) for m in box.messages}
    highest = box.highest_modseq
    box.close()
    return {"messages": seen, "highest": highest, "changes": count}


def _other_software(root: str, seed: int, seconds: float, done, queue) -> None:
    """A program that writes the maildir directly, as Dovecot or a person with mv
    does: flag renames in cur/, removals, new files in new/; no postroom lock."""
    try:
        rng = random.Random(seed)
        cur, new = os.path.join(root, "cur"), os.path.join(root, "new")
        deadline = time.monotonic() + seconds
        count = 0
        while time.monotonic() < deadline and count < 2000:
            count += 1
            names = [n for n in os.listdir(cur) if not n.startswith(".")]
            action = rng.random()
            try:
                if action < 0.6 and names:
                    name = rng.choice(names)
                    base, _, info = name.partition(":")
                    letters = set(info[2:]) ^ {rng.choice("FRS")}
                    os.rename(os.path.join(cur, name), os.path.join(cur, f"{base}:2,{''.join(sorted(letters))}"))
                elif action < 0.7 and len(names) > 5:
                    os.unlink(os.path.join(cur, rng.choice(names)))
                else:
                    unique = f"{int(time.time())}.M{rng.randrange(10**6)}P{os.getpid()}Q{count}.other"
                    with open(os.path.join(root, "tmp", unique), "wb") as f:
                        f.write(MSG)
                    os.rename(os.path.join(root, "tmp", unique), os.path.join(new, unique))
            except FileNotFoundError:
                pass  # renamed or removed by someone else meanwhile
            time.sleep(0.001)
        done.wait(60)
        queue.put({"changes": count})
    except BaseException as e:  # noqa: BLE001 -- report rather than hang the parent
        queue.put(repr(e))


@pytest.mark.parametrize("others", [0, 1], ids=["three processes", "two and other software"])
def test_processes_changing_one_mailbox_at_once_agree_afterwards(tmp_path, monkeypatch, others):
    """Processes change one mailbox at random while their logs are folded into new
    snapshots again and again (and, with others, a program renames, removes and adds
    files behind their backs): afterwards each of them and a fresh process see the
    same messages, flags and modification sequences, and those are the files on disk."""
    monkeypatch.setattr(index_mod, "LOG_COMPACT_BYTES", 2048)  # inherited by the children
    store = MailStore(tmp_path / "Maildir")
    root = str(store.root)
    for _ in range(10):
        store.deliver(MSG)
    store.open_mailbox(INBOX).close()
    ctx = multiprocessing.get_context("fork")
    done, queue = ctx.Barrier(3), ctx.Queue()
    procs = [ctx.Process(target=_churn, args=(root, seed, 3.0, done, queue)) for seed in range(3 - others)]
    procs += [ctx.Process(target=_other_software, args=(root, 9, 3.0, done, queue)) for _ in range(others)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=90) for _ in procs]
    for p in procs:
        p.join(10)
    assert all(isinstance(got, dict) and got["changes"] > 10 for got in results), results
    truth = in_child(picture, root)
    on_disk = {}
    for sub in ("cur", "new"):
        for name in os.listdir(os.path.join(root, sub)):
            base, _, info = name.partition(":")
            on_disk[base] = info[2:]
    letters = {"\\Answered": "R", "\\Flagged": "F", "\\Seen": "S", "\\Deleted": "T"}
    assert {b: "".join(sorted(letters[f] for f in flags if f in letters))
            for b, flags, _m in truth["messages"].values()} == \
        {b: "".join(c for c in info if c in "FRST") for b, info in on_disk.items()}
    for got in results:
        if "messages" in got:
            assert got["messages"] == truth["messages"]
            assert got["highest"] == truth["highest"]


def _renumbered(tmp_path) -> tuple[MailStore, str]:
    """Three messages, the first expunged; UIDs 2 and 3 are what a view holds."""
    store = MailStore(tmp_path / "Maildir")
    for i in range(3):
        store.deliver(b"Subject: %d\n\nbody\n" % i)
    box = store.open_mailbox(INBOX)
    box.store([1], ["\\Deleted"], "add")
    box.expunge()
    box.close()
    return store, str(store.root)


def test_a_view_behind_a_new_uidvalidity_neither_reads_nor_fills_the_cache(tmp_path):
    """dovecot-uidlist made anew: the files get UIDs again from 1, so UID 2 is now
    another message. A view that has not caught up yet still reads its UID 2 (the
    old one): what it works out must not be kept for the new UID 2, nor may it be
    handed the new UID 2's values."""
    store, root = _renumbered(tmp_path)
    fresh, stale = store.open_mailbox(INBOX), store.open_mailbox(INBOX)
    (store.root / "dovecot-uidlist").unlink()
    fresh.sync()
    assert fresh.read(2) == b"Subject: 2\n\nbody\n" and stale.read(2) == b"Subject: 1\n\nbody\n"
    fresh.keep(1, 1, b"new 1")
    stale.keep(2, 1, stale.read(2))
    assert fresh.cached(2, 1) is None
    assert stale.cached(1, 1) is None
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(2, 1)) is None
    stale.sync()
    assert stale.cached(1, 1) == b"new 1"
    for box in (fresh, stale):
        box.close()


def _notice_new_uidvalidity_and_keep(root: str) -> int:
    box = MailStore(root).open_mailbox(INBOX)
    box.keep(1, 1, b"new 1")
    return box.uidvalidity


def test_a_process_behind_a_new_uidvalidity_does_not_fill_the_cache_of_the_new_one(tmp_path):
    """The same across processes: one process started the cache anew for the new
    UIDVALIDITY; another, not caught up yet, keeps a value for its old UID 2."""
    store, root = _renumbered(tmp_path)
    stale = store.open_mailbox(INBOX)
    assert stale.cached(2, 1) is None  # the cache file is open here
    old = stale.uidvalidity
    (store.root / "dovecot-uidlist").unlink()
    assert in_child(_notice_new_uidvalidity_and_keep, root) != old
    stale.keep(2, 1, stale.read(2))  # not synced: still the old numbering here
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(2, 1)) is None
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(1, 1)) in (b"new 1", None)
    stale.close()


def test_a_change_outside_postroom_in_the_same_tick_as_ours_is_seen_once_settled(tmp_path):
    """After its own change in cur/ (under the lock) the state trusts cur/ without
    listing it again; a program outside postroom renaming a file there within the same
    clock tick (same mtime) is missed only until that mtime has settled: the next
    sync after SETTLE_FINE lists cur/ and sees it."""
    store = MailStore(tmp_path / "Maildir")
    for _ in range(3):
        store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    time.sleep(index_mod.SETTLE_FINE * 2)
    box.sync()  # cur/ listed after it settled: trusted
    box.store([1], ["\\Flagged"])  # our own change: trusted at the new mtime, no listing
    cur = box.state._cur_dir
    before = os.stat(cur)
    name = box.by_uid(2).filename
    base = name.split(":2,")[0]
    os.rename(os.path.join(cur, name), os.path.join(cur, base + ":2,S"))  # another program: \Seen
    os.utime(cur, ns=(before.st_atime_ns, before.st_mtime_ns))  # ...within the same tick
    box.sync()
    assert box.by_uid(1).flags == {"\\Flagged"}
    time.sleep(index_mod.SETTLE_FINE * 2)
    box.sync()
    assert box.by_uid(2).flags == {"\\Seen"}, "the outside change must show once the mtime settled"
    assert box.by_uid(1).flags == {"\\Flagged"} and box.by_uid(3).flags == set()
    box.close()


def test_own_changes_keep_cur_trusted_without_listing_it(tmp_path, monkeypatch):
    """A session that keeps changing flags does not list cur/ at every sync (the
    listing of a busy cur/ cannot settle), yet lists it again within SETTLE_FINE."""
    store = MailStore(tmp_path / "Maildir")
    for _ in range(5):
        store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    time.sleep(index_mod.SETTLE_FINE * 2)
    box.sync()
    listings = []
    real = os.listdir

    def counting(path):
        listings.append(str(path))
        return real(path)
    monkeypatch.setattr(index_mod.os, "listdir", counting)
    started = time.monotonic()
    for i in range(20):
        box.store([1 + i % 5], ["\\Seen"], "add" if i % 2 else "remove")
        box.sync()
    took = time.monotonic() - started
    cur_listings = [p for p in listings if p.endswith("cur")]
    # at most one listing per SETTLE_FINE that passed (plus one), not one per sync
    assert len(cur_listings) <= took / index_mod.SETTLE_FINE + 2, (len(cur_listings), took)
    box.close()


def test_expunged_files_leave_the_folder_at_once_and_tmp_soon_after(tmp_path):
    """An expunge takes the file out of cur/ before it returns (another program
    listing the maildir no longer sees it) and the background unlink removes it from
    tmp/ within a bounded time; nothing of it stays."""
    store = MailStore(tmp_path / "Maildir")
    for _ in range(3):
        store.deliver(MSG)
    box = store.open_mailbox(INBOX)
    box.store([1, 3], ["\\Deleted"])
    names = {box.by_uid(1).filename.split(":2,")[0], box.by_uid(3).filename.split(":2,")[0]}
    assert sorted(box.expunge()) == [1, 3]
    listed = {n.split(":2,")[0] for n in os.listdir(store.root / "cur")} | set(os.listdir(store.root / "new"))
    assert not names & listed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(n.startswith(tuple(names))
                                              for n in os.listdir(store.root / "tmp")):
        time.sleep(0.01)
    assert not [n for n in os.listdir(store.root / "tmp") if n.startswith(tuple(names))]
    assert [m.uid for m in MailStore(store.root).open_mailbox(INBOX, readonly=True).messages] == [2]
    box.close()
