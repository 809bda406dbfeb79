"""Routing without I/O: the transport map, local recipients, TLS levels and the
relay credentials file."""

from __future__ import annotations

import os

import pytest

from common.config.mta_queue import QueueConfig
from common.spool import Recipient
from mta.queue.routing import Credentials, NextHop, Router, parse_transport


def test_parse_transport():
    assert parse_transport("smtp:[mx.example.org]:2525", 25) == NextHop("smtp", "mx.example.org", 2525, False)
    assert parse_transport("smtp:[192.0.2.1]", 25) == NextHop("smtp", "192.0.2.1", 25, False)
    assert parse_transport("smtp:relay.example.org", 25) == NextHop("smtp", "relay.example.org", 25, True)
    assert parse_transport("smtp:relay.example.org:26", 25) == NextHop("smtp", "relay.example.org", 26, True)
    assert parse_transport("smtp:", 25) == NextHop("smtp", "", 25, True)
    assert parse_transport("local:", 25).kind == "local"
    for bad in ("relay.example.org", "lmtp:[x]", "smtp:[x", "smtp:[x]:port", "smtp:[x]:70000"):
        with pytest.raises(ValueError):
            parse_transport(bad, 25)


def test_router_order_local_exact_subdomain_wildcard():
    cfg = QueueConfig(transports={"example.org": "smtp:[mx.example.org]:25", ".example.org": "smtp:[sub-relay]:25",
                                  "partner.test": "smtp:mail.partner.test", "intranet.test": "local:",
                                  "*": "smtp:[smarthost.example.net]:587"})
    r = Router(cfg, ("example.test",))
    assert r.route(Recipient("a@example.test")).kind == "local"
    assert r.route(Recipient("a@alias.test", mailbox="a@example.test")).kind == "local"
    assert r.route(Recipient("a@intranet.test")).kind == "local"
    assert r.route(Recipient("a@Example.ORG")).key == "[mx.example.org]:25"
    assert r.route(Recipient("a@deep.sub.example.org")).key == "[sub-relay]:25"
    hop = r.route(Recipient("a@partner.test"))
    assert hop.mx and hop.host == "mail.partner.test" and hop.key == "mail.partner.test"
    assert r.route(Recipient("a@anywhere.test")).key == "[smarthost.example.net]:587"
    plain = Router(QueueConfig(), ())
    hop = plain.route(Recipient("a@anywhere.test"))
    assert hop.mx and hop.host == "anywhere.test" and hop.port == 25


def test_tls_levels():
    cfg = QueueConfig(tls="may", tls_policy={"bank.test": "verify", "[relay]:587": "none"})
    r = Router(cfg, ())
    assert r.tls_level(NextHop("smtp", "other.test", 25, True, "other.test"), False) == "may"
    assert r.tls_level(NextHop("smtp", "bank.test", 25, True, "bank.test"), False) == "verify"
    # Credentials raise any level below encrypt.
    assert r.tls_level(NextHop("smtp", "relay", 587, False, "x.test"), True) == "encrypt"
    assert r.tls_level(NextHop("smtp", "bank.test", 25, True, "bank.test"), True) == "verify"


def test_credentials_file(tmp_path):
    f = tmp_path / "creds"
    f.write_text("# comment\n[relay.test]:587 user pass word\n\nbroken-line\n")
    f.chmod(0o600)
    c = Credentials(f)
    assert c.lookup(NextHop("smtp", "relay.test", 587, False)) == ("user", "pass word")
    assert c.lookup(NextHop("smtp", "other.test", 587, False)) is None
    for loose in (0o640, 0o604, 0o620):
        f.chmod(loose)
        c.load()
        assert c.error and "accessible to its group or others" in c.error and str(f) in c.error
        assert c.lookup(NextHop("smtp", "relay.test", 587, False)) is None
    f.chmod(0o600)
    c.load()
    assert c.error is None and c.lookup(NextHop("smtp", "relay.test", 587, False))
    other = Credentials(f, uid=os.geteuid() + 4242)       # not the MTA's user's file
    assert other.error and "belongs to uid" in other.error and other.entries == {}


def test_bad_transport_is_a_configuration_error():
    for bad in ("relay.example.org", "lmtp:[x]", "smtp:[x]:port"):
        with pytest.raises(ValueError, match="transports"):
            QueueConfig(transports={"example.org": bad})
    with pytest.raises(ValueError):
        QueueConfig(max_per_destination=0)
