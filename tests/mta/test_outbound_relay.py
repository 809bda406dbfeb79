"""Relaying through a smarthost: AUTH over TLS with credentials from a file only the
MTA may read, the TLS levels encrypt and verify, and a loose credentials file refused."""

from __future__ import annotations

from tests.support import wait_for
from tests.support.dnsserver import DnsServer

from .queue_sink import Sink, mta_config, sink_config, spool_files, spool_message, start_queue, tls_sink


def _relay_setup(tmp_path, sink, mode=0o600, extra=""):
    etc = sink_config(tmp_path, sink.port, f"""
        relay_credentials: relay-passwords
        retry_first: 1h
        {extra}
    """)
    creds = etc / "relay-passwords"
    creds.write_text(f"# next hop, user, password\n[127.0.0.3]:{sink.port} relayuser s3cret with spaces\n")
    creds.chmod(mode)
    return etc


def test_smarthost_auth_over_tls(tmp_path):
    with tls_sink(tmp_path, auth={"relayuser": "s3cret with spaces"}) as sink:
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


def test_credentials_file_readable_by_others_or_owned_by_another_user_stops_the_start(tmp_path):
    """Only the MTA's user may read the relay passwords: anything else is a configuration
    error at start (exit 78, naming the file and the reason)."""
    import os
    import subprocess
    import sys

    with Sink("127.0.0.3") as sink:
        etc = _relay_setup(tmp_path, sink, mode=0o640)
        creds = etc / "relay-passwords"

        def start():
            return subprocess.run([sys.executable, "-m", "mta.queue", "--config", str(etc)], capture_output=True,
                                  text=True, timeout=30)

        r = start()
        assert r.returncode == 78, r.stderr
        assert "mta.yaml: queue.relay_credentials:" in r.stderr and str(creds) in r.stderr
        assert "accessible to its group or others (mode 0640)" in r.stderr
        creds.chmod(0o600)
        if os.geteuid() == 0:
            os.chown(creds, 65534, -1)
            r = start()
            assert r.returncode == 78 and "belongs to uid 65534" in r.stderr, r.stderr
        assert sink.connections == 0


def test_credentials_file_made_loose_is_refused_on_reload(tmp_path):
    import signal
    import time

    with tls_sink(tmp_path, auth={"relayuser": "s3cret with spaces"}) as sink:
        etc = _relay_setup(tmp_path, sink)
        spool = tmp_path / "spool"
        q = start_queue(etc)
        try:
            (etc / "relay-passwords").chmod(0o644)
            q.signal(signal.SIGHUP)
            time.sleep(0.5)                  # the reload happens in the reactor, at once
            qid = spool_message(spool, "alice@example.test", ["far@away.test"])
            wait_for(lambda: qid in spool_files(spool, "deferred"), 10, what="deferral")
            from common.spool import parse
            r = parse(spool / "deferred" / qid).envelope.recipients[0]
            assert r.status == "4.7.0" and "relay credentials file unusable" in r.reason
            assert sink.messages == [] and sink.connections == 0
            assert "accessible to its group or others" in q.output()
        finally:
            q.stop()


def test_tls_verify_checks_name_and_chain(tmp_path):
    with DnsServer({"mail.example.test": {"A": ["127.0.0.3"]}}) as dns, tls_sink(tmp_path) as sink:
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
