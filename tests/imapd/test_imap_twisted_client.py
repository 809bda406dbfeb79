"""Twisted's IMAP4Client (a second real client) against postroom-imapd."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT


def test_twisted_client_session(imapd):
    script = Path(__file__).with_name("twisted_imap_client.py")
    result = subprocess.run([sys.executable, str(script), str(imapd.port), imapd.user, "postroom"],
                            capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert "IMAP4rev1" in out["caps"] and "IDLE" in out["caps"]
    assert ["\\HasNoChildren", "\\Drafts"] in [row[0] for row in out["list"]]
    assert [["\\HasNoChildren"], ".", "Twisted.Sub"] in out["list"]
    assert out["select"]["EXISTS"] == 1 and out["select"]["READ-WRITE"] is True
    assert out["flags"] == {"1": {"FLAGS": ["\\Seen"]}}
    assert out["envelope_subject"] == "from twisted"
    bs = out["bodystructure"]
    assert bs[0][:2] == ["text", "plain"] and bs[1][:2] == ["message", "rfc822"] and bs[2] == "mixed"
    assert out["header"].replace("\r\n", "\n").strip() == "Subject: from twisted"
    assert out["search"] == [1]
    assert sorted(out["store"]["1"]["FLAGS"]) == ["\\Flagged", "\\Seen"]
    assert out["uid"] == {"1": {"UID": "1"}}
    assert out["status"] == {"MESSAGES": 1, "UIDNEXT": "2"}
    assert out["copied"] == {"MESSAGES": 1}
    assert out["namespace"] == [[["", "."]], [], []]
