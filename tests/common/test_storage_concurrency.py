"""Several sessions and processes on one mailbox at once: no UID is ever reused, no
flag is lost, UIDVALIDITY stays, and delivery never waits."""

import multiprocessing
import os

from common.storage import INBOX, MailStore

ROUNDS = 25


def _worker(root: str, tag: str, queue) -> None:
    try:
        store = MailStore(root)
        box = store.open_mailbox(INBOX)
        got = []
        for i in range(ROUNDS):
            got.append(box.append(f"Subject: {tag} {i}\r\n\r\n".encode()))
            store.deliver(f"Subject: delivered {tag} {i}\n\n".encode())
            box.sync()
            # Everyone adds its own flags to message 1 at the same time.
            if i < 10:
                box.store([1], [f"{tag}{i}"], "add")
        box.store([1], ["\\Seen"] if tag == "a" else ["\\Flagged"], "add")
        queue.put((tag, got, box.uidvalidity))
    except BaseException as e:  # report rather than hang the parent
        queue.put((tag, repr(e), 0))


def test_two_processes_and_deliveries_never_reuse_a_uid_nor_lose_a_flag(tmp_path):
    root = tmp_path / "Maildir"
    store = MailStore(root)
    store.deliver(b"Subject: shared\n\n")
    first = store.open_mailbox(INBOX)
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(root), tag, queue)) for tag in ("a", "b")]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(10)
    for tag, got, _ in results:
        assert isinstance(got, list), f"worker {tag} failed: {got}"
    appended = [uid for _, got, _ in results for uid in got]
    assert len(set(appended)) == len(appended) == 2 * ROUNDS
    assert {v for *_, v in results} == {first.uidvalidity}
    box = store.open_mailbox(INBOX)
    uids = [m.uid for m in box.messages]
    assert len(uids) == len(set(uids)) == 1 + 4 * ROUNDS
    assert set(appended) <= set(uids)
    assert box.by_uid(1).flags == {"\\Seen", "\\Flagged"} | {f"{t}{i}" for t in "ab" for i in range(10)}
    assert box.uidvalidity == first.uidvalidity
    assert not os.path.exists(root / "dovecot-uidlist.lock") and os.listdir(root / "tmp") == []


def test_two_sessions_in_one_process_interleaved(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    a = store.open_mailbox(INBOX)
    b = store.open_mailbox(INBOX)
    seen = []
    for i in range(20):
        seen.append(a.append(b"a\r\n"))
        store.deliver(b"d\n")
        seen.append(b.append(b"b\r\n"))
        ca, cb = a.sync(), b.sync()
        seen.extend(m.uid for m in ca.new if m.uid not in seen)
        assert not cb.expunged and not ca.expunged
    assert len(seen) == len(set(seen))
    assert [m.uid for m in a.messages] == [m.uid for m in b.messages] == list(range(1, 61))


def _deliver_big(root: str, count: int) -> None:
    store = MailStore(root)
    for i in range(count):
        store.deliver(b"Subject: big\n\n" + bytes([65 + i % 26]) * 2_000_000)


def test_a_reader_never_sees_a_partial_delivery(tmp_path):
    import re
    root = tmp_path / "Maildir"
    MailStore(root)
    ctx = multiprocessing.get_context("fork")
    writer = ctx.Process(target=_deliver_big, args=(str(root), 15))
    writer.start()
    checked = set()

    def check() -> None:
        for name in os.listdir(root / "new"):
            if name not in checked:
                declared = int(re.search(r",S=(\d+)", name).group(1))
                assert os.path.getsize(root / "new" / name) == declared, "a file appeared before it was complete"
                checked.add(name)
    try:
        while writer.is_alive():
            check()
        check()  # what arrived after the last look
    finally:
        writer.join(60)
    assert writer.exitcode == 0 and len(checked) == 15
