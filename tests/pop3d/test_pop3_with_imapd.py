"""postroom-pop3d and postroom-imapd as processes on the same maildirs, with poplib
and imaplib over real sockets: what POP3 deletes at QUIT reaches an open IMAP session
as ordinary expunges at its next NOOP, and IMAP works on while POP3 holds the lock."""

from __future__ import annotations

import imaplib
import poplib
import re

import pytest

from tests.support import Daemon, free_port

from .pop3_fixtures import PASSWORD, login, pop3d_config, start, store_with


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pop3imap")
    etc, pop3, pop3s = pop3d_config(tmp)
    imap = free_port()
    (etc / "imapd.yaml").write_text(f"""listeners:
  imap:
    endpoint: tcp:{imap}:interface=127.0.0.1
    tls: starttls
""")
    pop3d = start(etc, pop3, pop3s)
    imapd = Daemon("imapd.main", etc).start(wait_ports=(imap,))
    yield tmp, pop3, imap
    for daemon in (pop3d, imapd):
        assert daemon.stop() == 0, daemon.output()
        assert "Traceback" not in daemon.output(), daemon.output()


def imap_login(port: int, user: str) -> imaplib.IMAP4:
    client = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    client.login(user, PASSWORD)
    return client


def flags(fetch_line: bytes) -> set[bytes]:
    """The FLAGS of a FETCH line, \\Recent left out (these tests are not about it)."""
    return set(re.search(rb"FLAGS \(([^)]*)\)", fetch_line).group(1).split()) - {b"\\Recent"}


def bodies(imap: imaplib.IMAP4) -> dict[int, bytes]:
    """{UID: body} of the selected mailbox, in sequence order."""
    typ, data = imap.uid("FETCH", "1:*", "(BODY.PEEK[TEXT])")
    assert typ == "OK", data
    return {int(re.search(rb"UID (\d+)", item[0]).group(1)): item[1] for item in data if isinstance(item, tuple)}


def test_dele_then_quit_reaches_an_open_imap_session_as_expunges(servers):
    tmp, pop3, imap_port = servers
    user = "alice@example.test"
    store_with(tmp, user, 4, "body {i}")
    imap = imap_login(imap_port, user)
    assert imap.select("INBOX") == ("OK", [b"4"])
    uidvalidity = int(imap.response("UIDVALIDITY")[1][0])
    before = bodies(imap)
    client = login(pop3, user, tls="none")
    # POP3 lists by UID, as IMAP numbers them.
    assert [line.split()[1] for line in client.uidl()[1]] == [b"%08x%08x" % (uid, uidvalidity) for uid in before]
    assert client.dele(1).startswith(b"+OK") and client.dele(3).startswith(b"+OK")
    # Nothing happens before QUIT.
    imap.noop()
    assert "EXPUNGE" not in imap.untagged_responses
    assert client.quit().startswith(b"+OK Logging out (2 messages left)")
    typ, _ = imap.noop()
    assert typ == "OK"
    view = [1, 2, 3, 4]
    for number in imap.untagged_responses.pop("EXPUNGE"):  # each renumbers the ones after it
        del view[int(number) - 1]
    assert view == [2, 4]
    assert bodies(imap) == {uid: before[uid] for uid in (2, 4)}
    imap.logout()


def test_imap_works_while_pop3_holds_the_lock(servers):
    tmp, pop3, imap_port = servers
    user = "bob@example.test"
    store_with(tmp, user, 3, "body {i}")
    client = login(pop3, user, tls="none")
    # A second POP3 session is refused, IMAP is not.
    second = poplib.POP3("127.0.0.1", pop3, timeout=10)
    second.user(user)
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    second.close()
    imap = imap_login(imap_port, user)
    assert imap.select("INBOX") == ("OK", [b"3"])
    before = bodies(imap)
    assert imap.store("1", "+FLAGS", r"(\Flagged)")[0] == "OK"
    assert imap.append("INBOX", None, None, b"Subject: from imap\r\n\r\nnew\r\n")[0] == "OK"
    assert imap.store("2", "+FLAGS", r"(\Deleted)")[0] == "OK"
    assert imap.expunge() == ("OK", [b"2"])
    assert imap.create("Kept")[0] == "OK"
    assert imap.copy("1", "Kept")[0] == "OK"
    # POP3 goes on with the listing of its login.
    assert client.stat()[0] == 3
    with pytest.raises(poplib.error_proto, match="removed by another session"):
        client.retr(2)
    assert client.retr(3)[1][-1] + b"\r\n" == before[3]
    assert client.quit().startswith(b"+OK")
    imap.noop()
    # The \Seen of the RETR at QUIT came as an update of the message's flags.
    update = imap.untagged_responses.pop("FETCH")
    assert len(update) == 1 and update[0].startswith(b"2 (UID 3 FLAGS (") and flags(update[0]) == {b"\\Seen"}
    typ, data = imap.fetch("1:*", "(FLAGS)")
    assert [flags(line) for line in data] == [{b"\\Flagged"}, {b"\\Seen"}, set()]
    imap.logout()
    # The next POP3 session lists what IMAP added.
    client = login(pop3, user, tls="none")
    assert client.stat()[0] == 3
    assert client.retr(3)[1][-1] == b"new"
    client.quit()
