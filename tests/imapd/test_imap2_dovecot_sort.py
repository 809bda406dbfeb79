"""SORT and THREAD answers agree with Debian's Dovecot on the same maildir: 300
messages of realistic variety (replies, forwards, list tags, References to
messages that are not there, encoded names) from bench/imap_load.py --populate."""

from __future__ import annotations

import imaplib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import Daemon, free_port, require, require_tool, wait_for_port
from tests.support.config import base_config

from .test_imap2_bench import load_bench
from .test_imap_dovecot_interop import NOBODY, dovecot_conf

USER = "sorter@example.test"
CRITERIA = ["(DATE)", "(REVERSE DATE)", "(SUBJECT)", "(FROM)", "(TO)", "(CC)", "(SIZE)", "(ARRIVAL)",
            "(SUBJECT REVERSE DATE)", "(FROM REVERSE SIZE)", "(REVERSE CC TO)"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    dovecot = require_tool("dovecot")
    require(os.geteuid() == 0, "root, to run Dovecot as a normal process with its own users")
    work = Path(tempfile.mkdtemp(prefix="dcs"))  # short: Dovecot's socket paths are bounded
    work.chmod(0o755)
    for sub in ("run", "state"):
        (work / sub).mkdir()
    home = work / "home"
    home.mkdir()
    load_bench().populate(home / "Maildir", 300)
    tmp = tmp_path_factory.mktemp("sortpair")
    etc = base_config(tmp, users={USER: "postroom"})
    shutil.copytree(home / "Maildir", tmp / "mail" / "example.test" / "sorter" / "Maildir")
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(home)], check=True)
    (work / "passwd").write_text(f"{USER}:{{PLAIN}}postroom:{NOBODY}:{NOBODY}::{home}::\n")
    dc_port, port = free_port(), free_port()
    dc = subprocess.Popen([dovecot, "-F", "-c", str(dovecot_conf(work, dc_port, work / "passwd"))],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (etc / "imapd.yaml").write_text(f"listeners:\n  imap:\n    endpoint: tcp:{port}:interface=127.0.0.1\n    tls: none\n")
    imapd = Daemon("imapd.main", etc)
    clients = []
    try:
        wait_for_port(dc_port, proc=dc, timeout=20)
        imapd.start(wait_ports=(port,))
        for p in (dc_port, port):
            c = imaplib.IMAP4("127.0.0.1", p, timeout=10)
            c.login(USER, "postroom")
            assert c.select("INBOX", readonly=True) == ("OK", [b"300"])
            clients.append(c)
        yield clients
    finally:
        for c in clients:
            c.logout()
        dc.terminate()
        try:
            dc.wait(10)
        except subprocess.TimeoutExpired:
            dc.kill()
        shutil.rmtree(work, ignore_errors=True)
        assert imapd.stop() == 0 and "Traceback" not in imapd.output(), imapd.output()


@pytest.mark.parametrize("criteria", CRITERIA)
def test_sort_agrees_with_dovecot(pair, criteria):
    dovecot, postroom = (c.sort(criteria, "UTF-8", "ALL") for c in pair)
    assert dovecot[0] == postroom[0] == "OK"
    assert postroom[1][0] == dovecot[1][0]


@pytest.mark.parametrize("algorithm", ["ORDEREDSUBJECT", "REFERENCES"])
def test_thread_agrees_with_dovecot(pair, algorithm):
    dovecot, postroom = (c.thread(algorithm, "UTF-8", "ALL") for c in pair)
    assert dovecot[0] == postroom[0] == "OK"
    assert postroom[1][0] == dovecot[1][0]
    assert postroom[1][0].count(b"(") > 20  # really threaded, not one flat list


def test_sort_with_search_agrees_with_dovecot(pair):
    dovecot, postroom = (c.uid("SORT", "(REVERSE SUBJECT)", "UTF-8", "SEEN", "SINCE", "1-Jan-2000") for c in pair)
    assert postroom[1][0] == dovecot[1][0] and len(postroom[1][0].split()) > 100
