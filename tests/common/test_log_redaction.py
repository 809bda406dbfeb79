"""Passwords and message bodies never reach a log: each daemon that takes a password
runs at log level debug while a real client logs in and moves a message with a
distinctive body through it, and neither the password (nor its base64 form in
AUTH PLAIN) nor the body's text appears in what the daemon wrote.

    mta    AUTH PLAIN on submission (STARTTLS), then a message
    imapd  LOGIN, APPEND, FETCH of the body
    pop3d  USER/PASS, RETR
"""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import smtplib

import pytest

from common.storage import MailStore
from tests.common.daemons import config, start, tls_context
from tests.support import wait_for

USER = "alice@example.test"


def secrets() -> tuple[str, str]:
    token = os.urandom(6).hex()
    return f"Pw-{token}-Secret", f"BodyText-{token}-never-logged"


def message(body: str) -> bytes:
    return (f"From: {USER}\r\nTo: {USER}\r\nSubject: redaction test\r\n"
            f"Message-ID: <redaction@example.test>\r\n\r\n{body}\r\nsecond line {body}\r\n").encode()


@pytest.mark.parametrize("daemon_name", ["mta", "imapd", "pop3d"])
def test_no_password_and_no_body_in_debug_logs(tmp_path, daemon_name):
    password, body = secrets()
    etc = config(tmp_path, daemon_name, core_extra="log:\n  level: debug\n", users={USER: password})
    daemon, ports = start(etc, daemon_name)
    try:
        if daemon_name == "mta":
            with smtplib.SMTP("127.0.0.1", ports["plain"], timeout=15) as smtp:
                smtp.starttls(context=tls_context())
                smtp.ehlo()
                code, _ = smtp.docmd("AUTH", "PLAIN " + base64.b64encode(f"\0{USER}\0{password}".encode()).decode())
                assert code == 235
                assert smtp.sendmail(USER, [USER], message(body)) == {}
            wait_for(lambda: "queued" in daemon.output() or "accepted" in daemon.output(), timeout=15,
                     what="the message to be logged as accepted")
        elif daemon_name == "imapd":
            imap = imaplib.IMAP4("127.0.0.1", ports["plain"], timeout=15)
            imap.starttls(tls_context())
            imap.login(USER, password)
            assert imap.append("INBOX", None, None, message(body))[0] == "OK"
            imap.select("INBOX")
            typ, data = imap.fetch("1", "(BODY[TEXT])")
            assert typ == "OK" and body.encode() in data[0][1]
            imap.logout()
        else:
            store = MailStore(tmp_path / "mail" / "example.test" / "alice" / "Maildir")
            store.deliver(message(body))
            pop = poplib.POP3("127.0.0.1", ports["plain"], timeout=15)
            pop.stls(tls_context())
            pop.user(USER)
            pop.pass_(password)
            _, lines, _ = pop.retr(1)
            assert body.encode() in b"\n".join(lines)
            pop.quit()
    finally:
        assert daemon.stop() == 0
    out = daemon.output()
    assert "Traceback" not in out, out
    b64_credentials = base64.b64encode(f"\0{USER}\0{password}".encode()).decode()
    for secret in (password, body, b64_credentials, base64.b64encode(password.encode()).decode()):
        assert secret not in out, f"{secret!r} is in the {daemon_name} log:\n{out}"
    assert USER in out  # the log does say who logged in
