"""mda.journal: plans recorded per batch, found again by key (also by a new process),
forgotten when answered for good, torn files ignored."""

from __future__ import annotations

import os

from mda.journal import Journal, Plan, key_of


def plan(user: str = "alice@example.test", folder: str = "INBOX") -> Plan:
    return Plan(user=user, folders=[{"name": folder, "flags": [], "unique": "1.M1P1Q1.host"}],
                redirects=[{"to": "x@remote.test", "qid": "0123456789ABCDEF012345"}])


def test_plans_are_found_by_key_and_survive_a_restart(tmp_path):
    journal = Journal(tmp_path)
    a, b = key_of("0661B5FA9E07CA0152C000", 0), key_of("0661B5FA9E07CA0152C000", 1)
    path = journal.write({a: plan(), b: plan(folder="Lists")})
    assert journal.load(a) == (plan(), path)
    assert journal.load(key_of("0661B5FA9E07CA0152C000", 2)) is None
    again = Journal(tmp_path)                     # a new process reads the folder
    assert again.load(b)[0].folders[0]["name"] == "Lists"
    # A file goes when every plan in it is answered for good.
    again.forget([a])
    assert os.path.exists(path) and again.load(a) is None
    again.forget([b])
    assert not os.path.exists(path) and again.load(b) is None


def test_a_torn_file_counts_as_absent(tmp_path):
    journal = Journal(tmp_path)
    key = key_of("0661B5FA9E07CA0152C000", 0)
    path = journal.write({key: plan()})
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    assert Journal(tmp_path).load(key) is None


def test_keys_are_checked():
    import pytest
    for bad in ("../x", "a/b", ""):
        with pytest.raises(ValueError):
            key_of(bad, 0)


def test_a_plan_decided_anew_releases_the_old_file(tmp_path):
    journal = Journal(tmp_path)
    key = key_of("0661B5FA9E07CA0152C000", 0)
    first = journal.write({key: plan()})
    second = journal.write({key: plan(user="bob@example.test")})
    assert not os.path.exists(first) and journal.load(key) == (plan(user="bob@example.test"), second)


def test_files_older_than_the_limit_are_pruned(tmp_path):
    import time
    journal = Journal(tmp_path)
    old_key, new_key = key_of("0661B5FA9E07CA0152C000", 0), key_of("0661B5FA9E07CA0152C001", 0)
    old = journal.write({old_key: plan()})
    new = journal.write({new_key: plan()})
    os.utime(old, (time.time() - 31 * 86400,) * 2)
    assert journal.prune() == 1
    assert not os.path.exists(old) and os.path.exists(new)
    assert journal.load(old_key) is None and journal.load(new_key) is not None


def test_a_retry_finds_the_plan_another_process_made_since_and_leaves_its_file(tmp_path):
    """Two consumer processes (two journals on one folder, each loaded at its start):
    a retry reaching the second finds the plan the first recorded since; answered
    for good there, the file stays for the first, whose other plans it holds."""
    first, second = Journal(tmp_path), Journal(tmp_path)
    assert second.load(key_of("0661B5FA9E07CA0152C000", 9)) is None       # loaded at its start
    a, b = key_of("0661B5FA9E07CA0152C000", 0), key_of("0661B5FA9E07CA0152C001", 0)
    path = first.write({a: plan(), b: plan(folder="Lists")})
    assert second.load(a) is None                                        # memory only: a first attempt
    assert second.load(a, refresh=True) == (plan(), path)
    assert second.load(b) is None                                        # only the plan looked for is kept
    second.forget([a])
    assert os.path.exists(path) and first.load(b)[0].folders[0]["name"] == "Lists"
    first.forget([a, b])
    assert not os.path.exists(path)
