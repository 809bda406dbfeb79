"""postroom-sendmail: from a shell script, as root and as an ordinary user, through
maildrop/ and the pickup to a real SMTP sink."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common.spool import parse
from tests.support import require, require_tool, wait_for

from .queue_sink import Sink, sink_config, sink_scanned_hourly, spool_files, start_queue

BIN = Path(sys.executable).parent


def _setup(tmp_path, sink_port):
    return sink_config(tmp_path, sink_port, """
        tls: none
        sendmail_domain: example.test
    """)


def test_sendmail_t_i_from_a_shell_script(tmp_path):
    with Sink("127.0.0.3") as sink:
        etc = _setup(tmp_path, sink.port)
        q = start_queue(etc)
        try:
            script = tmp_path / "cron-job.sh"
            script.write_text(f"""#!/bin/sh
set -e
printf 'To: Bob <bob@remote.test>\\nCc: carol@remote.test\\nBcc: hidden@remote.test\\nSubject: nightly\\n\\n.leading dot\\n.\\nlast line\\n' \\
  | {BIN}/postroom-sendmail -C {etc} -t -i
""")
            script.chmod(0o755)
            r = subprocess.run([str(script)], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            (got,) = sink.wait_for(1)
            assert sorted(got.recipients) == ["bob@remote.test", "carol@remote.test", "hidden@remote.test"]
            assert got.sender == "root@example.test"
            head, _, body = got.data.partition(b"\r\n\r\n")
            assert b"Bcc" not in head and b"hidden" not in head
            assert b"postroom-sendmail" in head and b"Message-ID:" in head and b"Date:" in head
            assert body == b".leading dot\r\n.\r\nlast line\r\n"     # -i: a lone dot is data
        finally:
            q.stop()


def test_sendmail_dot_ends_input_without_i_and_usage_errors(tmp_path):
    etc = _setup(tmp_path, 9)   # no queue manager: look at maildrop/ directly
    from common.spool import Spool
    Spool(tmp_path / "spool", create=True)
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-f", "me@example.test", "-F", "Me Myself",
                        "-N", "success,failure", "-R", "hdrs", "-v", "x@remote.test"],
                       input=b"Subject: s\n\nfirst\n.\nnot part of it\n", capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert b"queued as" in r.stderr
    (name,) = spool_files(tmp_path / "spool", "maildrop")
    sf = parse(tmp_path / "spool" / "maildrop" / name)
    assert sf.read_message() == b'From: "Me Myself" <me@example.test>\nSubject: s\n\nfirst\n'
    assert sf.envelope.sender == "me@example.test" and sf.envelope.ret == "HDRS"
    assert sf.envelope.recipients[0].notify == ("SUCCESS", "FAILURE")
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc], input=b"Subject: x\n\nhi\n", capture_output=True)
    assert r.returncode == 64 and b"no recipients" in r.stderr
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-Z"], input=b"", capture_output=True)
    assert r.returncode == 64
    r = subprocess.run([BIN / "postroom-sendmail", "-C", tmp_path / "nowhere", "a@b.test"], input=b"",
                       capture_output=True)
    assert r.returncode == 78


def test_sendmail_bs_smtp_session(tmp_path):
    etc = _setup(tmp_path, 9)
    from common.spool import Spool
    Spool(tmp_path / "spool", create=True)
    session = (b"EHLO local\r\nMAIL FROM:<root@example.test>\r\nRCPT TO:<a@remote.test> NOTIFY=NEVER\r\n"
               b"DATA\r\nSubject: bs\r\n\r\n..dot\r\n.\r\nQUIT\r\n")
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-bs"], input=session, capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    replies = r.stdout.split(b"\r\n")
    assert replies[0].startswith(b"220 ")
    assert any(line.startswith(b"250 2.0.0 queued as") for line in replies)
    (name,) = spool_files(tmp_path / "spool", "maildrop")
    sf = parse(tmp_path / "spool" / "maildrop" / name)
    assert sf.read_message() == b"Subject: bs\r\n\r\n.dot\r\n"
    assert sf.envelope.recipients[0].notify == ("NEVER",)


def test_ordinary_user_without_setuid_cannot_forge_the_sender(tmp_path):
    """nobody drops a message through the sticky maildrop/; the pickup sets the sender
    from the file's owner because nobody is not trusted."""
    require(os.geteuid() == 0, "root, to run postroom-sendmail as another user")
    require_tool("setpriv")
    base = Path(tempfile.mkdtemp(prefix="postroom-sendmail-"))
    base.chmod(0o755)
    try:
        with Sink("127.0.0.3") as sink:
            etc = _setup(base, sink.port)
            for p in etc.iterdir():
                p.chmod(0o644)
            etc.chmod(0o755)
            q = start_queue(etc)
            try:
                wait_for(lambda: (base / "spool" / "maildrop").stat().st_mode & 0o1777 == 0o1733, 10,
                         what="maildrop/ made sticky and writable")
                r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                    str(BIN / "postroom-sendmail"), "-C", str(etc), "-f", "ceo@example.test",
                                    "dave@remote.test"],
                                   input=b"Subject: from nobody\n\nhello\n", capture_output=True, timeout=30,
                                   env={**os.environ, "HOME": "/"})
                assert r.returncode == 0, r.stderr
                (got,) = sink.wait_for(1)
                assert got.sender == "nobody@example.test"
                assert b"from userid 65534" in got.data
                assert "may not send as <ceo@example.test>" in q.output()
                # Others cannot list maildrop/ to find someone else's message.
                r = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                    "ls", str(base / "spool" / "maildrop")], capture_output=True)
                assert r.returncode != 0
            finally:
                q.stop()
    finally:
        subprocess.run(["rm", "-rf", str(base)])


def test_local_recipients_expanded_through_aliases(tmp_path):
    from common.spool import Handoff

    with Sink("127.0.0.3") as sink:
        etc = sink_config(tmp_path, sink.port, """
            tls: none
            sendmail_domain: example.test
        """, "recipients:\n  aliases_file: aliases\n")
        (etc / "aliases").write_text("team: alice, friend@remote.test\n")
        q = start_queue(etc)
        try:
            r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "team@example.test", "bob+news"],
                               input=b"Subject: to the team\n\nhi\n", capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            (got,) = sink.wait_for(1)
            assert got.recipients == ["friend@remote.test"]          # the remote alias target, forwarded
            (hid,) = wait_for(lambda: spool_files(tmp_path / "spool", "mda"), 10, what="the hand-off")
            h = Handoff.from_json((tmp_path / "spool" / "mda" / hid).read_bytes())
            sf = parse(Path(h.spool_path))
            local = [sf.envelope.recipients[i] for i in h.recipients]
            assert sorted((r.mailbox, r.folder) for r in local) == [("alice@example.test", None),
                                                                    ("bob@example.test", "news")]
            assert {r.original for r in local} == {"team@example.test", "bob+news@example.test"}
        finally:
            q.stop()


def test_help_r_oi_bm_and_bp(tmp_path):
    from common.spool import Spool

    from .test_queue_tool import deferred_message

    etc = _setup(tmp_path, 9)   # no queue manager: look at maildrop/ directly
    Spool(tmp_path / "spool", create=True)
    r = subprocess.run([BIN / "postroom-sendmail", "--help"], capture_output=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith(b"usage: postroom-sendmail")
    assert b"-bp" in r.stdout and b"-oi" in r.stdout and b"no report is mailed" in r.stdout and not r.stderr
    # -r sets the envelope sender as -f does; -oi keeps a lone dot; -bm is the default mode said aloud.
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-bm", "-oi", "-r", "ops@example.test",
                        "x@remote.test"], input=b"Subject: r\n\nfirst\n.\nstill part of it\n",
                       capture_output=True, timeout=30)
    assert r.returncode == 0, r.stderr
    (name,) = spool_files(tmp_path / "spool", "maildrop")
    sf = parse(tmp_path / "spool" / "maildrop" / name)
    assert sf.envelope.sender == "ops@example.test"
    assert sf.read_message() == b"Subject: r\n\nfirst\n.\nstill part of it\n"
    # -bp lists the queue as mailq does.
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-bp"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"Mail queue is empty" in r.stdout
    qid = deferred_message(tmp_path / "spool", "bob@remote.test")
    r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-bp"], capture_output=True, timeout=30)
    assert r.returncode == 0 and qid.encode() in r.stdout and b"bob@remote.test" in r.stdout


def test_q_retries_deferred_mail_now(tmp_path):
    from .test_queue_tool import deferred_message

    with sink_scanned_hourly(tmp_path) as (sink, etc, spool):
        deferred_message(spool, "bob@remote.test")     # next attempt an hour away
        q = start_queue(etc)
        try:
            time.sleep(1.0)
            assert not sink.messages
            r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-q"], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            (got,) = sink.wait_for(1, timeout=10)
            assert got.recipients == ["bob@remote.test"]
            deferred_message(spool, "carol@remote.test")
            # Postfix's -qINTERVAL form: the interval is ignored, the queue is run now.
            r = subprocess.run([BIN / "postroom-sendmail", "-C", etc, "-q30m"], capture_output=True, timeout=30)
            assert r.returncode == 0, r.stderr
            sink.wait_for(2, timeout=10)
            assert sink.messages[1].recipients == ["carol@remote.test"]
        finally:
            q.stop()
