"""mbsync (isync; a fourth real client) mirrors the server both ways: download,
then a local new message and a local \\Seen go up with APPEND and STORE."""

from __future__ import annotations

import subprocess

from common.storage import MailStore
from tests.support import require_tool


def mbsyncrc(imapd, local) -> str:
    # Plain IMAP: the test certificate names mail.example.test, and loopback is
    # trusted with passwords by default.
    return f"""\
IMAPAccount acc
Host 127.0.0.1
Port {imapd.port}
User {imapd.user}
Pass postroom
SSLType None

IMAPStore remote
Account acc

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel ch
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
"""


def test_mbsync_both_ways(imapd, tmp_path):
    mbsync = require_tool("mbsync")
    store = MailStore(imapd.maildir())
    for i in range(3):
        store.deliver(b"From: a@example.test\r\nSubject: m%d\r\n\r\nbody %d\r\n" % (i, i))
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(mbsyncrc(imapd, local))

    def sync():
        result = subprocess.run([mbsync, "-c", str(rc), "ch"], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    sync()
    files = sorted((local / "INBOX").glob("*/*"))
    assert len(files) == 3
    assert {p.name for p in local.iterdir()} >= {"INBOX", "Drafts", "Sent", "Trash", "Junk", "Archive"}
    # Mark one read locally and write a new one locally.
    first = files[0]
    first.rename(local / "INBOX" / "cur" / (first.name.split(":")[0] + ":2,S"))
    (local / "INBOX" / "new" / "123.local.vm").write_bytes(b"From: me@example.test\r\nSubject: local\r\n\r\nhi\r\n")
    sync()
    c = imapd.client()
    c.select("INBOX")
    typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    rows = {item[1].strip(): item[0] for item in data if isinstance(item, tuple)}
    assert set(rows) == {b"Subject: m0", b"Subject: m1", b"Subject: m2", b"Subject: local"}
    assert b"\\Seen" in rows[b"Subject: m0"] and b"\\Seen" not in rows[b"Subject: m1"]
    c.logout()
