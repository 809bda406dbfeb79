"""Helpers for the MDA tests: a configuration folder with mda.yaml, users' maildirs
and Sieve scripts, and reading what landed in a maildir."""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from common.config import load
from common.spool import Spool
from tests.support import require
from tests.support.config import base_config

MESSAGE = (b"From: Sender <sender@remote.test>\r\n"
           b"To: Alice <alice@example.test>\r\n"
           b"Subject: hello\r\n"
           b"Message-ID: <m1@remote.test>\r\n"
           b"Date: Sun, 22 Nov 2026 01:00:00 +0000\r\n"
           b"\r\n"
           b"Hi Alice.\r\n")


def mda_config(tmp_path: Path, mda_yaml: str = "", user_extra: dict[str, str] | None = None,
               core_extra: str = "") -> Path:
    etc = base_config(tmp_path, user_extra=user_extra, core_extra=core_extra)
    (etc / "mda.yaml").write_text(mda_yaml or "consumer:\n  enabled: true\n")
    Spool(tmp_path / "spool", create=True)   # the MTA's, made here as the MTA would
    return etc


def deliverer(etc: Path):
    from mda.delivery import Deliverer
    cfg = load(etc, "mda")
    return Deliverer(cfg.core, cfg.daemon)


def home(tmp_path: Path, user: str = "alice") -> Path:
    return tmp_path / "mail" / "example.test" / user


def maildir(tmp_path: Path, user: str = "alice") -> Path:
    return home(tmp_path, user) / "Maildir"


def write_script(tmp_path: Path, text: str, user: str = "alice") -> Path:
    h = home(tmp_path, user)
    h.mkdir(parents=True, exist_ok=True)
    (h / ".sieve").write_text(text)
    return h / ".sieve"


def folder_files(tmp_path: Path, folder: str = "INBOX", user: str = "alice") -> list[Path]:
    """Every message file in a folder (new/ and cur/)."""
    root = maildir(tmp_path, user)
    box = root if folder == "INBOX" else root / ("." + folder)
    out = []
    for sub in ("new", "cur"):
        d = box / sub
        if d.is_dir():
            out += sorted(d / n for n in os.listdir(d))
    return out


def all_message_files(tmp_path: Path, user: str = "alice") -> list[Path]:
    root = maildir(tmp_path, user)
    out = []
    if not root.exists():
        return out
    for dirpath, _dirs, files in os.walk(root):
        if os.path.basename(dirpath) in ("new", "cur"):
            out += [Path(dirpath) / f for f in files]
    return out


@contextlib.contextmanager
def small_maildir_disk(tmp_path: Path, size: str = "64k"):
    """A tiny tmpfs (root only) holding every maildir; yields the core_extra that
    points mail_location at it. Unmounted lazily, so a daemon still running is fine."""
    require(os.geteuid() == 0, "root, to mount a small tmpfs")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount, f"mail_location: {mount}/%n\n"
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)
