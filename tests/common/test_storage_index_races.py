"""The index (common.storage.index) where processes meet: a change another process
makes at the worst moment.

"Another process" is a forked child, as in test_storage_index."""

from __future__ import annotations

from common.storage import INBOX, MailStore

from .test_storage_index import in_child

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
