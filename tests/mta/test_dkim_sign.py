"""DKIM signing: which mail is signed, with which keys, and postroom-dkim keygen.
Signatures are checked with dkimpy against the printed TXT record."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import dkim

from common.config.mta_queue import DkimKey
from common.spool import Envelope, Recipient
from mta.dkimsign import Signer
from mta.dkimtool import main as dkim_main

BIN = Path(sys.executable).parent
MESSAGE = (b"From: Alice <alice@example.test>\r\nTo: bob@remote.test\r\nSubject: signed\r\n"
           b"Date: Sun, 22 Nov 2026 01:00:00 +0000\r\nMessage-ID: <1@example.test>\r\n\r\nBody line\r\n")


def keygen(tmp_path, selector, kind, capsys=None):
    """postroom-dkim keygen: as the installed program, or in this process (faster)."""
    args = ["keygen", "example.test", selector, "--type", kind, "--bits", "1024", "--dir", str(tmp_path)]
    if capsys is None:
        r = subprocess.run([BIN / "postroom-dkim", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        out = r.stdout
    else:
        assert dkim_main(args) == 0
        out = capsys.readouterr().out
    record = out.split("IN TXT ")[1].strip()
    txt = "".join(part for part in record.split('"') if part.strip())
    return tmp_path / f"example.test.{selector}.key", txt, out


def env(source="submission", sender="alice@example.test"):
    return Envelope(sender=sender, recipients=[Recipient("bob@remote.test")], source=source)


def test_keygen_writes_a_private_key_and_prints_the_record(tmp_path):
    key, txt, out = keygen(tmp_path, "s1", "rsa")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert txt.startswith("v=DKIM1; k=rsa; p=") and "s1._domainkey.example.test." in out
    assert "algorithm: rsa-sha256" in out
    # Never overwrites an existing key.
    assert dkim_main(["keygen", "example.test", "s1", "--dir", str(tmp_path)]) == 73
    assert dkim_main(["keygen", "example.test"]) == 64


def test_rsa_and_ed25519_signatures_verify(tmp_path, capsys):
    rsa_key, rsa_txt, _ = keygen(tmp_path, "r", "rsa", capsys)
    ed_key, ed_txt, _ = keygen(tmp_path, "e", "ed25519", capsys)
    records = {b"r._domainkey.example.test.": rsa_txt.encode(), b"e._domainkey.example.test.": ed_txt.encode()}
    signer = Signer([DkimKey("example.test", "r", rsa_key), DkimKey("example.test", "e", ed_key, "ed25519-sha256")],
                    ("example.test",))
    header = signer.sign(env(), MESSAGE)
    signed = header + MESSAGE
    assert signed.count(b"DKIM-Signature:") == 2
    d = dkim.DKIM(signed)
    dnsfunc = lambda name, timeout=5: records.get(name if name.endswith(b".") else name + b".", b"")  # noqa: E731
    assert d.verify(idx=0, dnsfunc=dnsfunc) and d.verify(idx=1, dnsfunc=dnsfunc)
    # Oversigned: a second Subject added later breaks the signature.
    tampered = signed.replace(b"Subject: signed\r\n", b"Subject: signed\r\nSubject: added\r\n")
    assert not dkim.verify(tampered, dnsfunc=dnsfunc)


def test_which_mail_is_signed(tmp_path, capsys):
    key, _, _ = keygen(tmp_path, "r", "rsa", capsys)
    signer = Signer([DkimKey("example.test", "r", key)], ("example.test", "sub.example.test"))
    assert signer.wants(env("submission"))
    assert signer.wants(env("sendmail")) and signer.wants(env("local"))
    assert signer.wants(env(sender="carol@sub.example.test"))       # a subdomain signs with the parent's key
    assert not signer.wants(env("smtp"))                            # mail from outside is not ours to sign
    assert not signer.wants(env(sender="x@other.test"))             # no key for that domain
    assert not signer.wants(env(sender=""))
    assert Signer([DkimKey("example.test", "r", key)], ()).wants(env()) is False  # not a local domain
    # An unreadable key is skipped, not fatal.
    broken = Signer([DkimKey("example.test", "x", tmp_path / "missing.key")], ("example.test",))
    assert not broken.wants(env())
