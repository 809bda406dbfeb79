"""The RFC 3464 report builder, from bytes: structure, per-recipient fields, RET,
and hostile text from a remote server kept on one bounded line."""

from __future__ import annotations

import email
import email.policy

from common.spool import Envelope, Recipient
from mta.bounce import RecipientReport, build_dsn, dsn_envelope

ORIGINAL = b"From: a@example.test\r\nSubject: original\r\n\r\nbody text\r\n"


def parse(raw: bytes):
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_report_structure_and_fields():
    env = Envelope(sender="a@example.test", envid="X1", recipients=[
        Recipient("b@remote.test", orcpt="rfc822;B@remote.test"), Recipient("c@remote.test")])
    reports = [RecipientReport(env.recipients[0], "failed", "5.1.1", "550 5.1.1 unknown", "mx.remote.test", True),
               RecipientReport(env.recipients[1], "failed", "5.7.1", "policy says no", None, False)]
    raw = build_dsn(env, ORIGINAL, reports, "mail.example.test", now=1.0e9)
    assert b"\n" not in raw.replace(b"\r\n", b"")            # CRLF only
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/report" and "a@example.test" in msg["To"]
    human, status, original = msg.iter_parts()
    text = status.as_string()
    assert "Reporting-MTA: dns; mail.example.test" in text and "Original-Envelope-Id: X1" in text
    assert "Original-Recipient: rfc822; B@remote.test" in text
    assert "Remote-MTA: dns; mx.remote.test" in text
    assert "Diagnostic-Code: smtp; 550 5.1.1 unknown" in text
    assert "Diagnostic-Code: x-postroom; policy says no" in text
    assert original.get_content_type() == "message/rfc822"
    assert b"body text" in raw
    e = dsn_envelope(env, "a@example.test")
    assert e.sender == "" and e.source == "bounce" and e.recipients[0].notify == ("NEVER",)


def test_ret_hdrs_returns_only_the_header():
    env = Envelope(sender="a@example.test", recipients=[Recipient("b@remote.test")], ret="HDRS")
    raw = build_dsn(env, ORIGINAL, [RecipientReport(env.recipients[0], "failed", "5.0.0", "no")], "m.test")
    original = list(parse(raw).iter_parts())[2]
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: original" in raw and b"body text" not in raw


def test_hostile_diagnostic_cannot_inject_fields():
    env = Envelope(sender="a@example.test", recipients=[Recipient("b@remote.test")])
    evil = "550 no\r\nX-Injected: yes\r\n\r\n" + "A" * 5000
    raw = build_dsn(env, ORIGINAL, [RecipientReport(env.recipients[0], "failed", "5.0.0", evil, "mx", True)],
                    "m.test")
    assert b"\r\nX-Injected" not in raw
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
