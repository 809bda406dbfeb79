"""common.auth and common.users inside a running daemon (postroom-pop3d), over real
sockets: wrong passwords from one address are answered more and more slowly, up to
the bound, for any user name from that address; the right password afterwards is
answered at once. A {PLAIN} password in the user file works and is warned about in
the log, which never shows the password itself."""

from __future__ import annotations

import time

import pytest

from tests.common.daemons import LineClient, config, start

FAILURE_DELAY, MAX_DELAY = 0.25, 1.0
#: how much later than its delay an answer may come on a busy machine
SLACK = 0.75


@pytest.fixture
def pop3d(tmp_path):
    etc = config(tmp_path, "pop3d", auth_extra=f"  failure_delay: {FAILURE_DELAY}s\n"
                                               f"  max_failure_delay: {MAX_DELAY}s\n  failure_window: 10m\n")
    daemon, ports = start(etc, "pop3d")
    yield daemon, ports, etc
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output(), daemon.output()


def timed_login(port: int, user: str, password: str) -> tuple[float, bytes]:
    """USER and PASS on a fresh connection from 127.0.0.1 (loopback counts as secure):
    the seconds from sending PASS to its answer, and the answer."""
    c = LineClient(port)
    assert c.line().startswith(b"+OK")
    c.send(f"USER {user}\r\n".encode())
    assert c.line().startswith(b"+OK")
    started = time.monotonic()
    c.send(f"PASS {password}\r\n".encode())
    answer = c.line()
    took = time.monotonic() - started
    c.send(b"QUIT\r\n")
    c.close()
    return took, answer


def test_wrong_passwords_get_slower_up_to_the_bound_and_the_right_one_still_works(pop3d):
    daemon, ports, _ = pop3d
    expected = [0.25, 0.5, 1.0, 1.0, 1.0]  # failure_delay doubled per failure, bounded by max_failure_delay
    took = []
    for delay in expected:
        seconds, answer = timed_login(ports["plain"], "alice@example.test", "wrong")
        assert answer == b"-ERR [AUTH] Authentication failed."
        took.append(seconds)
        assert delay * 0.9 <= seconds <= delay + SLACK, (expected, took)
    assert took[2] > took[0] * 2  # slower and slower ...
    assert max(took) <= MAX_DELAY + SLACK  # ... but bounded

    # The address is throttled whatever the name: another user's wrong password waits the bound too.
    seconds, answer = timed_login(ports["plain"], "nobody-such@example.test", "wrong")
    assert answer == b"-ERR [AUTH] Authentication failed." and MAX_DELAY * 0.9 <= seconds <= MAX_DELAY + SLACK

    # The right password is answered at once, even now.
    seconds, answer = timed_login(ports["plain"], "alice@example.test", "postroom")
    assert answer.startswith(b"+OK") and seconds < FAILURE_DELAY + SLACK, (seconds, answer)
    assert "login failed for alice@example.test from 127.0.0.1 (5 recent), answering in 1.00s" in daemon.output()


def test_plain_password_works_with_a_warning_and_never_appears_in_the_log(tmp_path):
    etc = config(tmp_path, "pop3d")
    secret = "Plain-Secret-4711"
    home = tmp_path / "mail" / "example.test" / "carol"
    with open(etc / "users", "a") as f:
        f.write(f"carol@example.test:{{PLAIN}}{secret}::::{home}::\n")
    daemon, ports = start(etc, "pop3d")
    try:
        _, answer = timed_login(ports["plain"], "carol@example.test", secret)
        assert answer.startswith(b"+OK")
        _, answer = timed_login(ports["plain"], "carol@example.test", "not-it")
        assert answer.startswith(b"-ERR [AUTH]")
    finally:
        assert daemon.stop() == 0
    out = daemon.output()
    assert f"{etc / 'users'}: user carol@example.test has a PLAIN password; hash it with postroom-passwd" in out
    assert out.count("has a PLAIN password") == 1  # once, not per login
    assert secret not in out and "not-it" not in out
