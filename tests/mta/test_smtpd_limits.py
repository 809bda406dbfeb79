"""postroom-mta limits over real sockets: connections per client, errors, timeouts,
message rate, recipients and size."""

from __future__ import annotations

import smtplib
import time

import pytest

from .smtpd_fixture import RawClient, greeted, start_mta

MSG = b"From: a@example.org\r\nSubject: limits\r\n\r\nHello.\r\n"

LIMITS = """\
limits:
  max_connections_per_client: 3
  max_errors: 5
  command_timeout: 1s
  data_timeout: 1s
  max_messages_per_client_per_minute: 3
  max_message_size: 10K
  max_recipients: 2
"""


@pytest.fixture(scope="module")
def mta(tmp_path_factory):
    inst = start_mta(tmp_path_factory.mktemp("limits"), extra_yaml=LIMITS)
    time.sleep(0.3)  # let the start-up probe connections close
    yield inst
    inst.daemon.stop()


def test_connections_per_client(mta):
    clients = [RawClient(mta.ports["mx"]) for _ in range(3)]
    for c in clients:
        assert c.reply()[0] == 220
    extra = RawClient(mta.ports["mx"])
    assert extra.reply() == (421, "4.7.0 Too many connections from your address, try again later")
    assert extra.closed_by_peer()
    for c in clients:
        c.close()
    time.sleep(0.3)
    greeted(mta.ports["mx"]).close()


def test_too_many_errors_disconnects(mta):
    c = RawClient(mta.ports["mx"])
    c.reply()
    c.send(b"FOO\r\nBAR\r\nBAZ\r\nQUX\r\nQUUX\r\nNOOP\r\n")
    assert [code for code, _ in c.replies(6)] == [500, 500, 500, 500, 500, 421]
    assert c.closed_by_peer()


def test_command_timeout(mta):
    c = RawClient(mta.ports["mx"])
    c.reply()
    started = time.monotonic()
    assert c.reply() == (421, "4.4.2 Timeout, closing connection")
    assert 0.8 < time.monotonic() - started < 5
    assert c.closed_by_peer()


def test_data_timeout_leaves_nothing_queued(mta):
    before = mta.queued_ids()
    c = RawClient(mta.ports["mx"])
    c.reply()
    c.send(b"EHLO c\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\nSubject: stalled\r\n")
    assert [code for code, _ in c.replies(4)] == [250, 250, 250, 354]
    assert c.reply() == (421, "4.4.2 Timeout, closing connection")
    assert c.closed_by_peer()
    assert mta.queued_ids() == before


def test_recipients_and_size_limits(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        assert s.esmtp_features["size"] == "10240"
        assert s.mail("a@example.org", ["SIZE=20000"])[0] == 552
        s.mail("a@example.org")
        assert s.rcpt("alice@example.test")[0] == 250
        assert s.rcpt("bob@example.test")[0] == 250
        assert s.rcpt("demo@example.test") == (452, b"4.5.3 Too many recipients")
        code, text = s.data(MSG + b"x" * 20000 + b"\r\n")
        assert (code, text) == (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert s.noop()[0] == 250


def test_messages_per_client_per_minute(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        codes = []
        for _ in range(4):
            code, _ = s.mail("a@example.org")
            codes.append(code)
            if code == 250:
                s.rcpt("alice@example.test")
                s.data(MSG)
    # Earlier tests in this module used some of the three MAILs a minute already.
    assert codes[-1] == 450 and 1 <= codes.count(250) <= 3
    assert codes == sorted(codes)  # once refused, refused until the minute is over


def test_vrfy_answers_252_by_default(mta):
    c = RawClient(mta.ports["mx"])
    assert c.reply()[0] == 220
    assert c.cmd(b"EHLO c")[0] == 250
    for who in (b"alice@example.test", b"nobody@example.test", b"x@elsewhere.example"):
        assert c.cmd(b"VRFY " + who) == (252, "2.5.0 Cannot VRFY user, but will accept message and attempt delivery")
    c.close()
