"""Configuration mistakes: each is one line naming file, line and key, and exit 78, from
`postroom-config check` and from a daemon started by the runner, both as real processes.
Also `postroom-config show`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.common.runner_fixture import MODULE, fixture_config, set_core
from tests.support import ROOT

FIXTURE_TLS = """listeners:
  main:
    endpoint: tcp:0:interface=127.0.0.1
    tls: implicit
"""


def run(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=str(ROOT),
                          timeout=timeout)


def config_check(etc: Path) -> subprocess.CompletedProcess:
    return run("-m", "common.tools.configtool", "check", "--config", str(etc))


def daemon_start(etc: Path) -> subprocess.CompletedProcess:
    return run("-m", MODULE, "--config", str(etc))


def assert_one_line(result: subprocess.CompletedProcess, prog: str, *parts: str) -> str:
    assert result.returncode == 78, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    line = lines[0]
    assert line.startswith(f"{prog}: "), line
    for part in parts:
        assert part in line, (part, line)
    return line


def line_of(path: Path, text: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if text in line)


# Each case: (what to append to or change in postroom.yaml, expected key, expected message bit)
CORE_CASES = {
    "unknown key": ("hostnme: mail.example.test", "hostnme", "unknown key (did you mean 'hostname'?)"),
    "wrong type": ("shutdown_grace: soon", "shutdown_grace", "expected a duration"),
    "wrong type nested": ("log:\n  level: loud", "log.level", "expected one of"),
    "duplicate key": ("hostname: again.example.test", "hostname", "appears twice"),
}


@pytest.mark.parametrize("case", sorted(CORE_CASES))
def test_core_mistake_is_one_line_with_file_line_key(tmp_path, case):
    extra, key, message = CORE_CASES[case]
    etc = fixture_config(tmp_path, FIXTURE_TLS, core_extra=extra + "\n")
    core = etc / "postroom.yaml"
    where = f"{core}:{line_of(core, extra.splitlines()[-1].strip())}: {key}: "
    assert_one_line(config_check(etc), "postroom-config", where, message)
    assert_one_line(daemon_start(etc), "postroom-fixture", where, message)


def test_malformed_yaml(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS, core_extra="local_domains: [a, b\nx: 1\n")
    core = etc / "postroom.yaml"
    for result, prog in ((config_check(etc), "postroom-config"), (daemon_start(etc), "postroom-fixture")):
        line = assert_one_line(result, prog, f"{core}:", "not valid YAML")
        assert line.split(f"{core}:")[1].split(":")[0].isdigit(), line


def test_missing_file(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    (etc / "postroom.yaml").unlink()
    assert_one_line(config_check(etc), "postroom-config", f"{etc / 'postroom.yaml'}: file not found")
    assert_one_line(daemon_start(etc), "postroom-fixture", f"{etc / 'postroom.yaml'}: file not found")


def test_unreadable_certificate(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    set_core(etc, "  certificate:", "  certificate: missing.pem")
    core = etc / "postroom.yaml"
    where = f"{core}:{line_of(core, 'missing.pem')}: tls.certificate: {etc / 'missing.pem'}: cannot read"
    assert_one_line(config_check(etc), "postroom-config", where)
    assert_one_line(daemon_start(etc), "postroom-fixture", where)


def test_certificate_that_is_not_pem(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    (etc / "cert.pem").write_text("not a certificate\n")
    line = assert_one_line(daemon_start(etc), "postroom-fixture", "tls.certificate", "not a PEM certificate")
    assert str(etc / "postroom.yaml") in line


def test_key_that_does_not_match(tmp_path):
    from common.selfsigned import make_self_signed

    etc = fixture_config(tmp_path, FIXTURE_TLS)
    make_self_signed(tmp_path / "other.pem", etc / "key.pem")  # a new key, the old cert
    assert_one_line(config_check(etc), "postroom-config", "tls.key", "does not match the certificate")


def test_bad_endpoint_string(tmp_path):
    etc = fixture_config(tmp_path, "listeners:\n  main:\n    endpoint: tcp:smtp:interface=127.0.0.1\n")
    fixture = etc / "fixture.yaml"
    assert_one_line(daemon_start(etc), "postroom-fixture", f"{fixture}:3: listeners.main.endpoint: bad endpoint string")
    (etc / "mta.yaml").write_text("listeners:\n  smtp:\n    tls: none\n    endpoint: ftp:465\n")
    assert_one_line(config_check(etc), "postroom-config", f"{etc / 'mta.yaml'}:4: listeners.smtp.endpoint: ",
                    "the kind must be one of tcp, tcp6, ssl, unix, systemd")


def test_daemon_file_mistakes_are_all_listed(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    (etc / "mta.yaml").write_text("listeners:\n  smtp:\n    endpoint: tcp:2525\n    tls: none\n    colour: blue\n")
    (etc / "imapd.yaml").write_text("listeners: [a]\n")
    result = config_check(etc)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert f"{etc / 'mta.yaml'}:5: listeners.smtp.colour: unknown key" in result.stderr
    assert f"{etc / 'imapd.yaml'}:1: listeners: expected a mapping" in result.stderr


def test_two_listeners_on_one_port(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    (etc / "mta.yaml").write_text("listeners:\n  a:\n    endpoint: tcp:2525\n    tls: none\n"
                                  "  b:\n    endpoint: tcp:2525:interface=0.0.0.0\n    tls: none\n")
    assert_one_line(config_check(etc), "postroom-config", f"{etc / 'mta.yaml'}:6: listeners.b.endpoint",
                    "also used by mta.yaml: listeners.a")


def test_unknown_user_and_bad_users_file(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    set_core(etc, "user:", "user: no-such-user-here")
    (etc / "users").write_text("this is not a passwd-file line\n")
    (etc / "pop3d.yaml").write_text("")
    result = config_check(etc)
    assert result.returncode == 78
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert "user: no such user 'no-such-user-here'" in lines[0]
    assert str(etc / "users") in lines[1]


def test_check_ok_and_env_variable(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS)
    (etc / "mta.yaml").write_text("listeners:\n  smtp:\n    endpoint: tcp:2525:interface=127.0.0.1\n")
    result = subprocess.run([sys.executable, "-m", "common.tools.configtool", "check"], capture_output=True,
                            text=True, cwd=str(ROOT), env={"POSTROOM_CONFIG": str(etc), "PATH": "/usr/bin:/bin"},
                            timeout=30)
    assert (result.returncode, result.stdout, result.stderr) == (0, "configuration OK\n", "")


def test_show_fills_defaults_with_comments(tmp_path):
    import yaml

    etc = fixture_config(tmp_path, FIXTURE_TLS)
    result = run("-m", "common.tools.configtool", "show", "--config", str(etc))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "# on SIGTERM, how long sessions in flight may take to finish\nshutdown_grace: 30s" in out
    assert "hostname: mail.example.test" in out
    assert "  # oldest TLS version accepted\n  min_version: '1.2'" in out
    data = yaml.safe_load(out)  # the output is itself valid YAML
    assert data["tls"]["certificate"] == str(etc / "cert.pem")
    assert data["log"]["target"] == "stderr"

    (etc / "mta.yaml").write_text("listeners:\n  smtp:\n    endpoint: tcp:2525\n")
    result = run("-m", "common.tools.configtool", "show", "mta", "--config", str(etc))
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load(result.stdout)
    smtp = data["listeners"]["smtp"]
    assert {k: smtp[k] for k in ("endpoint", "tls", "proxy_protocol", "proxy_from")} == {
        "endpoint": "tcp:2525", "tls": "starttls", "proxy_protocol": False, "proxy_from": []}
    assert "    # expect a HAProxy PROXY v1/v2 header before anything else\n" in result.stdout


def test_show_reports_a_mistake_as_one_line(tmp_path):
    etc = fixture_config(tmp_path, FIXTURE_TLS, core_extra="nope: 1\n")
    assert_one_line(run("-m", "common.tools.configtool", "show", "--config", str(etc)),
                    "postroom-config", "nope: unknown key")


@pytest.mark.parametrize("daemon", ["mta", "mda", "imapd", "pop3d"])
def test_missing_daemon_file_is_one_line_and_exit_78(tmp_path, daemon):
    """postroom.yaml is there, the daemon's own file is not: the real daemon names it."""
    from common.config import DAEMONS

    etc = fixture_config(tmp_path, FIXTURE_TLS)
    filename = DAEMONS[daemon][0]
    assert not (etc / filename).exists()
    assert_one_line(run("-m", f"{daemon}.main", "--config", str(etc)), f"postroom-{daemon}",
                    f"{etc / filename}: file not found")
