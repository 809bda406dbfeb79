"""Run by test_imap_twisted_client.py in its own process: Twisted's IMAP4Client
against postroom-imapd. Prints one JSON object of what it saw."""

from __future__ import annotations

import json
import sys

from twisted.internet import defer, endpoints, protocol, task
from twisted.mail import imap4

MSG = (b"From: Tw <tw@example.test>\r\nTo: a@example.test\r\nSubject: from twisted\r\n"
       b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
       b"--zz\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\ninner\r\n--zz--\r\n")


@defer.inlineCallbacks
def main(reactor, port, user, password):
    out = {}
    factory = protocol.Factory.forProtocol(imap4.IMAP4Client)
    client = yield endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", int(port)).connect(factory)
    caps = yield client.getCapabilities()
    out["caps"] = sorted(caps)
    yield client.login(user.encode(), password.encode())
    out["create"] = (yield client.create("Twisted.Sub")) is not None
    import io
    yield client.append("INBOX", io.BytesIO(MSG), (r"\Seen",), None)
    out["list"] = [[list(flags), sep, name] for flags, sep, name in (yield client.list("", "*"))]
    selected = yield client.select("INBOX")
    out["select"] = {"EXISTS": selected.get("EXISTS"), "UIDVALIDITY": selected.get("UIDVALIDITY"),
                     "READ-WRITE": selected.get("READ-WRITE")}
    out["flags"] = {str(k): v for k, v in (yield client.fetchFlags("1:*")).items()}
    env = yield client.fetchEnvelope("1")
    out["envelope_subject"] = env[1]["ENVELOPE"][1]
    bs = yield client.fetchBodyStructure("1")
    out["bodystructure"] = bs[1]["BODYSTRUCTURE"]
    spec = yield client.fetchSpecific("1", headerType="HEADER.FIELDS", headerArgs=["SUBJECT"], peek=True)
    out["header"] = spec[1][0][2]
    out["search"] = (yield client.search(imap4.Query(seen=True)))
    out["store"] = {str(k): v for k, v in (yield client.addFlags("1", [r"\Flagged"], silent=False)).items()}
    out["uid"] = {str(k): v for k, v in (yield client.fetchUID("1:*")).items()}
    out["status"] = yield client.status("INBOX", "MESSAGES", "UIDNEXT")
    yield client.copy("1", "Twisted.Sub", uid=False)
    out["copied"] = (yield client.status("Twisted.Sub", "MESSAGES"))
    out["namespace"] = yield client.namespace()
    yield client.expunge()
    yield client.logout()
    print(json.dumps(plain(out)))


def plain(value):
    """Twisted hands back bytes and tuples; JSON wants text and lists."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, dict):
        return {plain(k) if isinstance(k, bytes) else str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
