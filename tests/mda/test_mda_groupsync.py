"""mda.groupsync: a batch made durable with syncfs(2) (or fsync where there is none),
and syncfs calls shared among threads."""

from __future__ import annotations

import os
import threading


from mda import groupsync
from mda.groupsync import GroupSync, SharedSyncfs
from tests.support import require


def test_flush_with_and_without_syncfs(tmp_path):
    for use_syncfs in (True, False):
        group = GroupSync(use_syncfs=use_syncfs)
        path = tmp_path / f"f{use_syncfs}"
        path.write_bytes(b"data")
        group.add_file(path)
        group.add_dir(tmp_path)
        assert group
        group.flush()
        assert not group and path.read_bytes() == b"data"


def test_threads_share_syncfs_calls(tmp_path, monkeypatch):
    require(groupsync.HAVE_SYNCFS, "syncfs(2) (Linux)")
    calls = []
    real = groupsync.syncfs

    def counting(directory):
        calls.append(directory)
        return real(directory)

    monkeypatch.setattr(groupsync, "syncfs", counting)
    shared = SharedSyncfs()
    device = os.stat(tmp_path).st_dev
    errors = []

    def worker(i):
        try:
            for j in range(10):
                (tmp_path / f"{i}.{j}").write_bytes(b"x" * 100)
                group = GroupSync(shared=shared)
                group.add_file(tmp_path / f"{i}.{j}")
                group.flush()
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert 1 <= len(calls) <= 80
    assert shared._finished[device] == len(calls)


def test_an_error_reaches_every_thread_that_relied_on_the_call(tmp_path):
    require(groupsync.HAVE_SYNCFS, "syncfs(2) (Linux)")
    shared = SharedSyncfs()
    missing = str(tmp_path / "gone")
    raised = []

    def worker():
        try:
            shared.sync(12345, missing)
        except OSError as e:
            raised.append(e)

    threads = [threading.Thread(target=worker) for _ in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(raised) == 5 and all(isinstance(e, FileNotFoundError) for e in raised)
