"""postroom-cache (common.storage.cache): values kept per message survive a new
process, follow what other processes append, vanish with UIDVALIDITY, are
checked against their CRC, and the file is rewritten when mostly garbage."""

from __future__ import annotations

import os

from common.storage import INBOX, MailStore
from common.storage import cache as cache_mod

from .test_storage_index import in_child


def make(tmp_path, n=3):
    store = MailStore(tmp_path / "Maildir")
    for i in range(n):
        store.deliver(b"Subject: %d\n\nx\n" % i)
    return store


def test_values_are_kept_for_other_processes_and_checked(tmp_path):
    store = make(tmp_path)
    box = store.open_mailbox(INBOX)
    assert box.cached(1, 1) is None
    box.keep(1, 1, b"one")
    box.keep(2, 2, b"two")
    box.keep(99, 1, b"no such message")  # ignored
    assert box.cached(1, 1) == b"one" and box.cached(2, 2) == b"two" and box.cached(99, 1) is None
    root = str(store.root)
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(2, 2)) == b"two"
    # what another process appends is found too
    in_child(lambda: MailStore(root).open_mailbox(INBOX).keep(3, 1, b"three"))
    assert box.cached(3, 1) == b"three"
    # a damaged record is never handed out; the cache starts again
    path = store.root / cache_mod.CACHE
    data = bytearray(path.read_bytes())
    i = data.index(b"one")
    data[i] = ord("O")
    path.write_bytes(bytes(data))
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(1, 1)) is None
    box.close()


def test_uidvalidity_change_and_rewrite(tmp_path, monkeypatch):
    store = make(tmp_path, 30)
    box = store.open_mailbox(INBOX)
    for uid in range(1, 31):
        box.keep(uid, 1, b"x" * 60000)
    assert box.cached(30, 1) == b"x" * 60000
    size = os.path.getsize(store.root / cache_mod.CACHE)
    box.store(list(range(1, 28)), ["\\Deleted"], "add")
    box.expunge()  # most of the file is now garbage: it is rewritten with the rest
    assert os.path.getsize(store.root / cache_mod.CACHE) < size / 4
    assert box.cached(29, 1) == b"x" * 60000 and box.cached(5, 1) is None
    box.close()
    # A new UIDVALIDITY (the uidlist is gone): nothing of the old cache is used.
    (store.root / "dovecot-uidlist").unlink()
    root = str(store.root)
    assert in_child(lambda: MailStore(root).open_mailbox(INBOX).cached(1, 1)) is None
