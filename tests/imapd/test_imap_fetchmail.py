"""fetchmail (a third real client) downloads and expunges over IMAP with STARTTLS."""

from __future__ import annotations

import os
import subprocess

from common.storage import MailStore
from tests.support import require_tool


def test_fetchmail_downloads_and_deletes(imapd, tmp_path):
    fetchmail = require_tool("fetchmail")
    store = MailStore(imapd.maildir())
    for i in range(3):
        store.deliver(b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (i, i))
    out = tmp_path / "out.mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(f'poll 127.0.0.1 service {imapd.port} protocol IMAP user "{imapd.user}" password "postroom" '
                  f'sslproto "TLS1.2+" no sslcertck mda "/bin/sh -c \'cat >> {out}\'"\n')
    rc.chmod(0o600)
    result = subprocess.run([fetchmail, "-f", str(rc), "-v", "--nosyslog", "-N", "--idfile", str(tmp_path / "ids")],
                            capture_output=True, text=True, timeout=60, env={**os.environ, "HOME": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STARTTLS" in result.stdout
    text = out.read_text()
    assert [line for line in text.splitlines() if line.startswith("Subject:")] == ["Subject: m0", "Subject: m1", "Subject: m2"]
    c = imapd.client()
    assert c.select("INBOX")[1] == [b"0"]
    c.logout()
