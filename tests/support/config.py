"""Build a configuration directory for a test: postroom.yaml, a users file with real
password hashes, a self-signed certificate, and folders under tmp_path.

Each test writes its own daemon file (mta.yaml, imapd.yaml, ...) next to it."""

from __future__ import annotations

import functools
import getpass
import shutil
from pathlib import Path

from common.selfsigned import make_self_signed

DEFAULT_USERS = {
    "demo@example.test": "postroom",
    "alice@example.test": "postroom",
    "bob@example.test": "postroom",
}


@functools.lru_cache(maxsize=None)
def _cached_cert(cache_dir: str) -> tuple[Path, Path]:
    d = Path(cache_dir)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / "cert.pem", d / "key.pem"
    if not cert.exists():
        make_self_signed(cert, key, "mail.example.test")
    return cert, key


@functools.lru_cache(maxsize=None)
def _hash(password: str) -> str:
    from common.passwords import hash_password
    return hash_password(password, "SHA512-CRYPT")


def base_config(tmp_path: Path, users: dict[str, str] | None = None, core_extra: str = "",
                local_domains: tuple[str, ...] = ("example.test",), user_extra: dict[str, str] | None = None) -> Path:
    """Write tmp_path/etc with postroom.yaml and users; return the config directory.

    core_extra is YAML appended to postroom.yaml (top-level keys not already set)."""
    etc = tmp_path / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    for sub in ("spool", "mail", "state", "run"):
        (tmp_path / sub).mkdir(exist_ok=True)
    cert, key = _cached_cert(str(Path("/tmp/postroom-test-cert")))
    shutil.copy(cert, etc / "cert.pem")
    shutil.copy(key, etc / "key.pem")
    lines = []
    for name, password in (users if users is not None else DEFAULT_USERS).items():
        local, _, domain = name.partition("@")
        home = tmp_path / "mail" / domain / local
        extra = (user_extra or {}).get(name, "")
        lines.append(f"{name}:{_hash(password)}::::{home}::{extra}")
    (etc / "users").write_text("\n".join(lines) + "\n")
    doms = ", ".join(local_domains)
    (etc / "postroom.yaml").write_text(
        f"""hostname: mail.example.test
user: {getpass.getuser()}
local_domains: [{doms}]
paths:
  spool: {tmp_path / 'spool'}
  mail: {tmp_path / 'mail'}
  state: {tmp_path / 'state'}
  run: {tmp_path / 'run'}
tls:
  certificate: cert.pem
  key: key.pem
auth:
  users_file: users
  failure_delay: 0.05s
  max_failure_delay: 0.2s
{core_extra}""")
    return etc
