"""bench/imap_load.py keeps working: --populate fills a maildir with varied messages
through common.storage, and the scenarios run against the real daemon (tiny sizes)."""

from __future__ import annotations

import argparse
import asyncio
import importlib.util

from common.storage import MailStore
from tests.support import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("imap_load", ROOT / "bench" / "imap_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_populate_and_scenarios(imapd_server):
    bench = load_bench()
    maildir = imapd_server.maildir("user37@example.test")
    bench.populate(maildir, 60)
    box = MailStore(maildir).open_mailbox("INBOX", readonly=True)
    assert [m.uid for m in box.messages] == list(range(1, 61))
    bodies = [box.read(m.uid) for m in box.messages]
    assert any(b"multipart/mixed" in b for b in bodies) and any(b"References:" in b for b in bodies)
    class Users(str):
        """The bench's users 0 (the big mailbox), 1 and 2 are these test users."""
        def format(self, n):
            return ("user37@example.test", "user36@example.test", "user35@example.test")[n]

    a = argparse.Namespace(host="127.0.0.1", port=imapd_server.port, user_format=Users(), password="postroom",
                           mailbox="INBOX", clients=1, seconds=0.5, idle=3, watchers=2,
                           pid=imapd_server.daemon.proc.pid, deliver_maildir=None,
                           modes="relogin,stay", client_procs=1)
    got = asyncio.run(bench.t_select(a))
    assert got["messages"] == 60 and got["fetched"] == 60
    assert asyncio.run(bench.t_envelope(a))["fetched"] == 60
    assert "sort_date_10000_s" in asyncio.run(bench.t_search(a))
    mixed = asyncio.run(bench.t_mixed(a))
    assert mixed["mixed_relogin_cmds_per_s"] > 0 and mixed["mixed_stay_cmds_per_s"] > 0
    assert mixed["mixed_relogin_errors"] == 0 and mixed["mixed_stay_errors"] == 0
    a.clients, a.client_procs, a.modes = 2, 2, "stay"  # clients spread over two processes
    mixed = asyncio.run(bench.t_mixed(a))
    assert mixed["mixed_stay_cmds_per_s"] > 0 and mixed["mixed_stay_errors"] == 0
    a.clients = 1
    assert asyncio.run(bench.t_idle(a))["idle_connections"] == 3
    assert asyncio.run(bench.t_latency(a))["delivery_to_exists_max_s"] < 5
