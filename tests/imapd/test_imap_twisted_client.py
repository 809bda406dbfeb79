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
    assert out["flags"] == {"1": {"FLAGS": ["\\Seen", "\\Recent"]}}
    assert out["envelope_subject"] == "from twisted"
    bs = out["bodystructure"]
    assert bs[0][:2] == ["text", "plain"] and bs[1][:2] == ["message", "rfc822"] and bs[2] == "mixed"
    assert out["header"].replace("\r\n", "\n").strip() == "Subject: from twisted"
    assert out["search"] == [1]
    assert sorted(out["store"]["1"]["FLAGS"]) == ["\\Flagged", "\\Recent", "\\Seen"]
    assert out["uid"] == {"1": {"UID": "1"}}
    assert out["status"] == {"MESSAGES": 1, "UIDNEXT": "2"}
    assert out["copied"] == {"MESSAGES": 1}
    assert out["namespace"] == [[["", "."]], [], []]


DEEP_CLIENT = """
import io, json, sys
from twisted.internet import defer, endpoints, protocol, task
from twisted.mail import imap4


@defer.inlineCallbacks
def main(reactor, port, user, password, path):
    factory = protocol.Factory.forProtocol(imap4.IMAP4Client)
    client = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port)).connect(factory)
    yield client.login(user.encode(), password.encode())
    messages = json.load(open(path))
    for message in messages:
        yield client.append("INBOX", io.BytesIO(message.encode("latin-1")), (), None)
    yield client.select("INBOX")
    out = []
    for number in range(1, len(messages) + 1):
        bs = yield client.fetchBodyStructure(str(number))
        body = yield client.fetchSpecific(str(number), peek=True)
        out.append([bs[number]["BODYSTRUCTURE"], body[number][0][2]])
    yield client.logout()
    print(json.dumps(out, default=lambda b: b.decode("latin-1")))


task.react(main, sys.argv[1:])
"""


def test_twisted_client_parses_deeply_nested_structures(imapd, tmp_path):
    """Twisted's IMAP4Client reads the BODYSTRUCTURE of messages nested past the
    limit, and what it hands back holds to RFC 3501's grammar."""
    from .test_imap_fetch import DEEP, DEEP_SERVED, check_body
    path = tmp_path / "messages.json"
    path.write_text(json.dumps([m.decode("latin-1") for m in DEEP.values()]))
    result = subprocess.run([sys.executable, "-c", DEEP_CLIENT, str(imapd.port), imapd.user, "postroom", str(path)],
                            capture_output=True, text=True, timeout=60, cwd=str(ROOT))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for (shape, message), (structure, body) in zip(DEEP.items(), out):
        assert check_body(structure, loose=True) == DEEP_SERVED[shape]
        assert body.encode("latin-1") == message
