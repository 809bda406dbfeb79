"""common.fshelper: the child process that makes an event loop's syncfs(2) and
unlink(2) calls. Driven under the real reactor (in a subprocess of its own, so that
each run has a fresh reactor): answers come in order, an error reaches the caller
with its errno, unlinks are done, a helper that dies fails what it owed with EIO and
is started again, and the child ends when its parent closes its input."""

from __future__ import annotations

import os
import sys

import pytest

from common.fschild import serve
from tests.support import run_json_script

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="syncfs(2) is Linux only")

SCRIPT = r"""
import json, os, signal, sys
from twisted.internet import defer, task
from common.fshelper import FsHelper

def settle(reactor, seconds=0.05):
    return task.deferLater(reactor, seconds, lambda: None)

@defer.inlineCallbacks
def main(reactor, folder):
    helper = FsHelper(reactor)
    out = {}
    order = []
    ds = [helper.syncfs(folder).addCallback(lambda _, i=i: order.append(i)) for i in range(5)]
    yield defer.gatherResults(ds)
    out["order"] = order
    try:
        yield helper.syncfs(os.path.join(folder, "missing"))
    except OSError as e:
        out["missing"] = e.errno
    victims = [os.path.join(folder, f"v{i}") for i in range(3)]
    for v in victims:
        open(v, "w").close()
        helper.unlink(v)
    yield helper.syncfs(folder)  # answered after the unlinks read with it
    for _ in range(100):
        if not any(os.path.exists(v) for v in victims):
            break
        yield settle(reactor)
    out["unlinked"] = not any(os.path.exists(v) for v in victims)
    first_pid = helper.transport.pid
    pending = helper.syncfs(folder)
    os.kill(first_pid, signal.SIGKILL)
    try:
        yield pending
        out["after_kill"] = "answered before the kill"
    except OSError as e:
        out["after_kill"] = e.errno
    for _ in range(100):
        if helper.child is None:
            break
        yield settle(reactor)
    yield helper.syncfs(folder)  # a new child
    out["started"] = helper.started
    helper.close()  # end of its input: the child exits and Twisted reaps it
    for _ in range(100):
        if helper.child is None:
            break
        yield settle(reactor)
    out["ended"] = helper.child is None
    print(json.dumps(out))

task.react(main, sys.argv[1:])
"""


def test_helper_answers_in_order_unlinks_and_survives_its_child(tmp_path):
    got = run_json_script(SCRIPT, str(tmp_path))
    assert got["order"] == [0, 1, 2, 3, 4]
    assert got["missing"] == 2                       # ENOENT
    assert got["unlinked"] is True
    assert got["after_kill"] in (5, "answered before the kill")  # EIO unless it was quicker
    assert got["started"] == 2
    assert got["ended"] is True


def test_child_protocol_over_pipes(tmp_path):
    """The child's loop itself: syncfs answers in order, errors as errno, unlinks
    silent, a malformed record ends it with status 2."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"x")
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    os.write(w_in, b"S" + bytes(tmp_path) + b"\0U" + bytes(victim) + b"\0S" + bytes(tmp_path / "nope") + b"\0")
    os.close(w_in)
    assert serve(r_in, w_out) == 0
    os.close(w_out)
    assert os.read(r_out, 100) == b"0\0002\0"
    assert not victim.exists()
    r_in, w_in = os.pipe()
    r_out, w_out = os.pipe()
    os.write(w_in, b"Xwhat\0S" + bytes(tmp_path) + b"\0")
    os.close(w_in)
    assert serve(r_in, w_out) == 2
    os.close(w_out)
    assert os.read(r_out, 100) == b"0\0"  # what was asked with it is still answered
