"""SRS: the rewriting itself (byte for byte what postsrsd, a real peer, writes and
reads), and two postroom MTAs on loopback where an alias forwards to the other:
the envelope sender arrives SRS-rewritten, a bounce to the SRS address reaches
the original sender, and a forged or expired SRS address is refused at RCPT."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time

import pytest

from mta.srs import Srs
from tests.support import free_port, require_tool, wait_for, wait_for_port

from .queue_sink import PostroomMta, Sink, receiving_mta_yaml

SECRET = b"correct horse battery staple"
DAY = 86400


def test_round_trip_forms_and_refusals():
    now = 20_000 * DAY + 3600
    srs = Srs("SRS.A.test", [SECRET], clock=lambda: now)
    fwd = srs.forward("carol@c.example")
    assert fwd.startswith("SRS0=") and fwd.endswith("=c.example=carol@srs.a.test")
    assert srs.handles(fwd) and srs.reverse(fwd) == "carol@c.example"
    # Servers on the way may change the case: hash and day still verify.
    assert srs.reverse(fwd.upper().replace("SRS.A.TEST", "srs.a.test")) == "CAROL@C.EXAMPLE"
    # Already forwarded once elsewhere (SRS0 of another domain): SRS1, reversed to that SRS0.
    other = "SRS0=abcd=TT=c.example=carol@fwd.example"
    once = srs.forward(other)
    assert once.startswith("SRS1=") and once.endswith("=fwd.example==abcd=TT=c.example=carol@srs.a.test")
    assert srs.reverse(once) == other
    # An SRS1 keeps the first forwarder's host.
    twice = srs.forward(once.replace("@srs.a.test", "@third.example"))
    assert twice.endswith("=fwd.example==abcd=TT=c.example=carol@srs.a.test") and srs.reverse(twice) == other
    # Not rewritten: our own SRS domain, no domain.
    assert srs.forward("x@srs.a.test") == "x@srs.a.test" and srs.forward("nodomain") == "nodomain"
    # Forged hash, other secret, malformed, another domain: refused.
    forged = fwd.replace(fwd[5:9], "AAAA" if fwd[5:9] != "AAAA" else "BBBB")
    assert srs.reverse(forged) is None
    assert Srs("srs.a.test", [b"another secret"], clock=lambda: now).reverse(fwd) is None
    for bad in ("SRS0=x@srs.a.test", "SRS0==JW=c.example=carol@srs.a.test", "SRS1=abcd=host@srs.a.test",
                fwd.replace("@srs.a.test", "@elsewhere.test"), "carol@srs.a.test"):
        assert srs.reverse(bad) is None, bad
    # Age: 21 days by default, then refused.
    later = Srs("srs.a.test", [SECRET], clock=lambda: now + 21 * DAY)
    assert later.reverse(fwd) == "carol@c.example"
    assert Srs("srs.a.test", [SECRET], clock=lambda: now + 22 * DAY).reverse(fwd) is None
    # Rotation: a new first secret signs, the old one still verifies.
    rotated = Srs("srs.a.test", [b"new secret", SECRET], clock=lambda: now)
    assert rotated.reverse(fwd) == "carol@c.example" and rotated.forward("carol@c.example") != fwd
    assert srs.reverse(rotated.forward("carol@c.example")) is None


def _table(port: int, key: str) -> str:
    """One lookup in a Postfix tcp_table server (postsrsd's protocol)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"get " + key.encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
    return reply.decode().strip()


def test_same_addresses_as_postsrsd(tmp_path):
    """postsrsd (libsrs2's code) is the reference: the same secret and domain give the
    same SRS0 and SRS1 addresses, and each reverses the other's."""
    postsrsd = require_tool("postsrsd")
    secret = tmp_path / "srs.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    fwd_port, rev_port = free_port(), free_port()
    proc = subprocess.Popen([postsrsd, f"-s{secret}", "-dsrs.a.test", "-l127.0.0.1", f"-f{fwd_port}",
                             f"-r{rev_port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(fwd_port, proc=proc)
        wait_for_port(rev_port, proc=proc)
        ours = Srs("srs.a.test", [SECRET])
        senders = ["carol@c.example", "Carol.Mixed+tag@C.Example", "SRS0=abcd=TT=c.example=carol@fwd.example",
                   "SRS1=wxyz=fwd.example==abcd=TT=c.example=carol@other.example"]
        for sender in senders:
            for _attempt in range(2):          # a day may turn between the two rewrites
                theirs = _table(fwd_port, sender)
                mine = ours.forward(sender)
                if theirs == f"200 {mine}":
                    break
            assert theirs == f"200 {mine}", (sender, theirs, mine)
            assert _table(rev_port, mine) == f"200 {ours.reverse(mine)}"
        assert ours.reverse(theirs[4:]) == "SRS0=abcd=TT=c.example=carol@fwd.example"
        forged = "SRS0=AAAA=" + ours.forward("carol@c.example")[10:]
        assert _table(rev_port, forged).startswith("500") and ours.reverse(forged) is None
    finally:
        proc.terminate()
        proc.wait(5)


# --- two postroom MTAs -------------------------------------------------------------

A_HOST, B_HOST, SINK_HOST = "127.0.0.2", "127.0.0.3", "127.0.0.5"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A: local domain a.test, SRS domain srs.a.test, aliases forwarding to B.
    B: local domain b.test, no SRS, an alias forwarding to d.test (a sink that refuses:
    B bounces). c.test (the original senders' domain) is a recording sink."""
    tmp = tmp_path_factory.mktemp("srs")
    a_port, b_port = free_port(A_HOST), free_port(B_HOST)
    refusing = Sink(SINK_HOST, refuse={"gone@d.test": "550 5.1.1 no such user"})
    senders = Sink(SINK_HOST)
    secret = tmp / "srs.secret"
    secret.write_bytes(SECRET + b"\n")
    secret.chmod(0o600)
    with refusing, senders:
        a = PostroomMta(tmp / "a", A_HOST, ["a.test"], {"alice@a.test": "pw"},
                        receiving_mta_yaml(A_HOST, a_port, queue=f"""\
tls: none
bind_address: {A_HOST}
retry_first: 1h
transports:
  b.test: "smtp:[{B_HOST}]:{b_port}"
  c.test: "smtp:[{SINK_HOST}]:{senders.port}"
srs:
  domain: srs.a.test
  secret_file: {secret}
"""))
        (a.etc / "aliases").write_text("fwd: bob@b.test\nfwdbounce: bounceme@b.test\n")
        b = PostroomMta(tmp / "b", B_HOST, ["b.test"], {"bob@b.test": "pw"},
                        receiving_mta_yaml(B_HOST, b_port, queue=f"""\
tls: none
retry_first: 1h
transports:
  d.test: "smtp:[{SINK_HOST}]:{refusing.port}"
  srs.a.test: "smtp:[{A_HOST}]:{a_port}"
"""))
        (b.etc / "aliases").write_text("bounceme: gone@d.test\n")
        b.start(b_port)
        a.start(a_port)
        try:
            yield {"a": a, "b": b, "a_port": a_port, "senders": senders, "refusing": refusing,
                   "srs": Srs("srs.a.test", [SECRET])}
        finally:
            a.stop()
            b.stop()


def _send(host: str, port: int, sender: str, rcpt: str, subject: str) -> None:
    with smtplib.SMTP(host, port, timeout=20) as s:
        s.sendmail(sender, [rcpt], f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                                   f"Message-ID: <{time.time_ns()}@c.test>\r\n\r\nHello.\r\n".encode())


def test_forwarded_mail_arrives_with_an_srs_sender(world):
    b, srs = world["b"], world["srs"]
    _send(A_HOST, world["a_port"], "carol@c.test", "fwd@a.test", "forwarded")
    got = wait_for(lambda: next((f for f in b.files() if b"forwarded" in f.read_message()), None), 20,
                   what="the forwarded message at B")
    sender = got.envelope.sender
    assert sender.startswith("SRS0=") and sender.endswith("=c.test=carol@srs.a.test"), sender
    assert srs.reverse(sender) == "carol@c.test"
    assert got.envelope.client_address == A_HOST
    assert f"sender rewritten to <{sender}> (SRS)" in world["a"].daemon.output()


def test_a_bounce_to_the_srs_address_reaches_the_original_sender(world):
    """B forwards (without SRS) to d.test, which refuses: B bounces to the SRS address;
    A accepts it, reverses it and passes the bounce on to carol@c.test."""
    senders, refusing = world["senders"], world["refusing"]
    _send(A_HOST, world["a_port"], "carol@c.test", "fwdbounce@a.test", "doomed")
    got = senders.wait_for(1, timeout=30)[0]
    assert got.sender == "" and got.recipients == ["carol@c.test"]
    assert b"multipart/report" in got.data and b"gone@d.test" in got.data and b"Status: 5.1.1" in got.data
    assert refusing.messages == [] and refusing.connections >= 1
    log = world["a"].daemon.output()
    assert "to=<carol@c.test> delivered" in log


def test_forged_and_expired_srs_addresses_are_refused_at_rcpt(world):
    srs = world["srs"]
    good = srs.forward("carol@c.test")
    forged = good.replace(good[5:9], "AAAA" if good[5:9] != "AAAA" else "BBBB")
    expired = Srs("srs.a.test", [SECRET], clock=lambda: time.time() - 30 * DAY).forward("carol@c.test")
    with smtplib.SMTP(A_HOST, world["a_port"], timeout=20) as s:
        s.ehlo("client.test")
        assert s.mail("")[0] == 250
        for bad in (forged, expired, "SRS0=nonsense@srs.a.test"):
            code, text = s.rcpt(bad)
            assert (code, text[:5]) == (550, b"5.1.1"), (bad, code, text)
        assert s.rcpt(good)[0] == 250          # the real one is accepted
        s.rset()
