"""The connection state machine with bytes in and bytes out, over a real maildir:
states, capabilities, pipelining order, STARTTLS discarding, untagged updates only
where RFC 3501 7.4.1 allows them."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from common.storage import MailStore
from imapd.parser import Limits
from imapd.protocol import CheckPassword, Close, ImapConnection, Settings, StartTLS, Watch

MESSAGE = b"From: Alice <alice@example.test>\r\nTo: bob@example.test\r\nSubject: hi\r\n\r\nHello\r\n"


@dataclass
class User:
    name: str


class Driver:
    """Runs a connection, answering the glue's actions the way the glue would."""

    def __init__(self, tmp_path, secure=False, tls=True, plaintext=None, limits=Limits()):
        self.root = tmp_path / "Maildir"
        self.store = MailStore(self.root)
        settings = Settings(
            hostname="imap.test", limits=limits, tls_available=tls, secure=secure,
            plaintext_allowed=plaintext or (lambda secure: secure),
            open_store=lambda user: MailStore(self.root),
            special_use_defaults={"Drafts": "\\Drafts", "Sent": "\\Sent", "Trash": "\\Trash"},
        )
        self.conn = ImapConnection(settings)
        self.actions: list = []
        self.greeting = b"".join(self.conn.greeting())

    def handle(self, outputs) -> bytes:
        data = b""
        for item in outputs:
            if isinstance(item, bytes):
                data += item
            elif isinstance(item, CheckPassword):
                self.actions.append(item)
                ok = item.password == "secret"
                data += self.handle(self.conn.password_checked(User(item.username) if ok else None))
            elif isinstance(item, StartTLS):
                self.actions.append(item)
                data += self.handle(self.conn.tls_started())
            else:
                self.actions.append(item)
        return data

    def send(self, data: bytes) -> bytes:
        return self.handle(self.conn.receive(data))

    def login(self):
        out = self.send(b"L LOGIN alice secret\r\n")
        assert b"L OK" in out, out
        return out


def test_greeting_and_capabilities_change_with_tls_and_login(tmp_path):
    d = Driver(tmp_path)
    assert d.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1")
    assert b"STARTTLS" in d.greeting and b"LOGINDISABLED" in d.greeting and b"AUTH=PLAIN" not in d.greeting
    out = d.send(b"a LOGIN alice secret\r\n")
    assert out == b"a NO [PRIVACYREQUIRED] Plaintext authentication is disabled, use STARTTLS\r\n"
    out = d.send(b"b STARTTLS\r\n")
    assert out == b"b OK Begin TLS negotiation now\r\n"
    out = d.send(b"c CAPABILITY\r\n")
    assert b"STARTTLS" not in out and b"AUTH=PLAIN" in out and b"LOGINDISABLED" not in out
    out = d.login()
    assert b"[CAPABILITY IMAP4rev1" in out and b"UIDPLUS" in out and b"AUTH=PLAIN" not in out


def test_starttls_discards_pipelined_plaintext(tmp_path):
    d = Driver(tmp_path)
    out = d.send(b"a STARTTLS\r\nb LOGIN alice secret\r\nc CAPABILITY\r\n")
    assert out == b"a OK Begin TLS negotiation now\r\n"
    assert not any(isinstance(a, CheckPassword) for a in d.actions)
    assert d.conn.state.name == "NOT_AUTHENTICATED"


def test_pipelined_commands_answered_in_order_across_async_login(tmp_path):
    d = Driver(tmp_path, secure=True)
    out = d.send(b"1 LOGIN alice secret\r\n2 SELECT INBOX\r\n3 NOOP\r\n4 LOGOUT\r\n")
    tags = [line.split(b" ")[0] for line in out.split(b"\r\n") if line and not line.startswith(b"*")]
    assert tags == [b"1", b"2", b"3", b"4"]
    assert isinstance(d.actions[-1], Close)


def test_login_failure_and_disconnect_after_three(tmp_path):
    d = Driver(tmp_path, secure=True)
    for i in range(2):
        assert d.send(b"x LOGIN alice wrong\r\n") == b"x NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
    out = d.send(b"x LOGIN alice wrong\r\n")
    assert out.endswith(b"* BYE Too many authentication failures\r\n")
    assert isinstance(d.actions[-1], Close)


def test_authenticate_plain_with_and_without_initial_response(tmp_path):
    import base64
    d = Driver(tmp_path, secure=True)
    blob = base64.b64encode(b"\0alice\0secret")
    assert b"A OK [CAPABILITY" in d.send(b"A AUTHENTICATE PLAIN " + blob + b"\r\n")
    d = Driver(tmp_path, secure=True)
    assert d.send(b"B AUTHENTICATE PLAIN\r\n") == b"+ \r\n"
    assert b"B OK" in d.send(blob + b"\r\n")
    d = Driver(tmp_path, secure=True)
    assert d.send(b"C AUTHENTICATE LOGIN\r\n") == b"+ VXNlcm5hbWU6\r\n"
    assert d.send(base64.b64encode(b"alice") + b"\r\n") == b"+ UGFzc3dvcmQ6\r\n"
    assert b"C OK" in d.send(base64.b64encode(b"secret") + b"\r\n")
    d = Driver(tmp_path, secure=True)
    d.send(b"D AUTHENTICATE PLAIN\r\n")
    assert d.send(b"*\r\n") == b"D BAD Authentication cancelled\r\n"
    assert d.send(b"E NOOP\r\n") == b"E OK NOOP completed\r\n"


def test_wrong_state_and_unknown_commands(tmp_path):
    d = Driver(tmp_path, secure=True)
    assert d.send(b"a SELECT INBOX\r\n") == b"a BAD Log in first\r\n"
    assert d.send(b"b FROB\r\n") == b"b BAD Unknown command\r\n"
    d.login()
    assert d.send(b"c FETCH 1 FLAGS\r\n") == b"c BAD No mailbox selected\r\n"
    assert d.send(b"d LOGIN a b\r\n") == b"d BAD Already authenticated\r\n"
    assert d.send(b"e NOOP extra\r\n") == b"e BAD Unexpected extra arguments\r\n"


def test_special_use_folders_created_at_first_login(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    out = d.send(b'l LIST "" "*"\r\n')
    assert b'* LIST (\\HasNoChildren \\Drafts) "." Drafts\r\n' in out
    assert b'* LIST (\\HasNoChildren \\Trash) "." Trash\r\n' in out
    assert b'* LIST (\\HasNoChildren) "." INBOX\r\n' in out


def test_expunge_by_another_session_waits_for_a_command_that_allows_it(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    for _ in range(3):
        d.store.deliver(MESSAGE)
    d.send(b"s SELECT INBOX\r\n")
    other = MailStore(d.root).open_mailbox("INBOX")
    other.store([2], ["\\Deleted"], "add")
    assert other.expunge() == [2]
    # FETCH uses sequence numbers: no EXPUNGE now, the numbers keep their meaning.
    out = d.send(b"f FETCH 1:3 (UID)\r\n")
    assert b"EXPUNGE" not in out
    assert b"* 3 FETCH (UID 3)" in out and b"* 1 FETCH (UID 1)" in out
    # UID FETCH may receive it.
    out = d.send(b"u UID FETCH 1:* (FLAGS)\r\n")
    assert b"* 2 EXPUNGE\r\n" in out
    out = d.send(b"n FETCH 2 (UID)\r\n")
    assert b"* 2 FETCH (UID 3)" in out


def test_new_mail_and_flag_changes_reported_at_noop(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    d.store.deliver(MESSAGE)
    d.send(b"s SELECT INBOX\r\n")
    d.store.deliver(MESSAGE)
    other = MailStore(d.root).open_mailbox("INBOX")
    other.store([1], ["\\Flagged"], "add")
    out = d.send(b"n NOOP\r\n")
    assert b"* 2 EXISTS\r\n" in out
    assert b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))\r\n" in out


def test_idle_reports_changes_and_done_ends_it(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    d.send(b"s SELECT INBOX\r\n")
    out = d.send(b"i IDLE\r\n")
    assert out == b"+ idling\r\n"
    assert isinstance(d.actions[-1], Watch)
    d.store.deliver(MESSAGE)
    assert b"* 1 EXISTS\r\n" in d.handle(d.conn.mailbox_changed())
    assert d.send(b"DONE\r\n") == b"i OK Idle completed\r\n"


def test_literal_limit_keeps_connection(tmp_path):
    d = Driver(tmp_path, secure=True, limits=Limits(max_literal=1000))
    d.login()
    assert d.send(b"a APPEND INBOX {5000}\r\n") == b"a NO [TOOBIG] Literal too big\r\n"
    out = d.send(b"b APPEND INBOX {%d}\r\n" % len(MESSAGE))
    assert out == b"+ Ready for literal data\r\n"
    out = d.send(MESSAGE + b"\r\n")
    assert out.startswith(b"b OK [APPENDUID ")


@pytest.mark.parametrize("name", [b"a..b", b'"a/b"', b'"../x"', b'"x\\\\y"', b".hidden", b"{3}\r\na\x01b"])
def test_bad_mailbox_names_refused(tmp_path, name):
    d = Driver(tmp_path, secure=True)
    d.login()
    out = d.send(b"c CREATE " + name + b"\r\n").removeprefix(b"+ Ready for literal data\r\n")
    assert out.startswith(b"c NO [CANNOT] Invalid mailbox name") or out.startswith(b"c BAD"), out
    assert sorted(p.name for p in d.root.iterdir() if p.name.startswith(".")) == [".Drafts", ".Sent", ".Trash"]


def test_recent_new_and_old(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    d.store.deliver(MESSAGE)
    d.store.deliver(MESSAGE)
    out = d.send(b"s SELECT INBOX\r\n")
    assert b"* 2 RECENT\r\n" in out
    d.send(b"t STORE 2 +FLAGS.SILENT (\\Seen)\r\n")
    assert b"* SEARCH 1 2\r\n" in d.send(b"a SEARCH RECENT\r\n")
    assert b"* SEARCH 1\r\n" in d.send(b"b SEARCH NEW\r\n")
    assert b"* SEARCH\r\n" in d.send(b"c SEARCH OLD\r\n")
    assert b"\\Recent" in d.send(b"f FETCH 1 FLAGS\r\n")
    # A second session does not see them as recent (RFC 3501 2.3.2).
    other = Driver(tmp_path, secure=True)
    other.login()
    assert b"* 0 RECENT\r\n" in other.send(b"s SELECT INBOX\r\n")


def test_append_and_copy_to_missing_mailbox_say_trycreate(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    out = d.send(b"a APPEND Nope {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
    assert out == b"a NO [TRYCREATE] Mailbox does not exist\r\n"
    d.store.deliver(MESSAGE)
    d.send(b"s SELECT INBOX\r\n")
    assert d.send(b"c COPY 1 Nope\r\n") == b"c NO [TRYCREATE] Mailbox does not exist\r\n"
    assert d.send(b"e EXAMINE Nope\r\n") == b"e NO [NONEXISTENT] Mailbox does not exist\r\n"
    assert d.conn.state.name == "AUTHENTICATED"


def test_selected_mailbox_deleted_elsewhere_ends_the_session(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    d.store.create_mailbox("Box")
    d.store.deliver(MESSAGE, "Box")
    d.send(b"s SELECT Box\r\n")
    d.store.delete_mailbox("Box")
    out = d.send(b"n NOOP\r\n")
    assert out.endswith(b"n OK NOOP completed\r\n* BYE Selected mailbox was deleted, have to disconnect\r\n")
    assert isinstance(d.actions[-1], Close)


def test_append_to_selected_mailbox_reports_exists_and_recent(tmp_path):
    d = Driver(tmp_path, secure=True)
    d.login()
    d.send(b"s SELECT INBOX\r\n")
    out = d.send(b"a APPEND INBOX (\\Seen) {%d+}\r\n%s\r\n" % (len(MESSAGE), MESSAGE))
    assert b"* 1 EXISTS\r\n* 1 RECENT\r\n" in out and out.endswith(b"] Append completed\r\n")
    assert b"FLAGS (\\Seen \\Recent)" in d.send(b"f FETCH 1 FLAGS\r\n")
