"""Relaying through a smarthost: AUTH over TLS with credentials from a file only the
MTA may read, the TLS levels encrypt and verify, and a loose credentials file refused."""

from __future__ import annotations

from tests.support import wait_for
from tests.support.dnsserver import DnsServer

from .queue_sink import Sink, mta_config, spool_files, spool_message, start_queue


def _relay_setup(tmp_path, sink, mode=0o600, extra=""):
    etc = mta_config(tmp_path, f"""
        transports:
          "*": "smtp:[127.0.0.3]:{sink.port}"
        relay_credentials: relay-passwords
        retry_first: 1h
        {extra}
    """)
    creds = etc / "relay-passwords"
    creds.write_text(f"# next hop, user, password\n[127.0.0.3]:{sink.port} relayuser s3cret with spaces\n")
    creds.chmod(mode)
    return etc


def test_smarthost_auth_over_tls(tmp_path):
    etc = tmp_path / "etc"
    with Sink("127.0.0.3", certfile=str(etc / "cert.pem"), keyfile=str(etc / "key.pem"),
              auth={"relayuser": "s3cret with spaces"}) as sink:
        etc = _relay_setup(tmp_path, sink)
        spool = tmp_path / "spool"
        spool_message(spool, "alice@example.test", ["far@away.test"])
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.tls and got.auth == "relayuser" and got.recipients == ["far@away.test"]
            wait_for(lambda: not spool_files(spool, "active"), 10, what="done")
            assert "s3cret" not in q.output()
        finally:
            q.stop()


def test_no_password_without_tls_and_no_loose_credentials_file(tmp_path):
    # The relay offers no STARTTLS: with credentials the level is at least encrypt, so defer.
    with Sink("127.0.0.3", auth={"relayuser": "s3cret with spaces"}) as sink:
        etc = _relay_setup(tmp_path / "a", sink)
        spool = tmp_path / "a" / "spool"
        qid = spool_message(spool, "alice@example.test", ["far@away.test"])
        q = start_queue(etc)
        try:
            wait_for(lambda: qid in spool_files(spool, "deferred"), 10, what="deferral")
            assert sink.messages == []
            from common.spool import parse
            r = parse(spool / "deferred" / qid).envelope.recipients[0]
            assert r.status == "4.7.4" and "TLS is required" in r.reason
        finally:
            q.stop()
    etc_dir = tmp_path / "b" / "etc"
    with Sink("127.0.0.3", certfile=str(tmp_path / "a" / "etc" / "cert.pem"),
              keyfile=str(tmp_path / "a" / "etc" / "key.pem"), auth={"relayuser": "s3cret with spaces"}) as sink:
        etc = _relay_setup(tmp_path / "b", sink, mode=0o644)
        assert etc == etc_dir
        spool = tmp_path / "b" / "spool"
        qid = spool_message(spool, "alice@example.test", ["far@away.test"])
        q = start_queue(etc)
        try:
            wait_for(lambda: qid in spool_files(spool, "deferred"), 10, what="deferral")
            assert sink.messages == [] and sink.connections == 0
            assert "readable or writable by others" in q.output()
        finally:
            q.stop()


def test_tls_verify_checks_name_and_chain(tmp_path):
    etc = tmp_path / "etc"
    with DnsServer({"mail.example.test": {"A": ["127.0.0.3"]}}) as dns, \
            Sink("127.0.0.3", certfile=str(etc / "cert.pem"), keyfile=str(etc / "key.pem")) as sink:
        dns_yaml = f"dns:\n  nameservers: [127.0.0.1]\n  port: {dns.port}\n"
        etc = mta_config(tmp_path, f"""
            transports:
              good.test: "smtp:[mail.example.test]:{sink.port}"
              bad.test: "smtp:[127.0.0.3]:{sink.port}"
            tls: verify
            tls_ca_file: cert.pem
            retry_first: 1h
        """, dns_yaml)
        spool = tmp_path / "spool"
        spool_message(spool, "alice@example.test", ["x@good.test"])
        bad = spool_message(spool, "alice@example.test", ["y@bad.test"])
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.tls and got.recipients == ["x@good.test"]
            # The certificate names mail.example.test, not 127.0.0.3: refused, deferred.
            wait_for(lambda: bad in spool_files(spool, "deferred"), 10, what="deferral of the bad name")
            assert len(sink.messages) == 1
        finally:
            q.stop()


def test_opportunistic_tls_that_fails_falls_back_to_plain_text(tmp_path):
    with Sink("127.0.0.3", broken_tls=True) as sink:
        etc = mta_config(tmp_path, f"""
            transports:
              may.test: "smtp:[127.0.0.3]:{sink.port}"
              must.test: "smtp:[127.0.0.3]:{sink.port}"
            tls: may
            tls_policy:
              must.test: encrypt
            retry_first: 1h
        """)
        spool = tmp_path / "spool"
        spool_message(spool, "alice@example.test", ["x@may.test"])
        must = spool_message(spool, "alice@example.test", ["y@must.test"])
        q = start_queue(etc)
        try:
            (got,) = sink.wait_for(1)
            assert got.recipients == ["x@may.test"] and not got.tls
            wait_for(lambda: must in spool_files(spool, "deferred"), 10, what="encrypt: deferred, not plain")
            assert len(sink.messages) == 1
        finally:
            q.stop()
