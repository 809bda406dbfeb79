"""ssl: listen endpoints (ssl:465:interface=...): a real daemon answers over TLS from
the first byte, with postroom.yaml's certificate or with the files the endpoint names
(privateKey=, certKey=), and SIGHUP reloads those too. Unusable files are one line
naming file, line and key, and exit 78, from the daemon and from postroom-config."""

from __future__ import annotations

import imaplib
import signal
import subprocess
import sys

from cryptography import x509

from common.selfsigned import make_self_signed
from tests.common.daemons import tls_context
from tests.support import ROOT, Daemon, free_port, wait_for
from tests.support.config import base_config


def serial_of(client: imaplib.IMAP4_SSL) -> int:
    return x509.load_der_x509_certificate(client.sock.getpeercert(binary_form=True)).serial_number


def file_serial(path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def imapd_yaml(shared: int, own: int, own_options: str = ":privateKey=own/key.pem:certKey=own/cert.pem") -> str:
    return (f"listeners:\n"
            f"  shared:\n    endpoint: ssl:{shared}:interface=127.0.0.1\n"
            f"  own:\n    endpoint: ssl:{own}:interface=127.0.0.1{own_options}\n")


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(ROOT), timeout=60)


def test_imapd_on_ssl_endpoints_answers_over_tls_and_reloads_the_endpoints_own_files(tmp_path):
    etc = base_config(tmp_path)
    (etc / "own").mkdir()
    own_cert, own_key = etc / "own" / "cert.pem", etc / "own" / "key.pem"
    make_self_signed(own_cert, own_key, "imap.example.test")
    shared, own = free_port(), free_port()
    (etc / "imapd.yaml").write_text(imapd_yaml(shared, own))
    check = run("-m", "common.tools.configtool", "check", "--config", str(etc))
    assert (check.returncode, check.stderr) == (0, ""), check.stderr

    daemon = Daemon("imapd.main", etc).start(wait_ports=(shared, own), timeout=30)
    try:
        # tls was not written: an ssl: endpoint is implicit TLS.
        c = imaplib.IMAP4_SSL("127.0.0.1", shared, ssl_context=tls_context(), timeout=10)
        assert serial_of(c) == file_serial(etc / "cert.pem")  # postroom.yaml's certificate
        assert b"AUTH=PLAIN" in c.capability()[1][0] and b"STARTTLS" not in c.capability()[1][0]
        c.login("alice@example.test", "postroom")
        assert c.select("INBOX")[0] == "OK"
        c.logout()

        c = imaplib.IMAP4_SSL("127.0.0.1", own, ssl_context=tls_context(), timeout=10)
        old = serial_of(c)
        assert old == file_serial(own_cert)  # the endpoint's own certificate
        c.logout()

        make_self_signed(own_cert, own_key, "imap.example.test")
        assert file_serial(own_cert) != old
        daemon.signal(signal.SIGHUP)
        wait_for(lambda: daemon.output().count("TLS certificate reloaded") >= 2, timeout=10,
                 what="both certificates reloaded")
        c = imaplib.IMAP4_SSL("127.0.0.1", own, ssl_context=tls_context(), timeout=10)
        assert serial_of(c) == file_serial(own_cert)
        c.logout()
        c = imaplib.IMAP4_SSL("127.0.0.1", shared, ssl_context=tls_context(), timeout=10)
        assert serial_of(c) == file_serial(etc / "cert.pem")  # the shared one is unchanged
        c.logout()
    finally:
        assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


def one_line_78(result: subprocess.CompletedProcess, prog: str, where: str, *parts: str) -> None:
    assert result.returncode == 78, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"{prog}: {where}"), lines[0]
    for part in parts:
        assert part in lines[0], (part, lines[0])


def test_unusable_files_of_an_ssl_endpoint_are_one_line_and_exit_78(tmp_path):
    etc = base_config(tmp_path)
    (etc / "own").mkdir()
    make_self_signed(etc / "own" / "cert.pem", etc / "own" / "key.pem", "imap.example.test")
    imapd = etc / "imapd.yaml"
    where = f"{imapd}:5: listeners.own.endpoint: "
    cases = [
        (":privateKey=own/missing.pem:certKey=own/cert.pem",
         (f"privateKey={etc / 'own' / 'missing.pem'}: cannot read",)),
        (":privateKey=own/cert.pem:certKey=own/cert.pem",  # a certificate is no key
         (f"privateKey={etc / 'own' / 'cert.pem'}: not a usable PEM private key",)),
        (":privateKey=key.pem:certKey=own/cert.pem",  # postroom.yaml's key, another certificate
         ("privateKey=", "does not match the certificate")),
        (":privateKey=own/key.pem:certKey=own/key.pem",
         (f"certKey={etc / 'own' / 'key.pem'}: not a PEM certificate chain",)),
    ]
    for options, parts in cases:
        imapd.write_text(imapd_yaml(free_port(), free_port(), options))
        one_line_78(run("-m", "imapd.main", "--config", str(etc)), "postroom-imapd", where, *parts)
        one_line_78(run("-m", "common.tools.configtool", "check", "--config", str(etc)), "postroom-config",
                    where, *parts)


def test_ssl_endpoint_mistakes_in_the_file(tmp_path):
    etc = base_config(tmp_path)
    imapd = etc / "imapd.yaml"
    imapd.write_text("listeners:\n  own:\n    endpoint: ssl:993:certKey=cert.pem\n")
    one_line_78(run("-m", "common.tools.configtool", "check", "--config", str(etc)), "postroom-config",
                f"{imapd}:3: listeners.own.endpoint: ", "certKey needs privateKey")
    imapd.write_text("listeners:\n  own:\n    endpoint: ssl:993:sslmethod=TLSv1_METHOD\n")
    one_line_78(run("-m", "imapd.main", "--config", str(etc)), "postroom-imapd",
                f"{imapd}:3: listeners.own.endpoint: ", "unknown option sslmethod")
    imapd.write_text("listeners:\n  own:\n    endpoint: ssl:993\n    tls: starttls\n")
    one_line_78(run("-m", "imapd.main", "--config", str(etc)), "postroom-imapd",
                f"{imapd}:3: listeners.own: ", "an ssl: endpoint is implicit TLS")
