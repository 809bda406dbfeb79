"""The index (common.storage.index) where processes meet: a change another process
makes at the worst moment, a log file whose inode number was freed and given to a
new log while a state of this process slept.

"Another process" is a forked child, as in test_storage_index."""

from __future__ import annotations

import os
from pathlib import Path

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
