"""contrib/: each daemon's systemd units pass `systemd-analyze verify` installed alone
(one folder per daemon, nothing of the others), and each FreeBSD rc.d script parses
with `sh -n` and depends on no other postroom script, so every daemon installs alone.

The units name their programs under /opt/postroom/bin, which does not exist here:
verify checks that ExecStart= and ExecStartPre= are executable, so each daemon's
copies point at stand-in programs in a temporary folder instead; nothing else changes.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT, require_tool

SYSTEMD = ROOT / "contrib" / "systemd"
FREEBSD = ROOT / "contrib" / "freebsd"
DAEMONS = ("mta", "mda", "imapd", "pop3d")
PROGRAMS = re.compile(r"/opt/postroom/bin/([\w-]+)")


def units_of(daemon: str) -> list[Path]:
    return sorted(SYSTEMD.glob(f"postroom-{daemon}.service")) + sorted(SYSTEMD.glob(f"postroom-{daemon}-*.socket"))


def test_every_unit_belongs_to_a_daemon():
    assert sorted(p.name for d in DAEMONS for p in units_of(d)) == sorted(p.name for p in SYSTEMD.iterdir())


@pytest.mark.parametrize("daemon", DAEMONS)
def test_systemd_units_verify_installed_alone(tmp_path, daemon):
    analyze = require_tool("systemd-analyze")
    units = units_of(daemon)
    assert any(u.suffix == ".service" for u in units)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    copies = []
    for unit in units:
        text = unit.read_text()
        for program in PROGRAMS.findall(text):
            stand_in = bin_dir / program
            stand_in.write_text("#!/bin/sh\nexit 0\n")
            stand_in.chmod(0o755)
        copy = tmp_path / unit.name
        copy.write_text(PROGRAMS.sub(lambda m: str(bin_dir / m.group(1)), text))
        copies.append(copy)
    result = subprocess.run([analyze, "verify", "--man=no", *map(str, copies)], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=60)
    # verify exits 0 on unknown keys and bad values (it ignores them): any output is a finding.
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result.stdout + result.stderr


def test_systemd_verify_finds_mistakes(tmp_path):
    """The check above is not blind: a misspelt key and a missing socket are reported."""
    analyze = require_tool("systemd-analyze")
    unit = tmp_path / "postroom-imapd.service"
    text = (SYSTEMD / "postroom-imapd.service").read_text().replace("/opt/postroom/bin/", "/bin/true #")
    unit.write_text(text.replace("NoNewPrivileges=yes", "NoNewPrivilege=yes"))
    result = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            cwd=str(tmp_path), timeout=60)
    assert "Unknown key" in result.stderr and "NoNewPrivilege" in result.stderr
    assert re.search(r"Unit postroom-imapd-imaps?\.socket not found", result.stderr)  # Requires= a unit not there


def test_maildir_units_can_write_homes():
    """With mail_location %h/Maildir the MDA, IMAP and POP3 servers write in /home: their
    units must not hide it nor make it read-only (systemd keeps the stricter of two
    settings for one path, so ReadWritePaths=/home cannot undo ProtectHome=read-only)."""
    for daemon in ("mda", "imapd", "pop3d"):
        text = (SYSTEMD / f"postroom-{daemon}.service").read_text()
        settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
        assert settings["ProtectHome"] == "no", daemon
        assert "-/home" in settings["ReadWritePaths"].split(), daemon
        assert {"-/root", "-/run/user"} <= set(settings["InaccessiblePaths"].split()), daemon
        assert settings["ProtectSystem"] == "strict"
    assert "ProtectHome=yes" in (SYSTEMD / "postroom-mta.service").read_text()  # the MTA never reads homes


@pytest.mark.parametrize("daemon", DAEMONS)
def test_freebsd_rc_script_parses_and_stands_alone(daemon):
    script = FREEBSD / f"postroom_{daemon}"
    sh = shutil.which("sh") or "/bin/sh"
    result = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    text = script.read_text()
    header = dict(re.findall(r"^# (PROVIDE|REQUIRE|BEFORE|KEYWORD): *(.*)$", text, re.M))
    assert header["PROVIDE"] == f"postroom_{daemon}"
    others = [f"postroom_{d}" for d in DAEMONS if d != daemon]
    for field in ("REQUIRE", "BEFORE"):
        assert not set(header.get(field, "").split()) & set(others), (field, header.get(field))
    assert f'name="postroom_{daemon}"' in text and f'rcvar="postroom_{daemon}_enable"' in text
    assert text.startswith("#!/bin/sh\n") and script.stat().st_mode & 0o111
