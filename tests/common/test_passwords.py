"""Password schemes against hashes written by other tools: Dovecot's doveadm pw,
openssl passwd, htpasswd and the argon2 CLI, both as fixed vectors and live."""

from __future__ import annotations

import subprocess

import pytest

from common.passwords import (
    MAX_PASSWORD_BYTES, SCHEMES, UnknownScheme, hash_password, scheme_of, split_scheme, verify_password,
)
from tests.support import require_tool

PASSWORD = "correct horse"

# Written once by the named tool with PASSWORD; they must verify forever.
FIXED_VECTORS = {
    "doveadm pw -s ARGON2ID": "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Z5vzSlD8LMr2VutF4Xm4zA$ZeFQ8IFYFjSlXRYOGxtqHDKJ7JPugvAOeJ9MSz2g+j0",
    "doveadm pw -s BLF-CRYPT": "{BLF-CRYPT}$2y$05$pSn/pY0tX0VTMh0lT9YD5uJmYAEbfj/9uhiWVgxnGUOhk8bamyR8O",
    "doveadm pw -s SHA512-CRYPT": "{SHA512-CRYPT}$6$22NNM6CKOTX8wQy5$F9cNyPvRceoPU/8C3.R4HnoF9jTTjv/.DUKYEGbBUDFTymMmAIDk6bIpj..rIeFUXIv2eLyNOPZdBZ9LZz8zi.",
    "doveadm pw -s SHA256-CRYPT": "{SHA256-CRYPT}$5$E2PW8x4KUzG1DlLW$3QvJYA58FT4IXkkxUatmj1XeIHJ9FdIUhPFfatiu503",
    "doveadm pw -s PLAIN": "{PLAIN}correct horse",
    "argon2 postroomsalt1 -id -e": "$argon2id$v=19$m=4096,t=3,p=1$cG9zdHJvb21zYWx0MQ$LiJWXurxsCNMp/5L4QWmEIuVNkjuHj1/ImDK3gzopr4",
    "argon2 postroomsalt1 -id -e -t 2 -m 12 -p 2": "$argon2id$v=19$m=4096,t=2,p=2$cG9zdHJvb21zYWx0MQ$ZHrym5FU6gM81RCXKsL0p7QgSc+CnkXk9ZtpPMX29FM",
    "htpasswd -nbB -C 5": "$2y$05$f9PyqdOY349fIEHohyX1b.eQ8bnRQp1qPlUVGSOvRq6Bzkc9kunIW",
    "openssl passwd -6 -salt fixedsalt16": "$6$fixedsalt16$o/I64ONYIlVWnNrOF7W/QpfxCnc4QNgdhlq/nyPXZlXU8b2EAC1Xa79PAa5/oRQLPO5bibF5ZeaM5bP9RKp7J0",
    "openssl passwd -5 -salt fixedsalt": "$5$fixedsalt$BWGGpMVbs7ffs/P7Ir7xqytlbG/OitDrfcDvolMPSHA",
}


@pytest.mark.parametrize("tool", sorted(FIXED_VECTORS))
def test_fixed_vectors_verify_and_wrong_passwords_do_not(tool):
    stored = FIXED_VECTORS[tool]
    assert verify_password(stored, PASSWORD)
    assert not verify_password(stored, "correct horsE")
    assert not verify_password(stored, PASSWORD + " ")


@pytest.mark.parametrize("tool", ["htpasswd -nbB -C 5", "openssl passwd -6 -salt fixedsalt16",
                                  "openssl passwd -5 -salt fixedsalt", "argon2 postroomsalt1 -id -e"])
def test_bare_crypt_strings_also_verify_with_dovecot_prefixes(tool):
    bare = FIXED_VECTORS[tool]
    scheme = {"$2y$": "BLF-CRYPT", "$6$": "SHA512-CRYPT", "$5$": "SHA256-CRYPT", "$ar": "ARGON2ID"}[bare[:4 if bare[1] == "2" else 3]]
    assert verify_password("{" + scheme + "}" + bare, PASSWORD)
    assert verify_password("{CRYPT}" + bare, PASSWORD)
    assert scheme_of(bare) == scheme


def _run(args, stdin=None):
    return subprocess.run(args, input=stdin, capture_output=True, text=True, timeout=30, check=True).stdout


@pytest.mark.parametrize("password", ["s3cret", "pässwörd mit Leerzeichen", "x" * 100])
def test_openssl_sha_crypt_live(password):
    openssl = require_tool("openssl")
    for flag, scheme in (("-6", "SHA512-CRYPT"), ("-5", "SHA256-CRYPT")):
        stored = _run([openssl, "passwd", flag, "-stdin"], password + "\n").strip()
        assert verify_password(stored, password)
        assert verify_password("{" + scheme + "}" + stored, password)
        assert not verify_password(stored, password[:-1])


def test_htpasswd_bcrypt_live():
    htpasswd = require_tool("htpasswd")
    line = _run([htpasswd, "-nbB", "-C", "5", "someone", "s3cret pw"]).strip()
    stored = line.split(":", 1)[1]
    assert stored.startswith("$2y$05$")
    assert verify_password(stored, "s3cret pw")
    assert verify_password("{BLF-CRYPT}" + stored, "s3cret pw")
    assert not verify_password(stored, "s3cret pW")


def test_argon2_cli_live():
    argon2_cli = require_tool("argon2")
    stored = _run([argon2_cli, "somesaltsomesalt", "-id", "-e", "-t", "2", "-m", "10"], "pw here").strip()
    assert stored.startswith("$argon2id$v=19$")
    assert verify_password(stored, "pw here")
    assert verify_password("{ARGON2ID}" + stored, "pw here")
    assert not verify_password(stored, "pw her")


@pytest.mark.parametrize("scheme", ["ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "PLAIN"])
def test_doveadm_live_both_ways(scheme):
    """Dovecot's own tool writes hashes we verify, and verifies the hashes we write."""
    doveadm = require_tool("doveadm")
    theirs = _run([doveadm, "pw", "-s", scheme, "-p", "tr0ub4dor&3"]).strip()
    assert theirs.startswith("{" + scheme + "}")
    assert verify_password(theirs, "tr0ub4dor&3")
    assert not verify_password(theirs, "tr0ub4dor&4")
    ours = hash_password("tr0ub4dor&3", scheme)
    result = subprocess.run([doveadm, "pw", "-t", ours, "-p", "tr0ub4dor&3"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0 and "(verified)" in result.stdout


@pytest.mark.parametrize("scheme", SCHEMES)
def test_hash_password_round_trip(scheme):
    stored = hash_password("Grüße, 123", scheme)
    assert stored.startswith("{" + scheme + "}")
    assert split_scheme(stored)[0] == scheme
    assert verify_password(stored, "Grüße, 123")
    assert verify_password(stored, "Grüße, 123".encode())
    assert not verify_password(stored, "Grüsse, 123")


def test_hash_parameters_are_the_documented_ones():
    assert hash_password("pw").startswith("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$")
    assert hash_password("pw", "blf-crypt").startswith("{BLF-CRYPT}$2y$10$")
    assert hash_password("pw", "SHA512-CRYPT").count("$") == 3  # 5000 rounds: no rounds= field


def test_bcrypt_uses_the_first_72_bytes_like_crypt_blowfish():
    long = "a" * 72
    stored = hash_password(long + "tail", "BLF-CRYPT")
    assert verify_password(stored, long)
    assert verify_password(stored, long + "other tail")
    assert not verify_password(stored, long[:-1])


def test_bad_input_never_matches_and_never_raises():
    good = FIXED_VECTORS["openssl passwd -6 -salt fixedsalt16"]
    assert not verify_password(good, "")
    assert not verify_password(good, "x" * (MAX_PASSWORD_BYTES + 1))
    assert not verify_password(FIXED_VECTORS["htpasswd -nbB -C 5"], "correct\0horse")
    assert not verify_password("{PLAIN}", "")
    for stored in ("", "*", "!locked", "{MD5}abc", "{SHA512-CRYPT}$5$fixedsalt$BWGG", "{BLF-CRYPT}$2y$05$short",
                   "{ARGON2ID}$argon2id$v=19$m=1,t=1,p=1$$", "$1$md5crypt$xxxxxxxxxxxxxxxxxxxxxx", "{SHA512-CRYPT}"):
        assert verify_password(stored, PASSWORD) is False, stored


def test_plain_is_constant_time_compare_and_exact():
    assert verify_password("{PLAIN}pw", "pw")
    assert verify_password("{plain}pw", "pw")
    assert verify_password("{CLEARTEXT}pw", "pw")
    assert not verify_password("{PLAIN}pw", "pw2")
    assert not verify_password("{PLAIN}pw2", "pw")


def test_hash_password_refuses_what_it_cannot_store():
    with pytest.raises(UnknownScheme):
        hash_password("pw", "MD5")
    for bad in ("", "x" * (MAX_PASSWORD_BYTES + 1), "a\0b"):
        with pytest.raises(ValueError):
            hash_password(bad)
    with pytest.raises(ValueError):
        hash_password("a:b", "PLAIN")


def test_scheme_of():
    assert scheme_of("{CLEAR}x") == "PLAIN"
    assert scheme_of("{sha256-crypt}$5$a$b") == "SHA256-CRYPT"
    with pytest.raises(UnknownScheme):
        scheme_of("{MD5-CRYPT}$1$abc")
    with pytest.raises(UnknownScheme):
        scheme_of("$1$abc$def")


# --- postroom-passwd --------------------------------------------------------------------------

import os
import pty
import select
import sys
import time

from common.config import EX_CONFIG
from common.users import parse_line
from tests.support import ROOT

PASSWD = [sys.executable, "-m", "common.tools.passwd"]


def passwd(*args, stdin="", env=None):
    environment = {k: v for k, v in os.environ.items() if k != "POSTROOM_CONFIG"}
    environment.update(env or {})
    return subprocess.run([*PASSWD, *args], input=stdin, capture_output=True, text=True, timeout=60,
                          cwd=str(ROOT), env=environment)


def test_passwd_hashes_from_argument_and_stdin():
    out = passwd("-s", "SHA512-CRYPT", "-p", "one two")
    assert out.returncode == 0, out.stderr
    stored = out.stdout.strip()
    assert stored.startswith("{SHA512-CRYPT}$6$") and verify_password(stored, "one two")
    out = passwd("-s", "blf-crypt", stdin="from stdin\nsecond line ignored\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{BLF-CRYPT}$2y$") and verify_password(out.stdout.strip(), "from stdin")


def test_passwd_default_scheme_and_user_line():
    out = passwd("-p", "pw", "-u", "Alice@Example.test", "--config", str(ROOT / "no-such-dir"))
    assert out.returncode == EX_CONFIG
    assert "configuration directory not found" in out.stderr
    out = passwd("-p", "pw", "-u", "Alice@Example.test")
    assert out.returncode == 0, out.stderr
    record = parse_line(out.stdout.strip())
    assert record.name == "alice@example.test"
    assert record.password.startswith("{ARGON2ID}$argon2id$") and verify_password(record.password, "pw")


def test_passwd_reads_default_scheme_from_config(tmp_path):
    (tmp_path / "postroom.yaml").write_text("auth:\n  default_scheme: SHA256-CRYPT\n")
    out = passwd("-p", "pw", "--config", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("{SHA256-CRYPT}$5$")
    out = passwd("-p", "pw", env={"POSTROOM_CONFIG": str(tmp_path)})
    assert out.stdout.startswith("{SHA256-CRYPT}$5$")
    assert passwd("-p", "pw", "-s", "SHA512-CRYPT", "--config", str(tmp_path)).stdout.startswith("{SHA512-CRYPT}")
    (tmp_path / "postroom.yaml").write_text("auth:\n  default_scheme: MD5\n")
    out = passwd("-p", "pw", "--config", str(tmp_path))
    assert out.returncode == EX_CONFIG
    assert out.stderr.startswith(f"{tmp_path / 'postroom.yaml'}:2: auth.default_scheme: ")


def test_passwd_test_mode():
    stored = FIXED_VECTORS["openssl passwd -6 -salt fixedsalt16"]
    good = passwd("-t", stored, "-p", PASSWORD)
    assert (good.returncode, good.stdout.strip()) == (0, f"{stored} (verified)")
    bad = passwd("-t", stored, stdin="wrong\n")
    assert bad.returncode == 1 and "does not match" in bad.stderr and bad.stdout == ""


def test_passwd_usage_and_data_errors():
    out = passwd("--help")
    assert out.returncode == 0 and "ARGON2ID" in out.stdout and "-t HASH" in out.stdout
    assert passwd("-l").stdout.split() == list(SCHEMES)
    assert passwd("-s", "MD5", "-p", "x").returncode == 64
    assert passwd("--bogus").returncode == 64
    assert passwd("-u", "a/b@x", "-p", "x").returncode == 64
    assert passwd("-t", "x", "-s", "PLAIN", "-p", "x").returncode == 64
    empty = passwd(stdin="\n")
    assert empty.returncode == 65 and "empty" in empty.stderr
    assert passwd("-s", "PLAIN", "-p", "a:b").returncode == 65


def _run_on_terminal(args: list[str], answers: list[bytes], timeout: float = 30) -> tuple[int, bytes]:
    """Run the tool on a pseudo-terminal, answering each prompt in turn."""
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.chdir(str(ROOT))
        os.execv(sys.executable, [*PASSWD, *args])
    output = b""
    deadline = time.monotonic() + timeout
    pending = list(answers)
    answered = 0
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
            prompts = output.count(b"password: ")
            if pending and prompts > answered and output.endswith(b"password: "):
                os.write(fd, pending.pop(0) + b"\n")
                answered += 1
    finally:
        os.close(fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output


def test_passwd_prompts_twice_on_a_terminal():
    code, output = _run_on_terminal(["-s", "SHA256-CRYPT"], [b"typed secret", b"typed secret"])
    assert code == 0, output
    assert b"Enter new password:" in output and b"Retype new password:" in output
    assert b"typed secret" not in output  # not echoed
    stored = output.strip().splitlines()[-1].decode()
    assert stored.startswith("{SHA256-CRYPT}$5$") and verify_password(stored, "typed secret")
    code, output = _run_on_terminal(["-s", "SHA256-CRYPT"], [b"one", b"two"])
    assert code == 65 and b"do not match" in output


def test_sha_crypt_is_verified_by_the_system_crypt_and_agrees_with_passlib():
    """SHA-crypt goes through libxcrypt's crypt_rn (several times faster, and other
    threads run meanwhile); it must give exactly what passlib and openssl give."""
    from passlib.hash import sha256_crypt, sha512_crypt

    from common import passwords
    from tests.support import require
    require(passwords._crypt_rn is not None, "libcrypt with crypt_rn (libxcrypt)")
    for secret in (b"postroom", "p\u00e4ssw\u00f6rd".encode(), b"x" * 300, b"a:b$c"):
        for handler in (sha512_crypt, sha256_crypt):
            stored = handler.using(rounds=5000).hash(secret)
            assert passwords._system_crypt(secret, stored) == stored.encode()
            assert passwords._system_crypt(secret + b"!", stored) != stored.encode()
    assert passwords._system_crypt(b"x", "$6$") != b"$6$"  # a broken setting never matches
