"""postroom-sieve check and test, run as a program."""

from __future__ import annotations

import subprocess
import sys

from tests.mda.mda_support import MESSAGE


def sieve(*args):
    return subprocess.run([sys.executable, "-m", "mda.sieve.cli", *map(str, args)], capture_output=True, timeout=60)


def test_check_reports_line_and_column(tmp_path):
    good = tmp_path / "good.sieve"
    good.write_text('require "fileinto";\nfileinto "x";\n')
    p = sieve("check", good)
    assert p.returncode == 0 and b"OK" in p.stdout
    bad = tmp_path / "bad.sieve"
    bad.write_text('require "fileinto";\n\nif header :is "a" { keep; }\n')
    p = sieve("check", bad)
    assert p.returncode == 1
    assert p.stderr.decode().strip() == f"{bad}:3:4: header takes 2 arguments besides tags, found 1"


def test_test_prints_actions(tmp_path):
    script = tmp_path / "s.sieve"
    script.write_text('require ["fileinto", "copy", "include"]; include "more"; '
                      'if header :contains "subject" "hello" { fileinto "Greetings"; redirect :copy "b@example.org"; }')
    (tmp_path / "sieve").mkdir()
    (tmp_path / "sieve" / "more.sieve").write_text('require "imap4flags"; addflag "\\\\Flagged";')
    msg = tmp_path / "m.eml"
    msg.write_bytes(MESSAGE)
    p = sieve("test", script, msg, "--from", "a@b.test", "--to", "alice@example.test")
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().splitlines() == ["fileinto 'Greetings'", "redirect to b@example.org"]
