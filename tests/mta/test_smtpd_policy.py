"""Relay and recipient policy over real sockets: trusted networks, relay domains,
catch-all, and the sender-must-be-own-address rule on submission."""

from __future__ import annotations

import smtplib

import pytest

from .smtpd_fixture import client_tls_context, queue_id_of, start_mta

MSG = b"From: a@example.org\r\nSubject: policy\r\n\r\nHello.\r\n"

POLICY = """\
  trusted_networks: [127.0.0.0/8]
  relay_domains: [relay.example]
  catch_all:
    example.test: demo
"""


@pytest.fixture(scope="module")
def mta(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    from tests.support import free_port
    mx, sub = free_port(), free_port()
    listeners = f"""\
  mx:
    endpoint: tcp:{mx}:interface=127.0.0.1
    role: mx
    tls: starttls
  submission:
    endpoint: tcp:{sub}:interface=127.0.0.1
    role: submission
    tls: starttls
    sender_must_be_own: true
"""
    inst = start_mta(tmp, listeners=listeners, recipients_yaml=POLICY)
    yield inst
    inst.daemon.stop()


def test_trusted_network_may_relay_and_relay_domain_accepted(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        s.mail("app@example.test")
        assert s.rcpt("someone@elsewhere.example")[0] == 250
        assert s.rcpt("user@relay.example")[0] == 250
        code, text = s.data(MSG)
    assert code == 250
    env = mta.find(queue_id_of(text)).envelope
    assert [r.address for r in env.recipients] == ["someone@elsewhere.example", "user@relay.example"]


def test_catch_all_takes_unknown_local_users(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["mx"]) as s:
        s.ehlo()
        s.mail("a@example.org")
        assert s.rcpt("whoever@example.test")[0] == 250
        code, text = s.data(MSG)
    (r,) = mta.find(queue_id_of(text)).envelope.recipients
    assert (r.address, r.mailbox, r.original) == ("demo@example.test", "demo@example.test", "whoever@example.test")


def test_sender_must_be_own_address(mta):
    with smtplib.SMTP("127.0.0.1", mta.ports["submission"]) as s:
        s.starttls(context=client_tls_context())
        s.login("alice@example.test", "postroom")
        assert s.mail("bob@example.test") == (553, b"5.7.1 Sender address not owned by the authenticated user")
        assert s.mail("alice+news@example.test")[0] == 250
        s.rset()
        assert s.mail("alice@example.test")[0] == 250
        assert s.rcpt("friend@elsewhere.example")[0] == 250
