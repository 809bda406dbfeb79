"""postroom-imapd over real sockets with imaplib: login rules, SELECT, FETCH, STORE,
APPEND, COPY, MOVE, EXPUNGE, mailbox commands, extensions."""

from __future__ import annotations

import imaplib
import re
import ssl

import pytest

from common.storage import MailStore

MSG = (b"From: Alice <alice@example.test>\r\nTo: Bob <bob@example.test>\r\nSubject: Hello\r\n"
       b"Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nHello Bob\r\n")


def test_capabilities_starttls_and_login(imapd):
    c = imapd.client(user=None)
    caps = c.capabilities
    assert "STARTTLS" in caps and "IDLE" in caps and "LITERAL+" in caps
    # Loopback counts as secure by default, so plain login is offered here.
    assert "AUTH=PLAIN" in caps
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    c.starttls(ssl_context=ctx)
    typ, data = c.capability()
    assert b"STARTTLS" not in data[0]
    c.login(imapd.user, "postroom")
    typ, data = c.capability()
    assert b"UIDPLUS" in data[0] and b"AUTH=" not in data[0]
    c.logout()


def test_implicit_tls_and_wrong_password(imapd):
    c = imapd.tls_client()
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login(imapd.user, "wrong")
    c.login(imapd.user, "postroom")
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_append_select_fetch_store_expunge(imapd):
    c = imapd.client()
    typ, data = c.append("INBOX", r"(\Flagged $Important)", imaplib.Time2Internaldate(1700000000), MSG)
    assert typ == "OK" and b"APPENDUID" in data[0]
    typ, data = c.select("INBOX")
    assert data == [b"1"]
    typ, data = c.fetch("1", "(FLAGS RFC822.SIZE INTERNALDATE ENVELOPE UID)")
    line = data[0]
    assert b"\\Flagged" in line and b"$Important" in line
    assert b"RFC822.SIZE %d" % len(MSG) in line
    assert b'"Hello"' in line and b'(("Alice" NIL "alice" "example.test"))' in line
    typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert data[0][1] == b"Subject: Hello\r\n\r\n"
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    typ, data = c.fetch("1", "(BODY[TEXT])")
    assert data[0][1] == b"Hello Bob\r\n"
    assert b"\\Seen" in data[0][0] or b"\\Seen" in data[1]
    typ, data = c.store("1", "+FLAGS", r"(\Deleted)")
    assert b"\\Deleted" in data[0]
    typ, data = c.expunge()
    assert data == [b"1"]
    typ, data = c.select("INBOX")
    assert data == [b"0"]
    c.logout()


def test_copy_move_uidplus(imapd):
    c = imapd.client()
    for _ in range(3):
        c.append("INBOX", None, None, MSG)
    c.select("INBOX")
    typ, data = c._simple_command("UID", "COPY", "1:2", "Trash")
    assert typ == "OK" and re.search(rb"COPYUID \d+ 1:2 1:2", data[0]), data
    archive_validity = c.status("Archive", "(UIDVALIDITY)")[1][0].split()[-1].rstrip(b")")
    c.untagged_responses.pop("COPYUID")
    typ, data = c._simple_command("UID", "MOVE", "3", "Archive")
    # RFC 6851: the COPYUID of a MOVE comes in an untagged OK, not in the tagged one.
    assert (typ, data) == ("OK", [b"Move completed"])
    assert c.untagged_responses.pop("COPYUID") == [archive_validity + b" 3 1"]
    assert c.untagged_responses.get("EXPUNGE") == [b"3"]
    assert c.status("Archive", "(MESSAGES UIDNEXT)")[1][0] == b"Archive (MESSAGES 1 UIDNEXT 2)"
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b"INBOX (MESSAGES 2)"
    c.logout()


def test_mailbox_commands(imapd):
    c = imapd.client()
    assert c.create("Projects.2024")[0] == "OK"
    typ, data = c.list('""', "*")
    names = [d.decode() for d in data]
    assert '(\\HasNoChildren \\Drafts) "." Drafts' in names
    assert '(\\Noselect \\HasChildren) "." Projects' in names
    assert '(\\HasNoChildren) "." Projects.2024' in names
    assert c.rename("Projects.2024", "Old")[0] == "OK"
    assert c.subscribe("Old")[0] == "OK"
    assert b'() "." Old' in c.lsub('""', "*")[1]
    assert c.unsubscribe("Old")[0] == "OK"
    assert c.delete("Old")[0] == "OK"
    assert c.delete("INBOX")[0] == "NO"
    assert c.select("Nope")[0] == "NO"
    # Unicode names travel as modified UTF-7.
    assert c.create("&AOQ-rger")[0] == "OK"
    assert b'"." &AOQ-rger' in b" ".join(c.list('""', "&AOQ-*")[1])
    typ, data = c.namespace()
    assert data == [b'(("" ".")) NIL NIL']
    for bad in ('"a..b"', '"a/b"', '"../etc"', '"x\\\\y"'):
        typ, data = c._simple_command("CREATE", bad)
        assert typ == "NO", bad
    c.logout()


def test_rename_inbox_moves_messages(imapd):
    c = imapd.client()
    c.append("INBOX", None, None, MSG)
    assert c.rename("INBOX", "Saved")[0] == "OK"
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b"INBOX (MESSAGES 0)"
    assert c.status("Saved", "(MESSAGES)")[1][0] == b"Saved (MESSAGES 1)"
    c.logout()


def test_examine_is_read_only(imapd):
    c = imapd.client()
    c.append("INBOX", None, None, MSG)
    typ, data = c.select("INBOX", readonly=True)
    assert typ == "OK" and "READ-ONLY" in c.untagged_responses
    typ, data = c.fetch("1", "(BODY[])")
    assert data[0][1] == MSG
    assert c.store("1", "+FLAGS", r"\Seen")[0] == "NO"
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    c.logout()


def test_id_enable_unselect_check_close(imapd):
    c = imapd.client()
    typ, data = c.xatom("ID", '("name" "pytest")')
    assert typ == "OK" and b'"postroom"' in c.untagged_responses["ID"][0]
    assert c.xatom("ENABLE", "CONDSTORE")[0] == "OK"
    c.append("INBOX", r"(\Deleted)", None, MSG)
    c.select("INBOX")
    assert c.check()[0] == "OK"
    assert c._simple_command("UNSELECT")[0] == "OK"
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b"INBOX (MESSAGES 1)"
    c.select("INBOX")
    assert c.close()[0] == "OK"
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b"INBOX (MESSAGES 0)"
    c.logout()


def test_delivery_by_the_mda_is_seen(imapd):
    c = imapd.client()
    c.select("INBOX")
    MailStore(imapd.maildir()).deliver(MSG)
    typ, data = c.noop()
    assert c.untagged_responses.get("EXISTS")[-1] == b"1"
    c.logout()


def test_store_variants_and_keywords(imapd):
    c = imapd.client()
    for _ in range(2):
        c.append("INBOX", r"(\Seen)", None, MSG)
    c.select("INBOX")
    typ, data = c.store("1:2", "FLAGS", r"(\Answered NewKeyword)")
    assert all(b"\\Answered NewKeyword" in d for d in data)
    assert any(b"NewKeyword" in f for f in c.untagged_responses.get("FLAGS", [])), c.untagged_responses
    typ, data = c.store("1", "-FLAGS", r"(\Answered)")
    assert data == [b"1 (FLAGS (NewKeyword \\Recent))"]  # appended, first SELECT: \Recent
    typ, data = c.store("2", "+FLAGS.SILENT", r"(\Flagged)")
    assert typ == "OK" and data == [None]
    typ, data = c.fetch("2", "(FLAGS)")
    assert data == [b"2 (FLAGS (\\Answered \\Flagged NewKeyword \\Recent))"]
    with pytest.raises(imaplib.IMAP4.error, match="Invalid system flag"):
        c.store("1", "+FLAGS", r"(\Bogus)")
    c.logout()


def test_move_by_sequence_number_and_expunge_order(imapd):
    c = imapd.client()
    for _ in range(5):
        c.append("INBOX", None, None, MSG)
    c.select("INBOX")
    typ, data = c._simple_command("MOVE", "2,4", "Trash")
    assert typ == "OK"
    assert sorted(c.untagged_responses.pop("EXPUNGE")) == [b"2", b"4"]
    typ, data = c.uid("FETCH", "1:*", "(UID)")
    assert data == [b"1 (UID 1)", b"2 (UID 3)", b"3 (UID 5)"]
    c.logout()


def test_authenticate_plain_with_initial_response_and_literal_plus(imapd):
    import base64
    import socket
    s = socket.create_connection(("127.0.0.1", imapd.port), timeout=5)
    f = s.makefile("rb")
    assert f.readline().startswith(b"* OK")
    blob = base64.b64encode(b"\0" + imapd.user.encode() + b"\0postroom")
    s.sendall(b"a AUTHENTICATE PLAIN " + blob + b"\r\n")
    assert f.readline().startswith(b"a OK [CAPABILITY IMAP4rev1")
    # LITERAL+: no continuation needed, several commands in one write.
    s.sendall(b"b APPEND INBOX {%d+}\r\n%s\r\nc SELECT INBOX\r\nd LOGOUT\r\n" % (len(MSG), MSG))
    rest = b""
    while not rest.endswith(b"d OK Logout completed\r\n"):
        chunk = s.recv(65536)
        assert chunk, rest
        rest += chunk
    lines = rest.split(b"\r\n")
    assert lines[0].startswith(b"b OK [APPENDUID")
    assert b"* 1 EXISTS" in lines and b"* BYE Logging out" in lines
    assert [x[:1] for x in lines if x[:1] in (b"b", b"c", b"d")] == [b"b", b"c", b"d"]
    s.close()


def test_quota_enforced_on_append_and_copy(imapd_server):
    c = imapd_server.client("quota@example.test")
    body = b"Subject: q\r\n\r\n" + b"x" * 700 + b"\r\n"
    assert c.append("INBOX", None, None, body)[0] == "OK"
    assert c.append("INBOX", None, None, body)[0] == "OK"
    typ, data = c.append("INBOX", None, None, body)
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    c.select("INBOX")
    typ, data = c.copy("1", "Trash")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]")
    # MOVE does not add to the usage.
    assert c._simple_command("MOVE", "1", "Trash")[0] == "OK"
    c.logout()


def _rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def test_client_that_does_not_read_gets_no_unbounded_output_buffer(imapd):
    import socket
    import time
    c = imapd.client()
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 100  # about 100 KB
    c.append("INBOX", None, None, big)
    c.logout()
    pid = imapd.daemon.proc.pid
    s = socket.create_connection(("127.0.0.1", imapd.port), timeout=10)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
    s.sendall(b"l LOGIN %s postroom\r\ns SELECT INBOX\r\n" % imapd.user.encode())
    time.sleep(0.3)
    before = _rss_kib(pid)
    commands = 200  # 20 MB of answers
    s.sendall(b"".join(b"f%d FETCH 1 BODY.PEEK[]\r\n" % i for i in range(commands)))
    time.sleep(1.5)
    grown = _rss_kib(pid) - before
    assert grown < 5 * 1024, f"daemon grew by {grown} KiB while the client did not read"
    # Reading now gets every answer, in order.
    received = bytearray()
    done = b"f%d OK Fetch completed\r\n" % (commands - 1)
    deadline = time.monotonic() + 30
    while not received.endswith(done) and time.monotonic() < deadline:
        chunk = s.recv(1 << 20)
        assert chunk
        received += chunk
    assert received.count(b" OK Fetch completed\r\n") == commands
    s.close()


def test_uid_expunge_leaves_other_deleted_messages(imapd):
    c = imapd.client()
    for _ in range(5):
        c.append("INBOX", r"(\Deleted)", None, MSG)
    c.select("INBOX")
    typ, data = c.uid("EXPUNGE", "2,4")
    assert typ == "OK"
    view = [1, 2, 3, 4, 5]
    for number in c.untagged_responses.pop("EXPUNGE"):  # each renumbers the ones after it
        del view[int(number) - 1]
    assert view == [1, 3, 5]
    typ, data = c.uid("FETCH", "1:*", "(FLAGS)")
    assert data == [b"1 (UID 1 FLAGS (\\Deleted \\Recent))", b"2 (UID 3 FLAGS (\\Deleted \\Recent))",
                    b"3 (UID 5 FLAGS (\\Deleted \\Recent))"]
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b"INBOX (MESSAGES 3)"
    c.logout()


def test_append_internaldate_round_trips(imapd):
    """The date APPEND is given is the INTERNALDATE FETCH reports. The maildir keeps
    it as the file's time, so a zone other than +0000 comes back as the same instant
    in +0000 (as with Dovecot's maildirs)."""
    dates = ['"17-Jul-1996 02:44:25 +0000"', '"31-Dec-1969 23:59:59 +0000"', '"01-Mar-2040 12:00:00 +0000"',
             '" 4-Oct-2024 07:05:09 -0700"', '"29-Feb-2024 23:30:00 +0530"']
    c = imapd.client()
    for date in dates:
        assert c.append("INBOX", None, date, MSG)[0] == "OK"
    c.select("INBOX")
    typ, data = c.fetch("1:*", "(INTERNALDATE)")
    got = [re.search(rb'INTERNALDATE ("[^"]+")', line).group(1).decode() for line in data]
    assert got[:3] == dates[:3]
    assert got[3:] == ['"04-Oct-2024 14:05:09 +0000"', '"29-Feb-2024 18:00:00 +0000"']
    for date, line in zip(dates, data):
        assert imaplib.Internaldate2tuple(line) == imaplib.Internaldate2tuple(
            b"INTERNALDATE " + date.replace(" 4-", "04-").encode())
    c.logout()


def test_authenticate_login(imapd):
    c = imapd.client(user=None)
    answers = iter([imapd.user.encode(), b"postroom"])
    challenges = []

    def respond(challenge):
        challenges.append(challenge)
        return next(answers)
    typ, data = c.authenticate("LOGIN", respond)
    assert typ == "OK" and challenges == [b"Username:", b"Password:"]
    assert c.select("INBOX")[0] == "OK"
    c.logout()
    c = imapd.client(user=None)
    answers = iter([imapd.user.encode(), b"wrong"])
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.authenticate("LOGIN", lambda challenge: next(answers))
    c.logout()


@pytest.mark.parametrize("name", [b"a\x01b", b"tab\there", b"del\x7f", b"Sub.\x1b[31m"])
def test_mailbox_name_with_control_character_in_a_literal_refused(imapd, name):
    c = imapd.client()
    c.literal = name
    typ, data = c._simple_command("CREATE")
    assert (typ, data) == ("NO", [b"[CANNOT] Invalid mailbox name"])
    c.literal = name
    assert c._simple_command("SELECT")[0] == "NO"
    folders = sorted(p.name for p in imapd.maildir().iterdir() if p.name.startswith("."))
    assert folders == [".Archive", ".Drafts", ".Junk", ".Sent", ".Trash"]
    assert c.noop()[0] == "OK"
    c.logout()


def test_storage_failure_is_a_generic_no_without_paths(imapd):
    """A folder whose new/ is a file cannot be scanned: the client gets NO
    [UNAVAILABLE] with no path in it, the log gets the detail, the session goes on."""
    c = imapd.client()
    assert c.create("Broken")[0] == "OK"
    assert c.append("Broken", None, None, MSG)[0] == "OK"
    new = imapd.maildir() / ".Broken" / "new"
    new.rmdir()
    new.write_bytes(b"not a directory")
    answers = [c.select("Broken"), c._simple_command("STATUS", "Broken", "(MESSAGES)"),
               c.append("Broken", None, None, MSG)]
    for typ, data in answers:
        assert (typ, data) == ("NO", [b"[UNAVAILABLE] Temporary failure, try again later"])
    assert f"Not a directory: '{new}'" in imapd.daemon.output()  # the detail is logged
    assert c.select("INBOX")[0] == "OK"
    c.logout()
