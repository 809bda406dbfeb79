"""common.auth: twisted.cred login, throttling, the plaintext rule and the SASL decoders.

Password checks always run in a real thread: in-process tests inject `ThreadRunner`
(a real thread pool whose results are handed back on the test's thread, as
callFromThread would) and drive time with a twisted Clock; one test runs the real
reactor with the default deferToThread in a child process."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from common import auth as auth_module
from common.auth import (
    PASSWORD_PROMPT, USERNAME_PROMPT, Authenticator, Challenge, Credentials, FailureTable, IMailUser,
    LoginFailed, MailRealm, PasswordFileChecker, SaslCancelled, SaslError, SaslLogin, SaslPlain,
    address_key, decode_plain, is_loopback, sasl_mechanism,
)
from common.config.core import AuthConfig, PostroomConfig
from common.config.loader import Duration
from common.errors import TemporaryError
from common.passwords import hash_password, split_scheme
from common.users import UserDB, UserRecord
from tests.support import ROOT

PASSWORD = "s3cret pw"
USERS = ("alice@example.test", "bob@example.test", "carol@example.test")


class ThreadRunner:
    """Runs each function in a real worker thread; pump() waits for them and fires
    their Deferreds on the calling thread, as the reactor does after deferToThread."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(max_workers=2)
        self.pending: list = []
        self.calls: list[str] = []
        self.threads: set[int] = set()

    def __call__(self, function, *args):
        d: Deferred = Deferred()
        self.calls.append(function.__name__)

        def work():
            self.threads.add(threading.get_ident())
            return function(*args)

        self.pending.append((self.executor.submit(work), d))
        return d

    def pump(self, timeout: float = 30) -> None:
        while self.pending:
            future, d = self.pending.pop(0)
            try:
                value = future.result(timeout)
            except Exception as e:  # handed on like deferToThread does
                d.errback(e)
            else:
                d.callback(value)


@pytest.fixture
def runner():
    r = ThreadRunner()
    yield r
    r.executor.shutdown(wait=True)


@pytest.fixture(scope="module")
def users_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "users"
    stored = hash_password(PASSWORD, "SHA512-CRYPT")
    path.write_text("".join(f"{name}:{stored}::::/srv/{name}::quota_rule=*:storage=1M\n" for name in USERS))
    return path


def make_core(users_file: Path, **settings) -> PostroomConfig:
    durations = {k: Duration(v) for k, v in settings.items() if k in ("failure_delay", "max_failure_delay", "failure_window")}
    others = {k: v for k, v in settings.items() if k not in durations}
    auth = AuthConfig(users_file=users_file, **{"failure_delay": Duration(0.25), "max_failure_delay": Duration(2),
                                                **durations, **others})
    return PostroomConfig(hostname="mail.example.test", auth=auth)


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def authenticator(users_file, clock, runner):
    return Authenticator(make_core(users_file), clock, run_in_thread=runner)


def outcome(d: Deferred):
    results: list = []
    d.addBoth(results.append)
    return results


def answered_after(clock: Clock, runner: ThreadRunner, d: Deferred, step: float = 0.125, limit: float = 60):
    """(seconds of reactor time until d fired, its result) -- checks are done first."""
    runner.pump()
    results = outcome(d)
    waited = 0.0
    while not results:
        assert waited < limit, "never answered"
        clock.advance(step)
        waited += step
    return waited, results[0]


def failure_after(clock, runner, d):
    waited, result = answered_after(clock, runner, d)
    assert result.check(LoginFailed), result
    return waited, result.value


# --- login -----------------------------------------------------------------------------------


def test_good_password_gives_the_record_at_once_from_a_thread(authenticator, clock, runner):
    d = authenticator.login("Alice@Example.TEST", PASSWORD, "192.0.2.1")
    waited, record = answered_after(clock, runner, d)
    assert waited == 0
    assert isinstance(record, UserRecord)
    assert record.name == "alice@example.test"
    assert record.quota() == (1024 * 1024, None)
    assert runner.calls == ["verify_password"]
    assert threading.get_ident() not in runner.threads


def test_bytes_credentials_work_too(authenticator, clock, runner):
    _, record = answered_after(clock, runner, authenticator.login(b"bob@example.test", PASSWORD.encode(), "192.0.2.1"))
    assert record.name == "bob@example.test"


def test_unknown_user_and_wrong_password_are_indistinguishable(users_file, runner, monkeypatch):
    checked: list[str] = []
    real_verify = auth_module.verify_password

    def spy(stored, password):
        checked.append(split_scheme(stored)[0])
        return real_verify(stored, password)

    monkeypatch.setattr(auth_module, "verify_password", spy)
    answers = []
    for user in ("alice@example.test", "nobody@example.test"):
        clock = Clock()
        authenticator = Authenticator(make_core(users_file), clock, run_in_thread=runner)
        answers.append(failure_after(clock, runner, authenticator.login(user, "wrong", "192.0.2.7")))
    (wrong_delay, wrong), (unknown_delay, unknown) = answers
    assert type(wrong) is type(unknown) is LoginFailed
    assert str(wrong) == str(unknown) == wrong.public == "Authentication failed"
    assert wrong_delay == unknown_delay == 0.25
    # The unknown user cost one verification against a real hash of the same kind.
    assert runner.calls == ["spy", "_verify_unknown"]
    assert checked == ["SHA512-CRYPT", "SHA512-CRYPT"]


def test_unknown_user_without_any_hash_in_the_file_costs_a_default_scheme_check(tmp_path, clock, runner):
    path = tmp_path / "users"
    path.write_text("plain@example.test:{PLAIN}pw\n")
    authenticator = Authenticator(make_core(path, default_scheme="SHA256-CRYPT"), clock, run_in_thread=runner)
    _, error = failure_after(clock, runner, authenticator.login("ghost@example.test", "pw", "192.0.2.1"))
    assert authenticator.checker._fallback.startswith("{SHA256-CRYPT}$5$")
    _, record = answered_after(clock, runner, authenticator.login("plain@example.test", "pw", "192.0.2.1"))
    assert record.name == "plain@example.test"


def test_repeated_failures_from_one_address_wait_longer_and_longer_up_to_the_bound(authenticator, clock, runner):
    # A different user name each time, so only the per-address rule is at work.
    delays = [failure_after(clock, runner, authenticator.login(f"user{i}@example.test", "wrong", "192.0.2.1"))[0]
              for i in range(7)]
    assert delays == [0.25, 0.5, 1, 2, 2, 2, 2]


def test_another_address_is_not_slowed_by_those_failures(authenticator, clock, runner):
    for i in range(5):
        failure_after(clock, runner, authenticator.login(f"user{i}@example.test", "wrong", "192.0.2.1"))
    assert failure_after(clock, runner, authenticator.login("fresh@example.test", "wrong", "198.51.100.9"))[0] == 0.25
    _, record = answered_after(clock, runner, authenticator.login("alice@example.test", PASSWORD, "198.51.100.9"))
    assert record.name == "alice@example.test"
    # ...beyond the per-user rule: failures for one user name slow every address.
    for i in range(3):
        failure_after(clock, runner, authenticator.login("bob@example.test", "wrong", f"203.0.113.{i + 1}"))
    assert failure_after(clock, runner, authenticator.login("bob@example.test", "wrong", "203.0.113.200"))[0] == 2
    # and the real owner logs in at once all the same.
    waited, record = answered_after(clock, runner, authenticator.login("bob@example.test", PASSWORD, "203.0.113.201"))
    assert (waited, record.name) == (0, "bob@example.test")


def test_success_clears_the_users_failures_but_not_the_addresses(authenticator, clock, runner):
    for _ in range(2):
        failure_after(clock, runner, authenticator.login("carol@example.test", "wrong", "192.0.2.1"))
    answered_after(clock, runner, authenticator.login("carol@example.test", PASSWORD, "192.0.2.1"))
    assert failure_after(clock, runner, authenticator.login("carol@example.test", "wrong", "192.0.2.99"))[0] == 0.25
    assert failure_after(clock, runner, authenticator.login("x@example.test", "wrong", "192.0.2.1"))[0] == 1


def test_failures_older_than_the_window_are_forgotten(users_file, clock, runner):
    authenticator = Authenticator(make_core(users_file, failure_window=10), clock, run_in_thread=runner)
    for _ in range(4):
        failure_after(clock, runner, authenticator.login("alice@example.test", "wrong", "192.0.2.1"))
    clock.advance(10)
    assert failure_after(clock, runner, authenticator.login("alice@example.test", "wrong", "192.0.2.1"))[0] == 0.25


def test_tracking_tables_are_bounded(users_file, clock, runner):
    authenticator = Authenticator(make_core(users_file, tracked_failures=3), clock, run_in_thread=runner)
    for i in range(5):
        failure_after(clock, runner, authenticator.login(f"u{i}@x", "wrong", f"192.0.2.{i + 1}"))
    assert len(authenticator.by_address) == len(authenticator.by_user) == 3
    failure_after(clock, runner, authenticator.login("u4@x", "wrong", "192.0.2.5"))
    # 192.0.2.1 was forgotten first; 192.0.2.5 is remembered.
    assert failure_after(clock, runner, authenticator.login("new1@x", "wrong", "192.0.2.1"))[0] == 0.25
    assert failure_after(clock, runner, authenticator.login("new2@x", "wrong", "192.0.2.5"))[0] == 1


def test_failure_table_keeps_a_bounded_history_per_key():
    table = FailureTable(size=10, window=100)
    for t in range(1000):
        count = table.add("k", float(t) / 100)
    assert count == auth_module.MAX_FAILURES_REMEMBERED
    assert table.count("k", 200.0) == 0 and len(table) == 0


def test_more_logins_in_progress_than_allowed_fail_without_a_check(users_file, clock, runner):
    authenticator = Authenticator(make_core(users_file, max_logins_in_progress=2), clock, run_in_thread=runner)
    first = authenticator.login("alice@example.test", "wrong", "192.0.2.1")
    second = authenticator.login("bob@example.test", "wrong", "192.0.2.1")
    third = authenticator.login("alice@example.test", PASSWORD, "192.0.2.1")
    assert len(runner.calls) == 2  # the third was never checked
    other = authenticator.login("alice@example.test", PASSWORD, "192.0.2.2")
    assert len(runner.calls) == 3
    runner.pump()
    results = outcome(third)
    clock.advance(0.25)
    assert results and results[0].check(LoginFailed)
    assert outcome(other)[0].name == "alice@example.test"
    for d in (first, second):
        assert failure_after(clock, runner, d)[1].public == "Authentication failed"
    # The slots are free again once those failures were answered.
    _, record = answered_after(clock, runner, authenticator.login("alice@example.test", PASSWORD, "192.0.2.1"))
    assert record.name == "alice@example.test"


def test_authzid_must_name_the_same_user(authenticator, clock, runner):
    _, record = answered_after(clock, runner, authenticator.login("alice@example.test", PASSWORD, "192.0.2.1",
                                                                   authzid="ALICE@example.test"))
    assert record.name == "alice@example.test"
    failure_after(clock, runner, authenticator.login("alice@example.test", PASSWORD, "192.0.2.1",
                                                     authzid="bob@example.test"))


def test_overlong_input_fails_like_a_wrong_password(authenticator, clock, runner):
    failure_after(clock, runner, authenticator.login("a" * 5000, PASSWORD, "192.0.2.1"))
    failure_after(clock, runner, authenticator.login("alice@example.test", "p" * 5000, "192.0.2.2"))
    failure_after(clock, runner, authenticator.login(b"\xff\xfe@example.test", PASSWORD, "192.0.2.3"))


def test_a_broken_check_is_a_temporary_failure(authenticator, clock, runner, monkeypatch):
    def broken(stored, password):
        raise OSError("out of memory")

    monkeypatch.setattr(auth_module, "verify_password", broken)
    _, result = answered_after(clock, runner, authenticator.login("alice@example.test", PASSWORD, "192.0.2.1"))
    assert result.check(TemporaryError)
    assert (result.value.code, result.value.enhanced) == (454, "4.7.0")


def test_cancelled_login_keeps_its_slot_until_the_delay_is_over(users_file, clock, runner):
    authenticator = Authenticator(make_core(users_file, max_logins_in_progress=1), clock, run_in_thread=runner)
    d = authenticator.login("alice@example.test", "wrong", "192.0.2.1")
    runner.pump()
    d.cancel()
    assert outcome(d)[0].check(Exception)
    assert authenticator._in_progress == {"192.0.2.1": 1}
    clock.advance(0.25)
    assert authenticator._in_progress == {}


def test_reload_is_passed_to_the_user_file(users_file, clock, runner):
    authenticator = Authenticator(make_core(users_file), clock, run_in_thread=runner)
    assert authenticator.reload() is False
    assert authenticator.users.names() == list(USERS)


# --- twisted.cred pieces ---------------------------------------------------------------------


def test_portal_login_through_checker_and_realm(users_file, runner):
    users = UserDB(users_file)
    portal = Portal(MailRealm(users), [PasswordFileChecker(users, runner)])
    good = outcome(portal.login(UsernamePassword(b"carol@example.test", PASSWORD.encode()), None, IMailUser))
    bad = outcome(portal.login(UsernamePassword(b"carol@example.test", b"nope"), None, IMailUser))
    unknown = outcome(portal.login(UsernamePassword(b"who@example.test", PASSWORD.encode()), None, IMailUser))
    runner.pump()
    interface, avatar, logout = good[0]
    assert interface is IMailUser and IMailUser.providedBy(avatar)
    assert avatar.name == "carol@example.test" and avatar.record.home == Path("/srv/carol@example.test")
    logout()
    assert bad[0].check(UnauthorizedLogin) and unknown[0].check(UnauthorizedLogin)


def test_realm_refuses_other_interfaces_and_vanished_users(users_file):
    realm = MailRealm(UserDB(users_file))
    with pytest.raises(NotImplementedError):
        realm.requestAvatar("alice@example.test", None, UserRecord)
    with pytest.raises(UnauthorizedLogin):
        realm.requestAvatar(b"gone@example.test", None, IMailUser)


# --- the plaintext rule --------------------------------------------------------------------


@pytest.mark.parametrize("settings,secure,ip,allowed", [
    ({}, True, "192.0.2.1", True),
    ({}, False, "192.0.2.1", False),
    ({}, False, "127.0.0.1", True),
    ({}, False, "127.9.8.7", True),
    ({}, False, "::1", True),
    ({}, False, "::ffff:127.0.0.1", True),
    ({}, False, "::ffff:192.0.2.1", False),
    ({}, False, "2001:db8::1", False),
    ({}, False, "", False),
    ({"loopback_is_secure": False}, False, "127.0.0.1", False),
    ({"loopback_is_secure": False}, True, "127.0.0.1", True),
    ({"allow_plaintext": True}, False, "192.0.2.1", True),
])
def test_plaintext_rule(users_file, clock, settings, secure, ip, allowed):
    authenticator = Authenticator(make_core(users_file, **settings), clock, users=UserDB(users_file))
    assert authenticator.plaintext_allowed(secure, ip) is allowed


def test_address_keys():
    assert address_key("192.0.2.1") == "192.0.2.1"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("2001:db8:1:2:3:4:5:6") == address_key("2001:db8:1:2:ffff::1") == "2001:db8:1:2::/64"
    assert address_key("fe80::1%eth0") == "fe80::/64"
    assert address_key("not an ip") == "not an ip"
    assert is_loopback("127.0.0.2") and not is_loopback("128.0.0.1") and not is_loopback("junk")


def test_settings_are_checked():
    with pytest.raises(ValueError):
        AuthConfig(failure_delay=Duration(5), max_failure_delay=Duration(1))
    with pytest.raises(ValueError):
        AuthConfig(max_logins_in_progress=0)


# --- the real reactor and deferToThread --------------------------------------------------------

REAL_REACTOR_SCRIPT = r"""
import json, sys, time
from pathlib import Path
from twisted.internet import reactor, task
from common.auth import Authenticator, LoginFailed
from common.config.core import AuthConfig, PostroomConfig
from common.config.loader import Duration
from common.passwords import hash_password

users = Path(sys.argv[1])
users.write_text("alice@example.test:" + hash_password("pw", "ARGON2ID") + "\n")
core = PostroomConfig(hostname="h", auth=AuthConfig(users_file=users, failure_delay=Duration(0.1),
                                                    max_failure_delay=Duration(0.4)))
auth = Authenticator(core, reactor)  # default thread runner: deferToThread
out = {"failures": [], "ticks": 0}
ticker = task.LoopingCall(lambda: out.__setitem__("ticks", out["ticks"] + 1))

async def main():
    ticker.start(0.01)
    start = time.monotonic()
    record = await auth.login("alice@example.test", "pw", "192.0.2.1")
    out["success"] = [record.name, time.monotonic() - start, out["ticks"]]
    for user in ("alice@example.test", "nobody@example.test", "alice@example.test", "x@y", "x@y"):
        start = time.monotonic()
        try:
            await auth.login(user, "wrong", "192.0.2.1")
        except LoginFailed as e:
            out["failures"].append([str(e), time.monotonic() - start])

def done(result):
    ticker.stop()
    if hasattr(result, "getTraceback"):
        out["error"] = result.getTraceback()
    print(json.dumps(out))
    reactor.stop()

from twisted.internet.defer import Deferred
reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addBoth(done))
reactor.callLater(60, reactor.stop)
reactor.run()
"""


def test_real_reactor_with_deferToThread(tmp_path):
    proc = subprocess.run([sys.executable, "-c", REAL_REACTOR_SCRIPT, str(tmp_path / "users")],
                          capture_output=True, text=True, timeout=90, cwd=str(ROOT))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "error" not in out, out["error"]
    name, seconds, ticks = out["success"]
    assert name == "alice@example.test"
    # The reactor kept running while ARGON2ID was verified in a thread.
    assert ticks >= max(1, int(seconds / 0.01) // 4), (seconds, ticks)
    messages = {m for m, _ in out["failures"]}
    assert messages == {"Authentication failed"}
    waits = [w for _, w in out["failures"]]
    # Each answer waited at least its delay (0.1, 0.2, 0.4, then the 0.4 bound) on top of the
    # check; the growth itself is measured exactly with a Clock above.
    for wait, delay in zip(waits, (0.1, 0.2, 0.4, 0.4, 0.4)):
        assert wait >= delay
    assert max(waits) < 0.4 + 10  # bounded (generous for a busy machine)


# --- SASL ----------------------------------------------------------------------------------------


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


def test_decode_plain():
    assert decode_plain(b64(b"\0alice@example.test\0pw")) == ("", "alice@example.test", "pw")
    assert decode_plain(b64("admin\0alice\0pässword".encode())) == ("admin", "alice", "pässword")
    assert decode_plain(b64(b"\0u\0p") + b"\r\n") == ("", "u", "p")


@pytest.mark.parametrize("data", [
    b"not base64!", b"AGFsaWNlAHB", b"AGFsa WNlAHB3", b"AGFsaWNlAHB3==", b"YQ", b"=", b"",
    b64(b"alice\0pw"), b64(b"\0alice\0pw\0"), b64(b"a\0b\0c\0d"), b64(b"\0\0pw"), b64(b"\0alice\0"),
    b64(b"\0" + b"u" * 2000 + b"\0pw"), b64(b"\0alice\0\xff\xfe"), b"A" * 10000,
])
def test_decode_plain_refuses_malformed_input(data):
    with pytest.raises(SaslError):
        decode_plain(data)


def test_sasl_plain_with_and_without_initial_response():
    mech = sasl_mechanism("plain")
    assert isinstance(mech, SaslPlain)
    creds = mech.start(b64(b"\0alice\0pw"))
    assert creds == Credentials("alice", "pw", "")
    assert "pw" not in repr(creds)
    with pytest.raises(SaslError):
        mech.receive(b64(b"\0alice\0pw"))
    mech = SaslPlain()
    assert mech.start(None) == Challenge(b"")
    assert mech.receive(b64(b"bob\0bob\0x")) == Credentials("bob", "x", "bob")


def test_sasl_plain_empty_initial_response_and_cancel():
    with pytest.raises(SaslError):
        SaslPlain().start(b"=")  # RFC 4954 "=" is an empty response: not a PLAIN message
    mech = SaslPlain()
    mech.start(None)
    with pytest.raises(SaslCancelled):
        mech.receive(b"*")


def test_sasl_login_prompts_and_initial_response():
    mech = sasl_mechanism(b"LOGIN")
    assert isinstance(mech, SaslLogin)
    assert mech.start(None) == Challenge(USERNAME_PROMPT)
    assert base64.b64decode(USERNAME_PROMPT) == b"Username:" and base64.b64decode(PASSWORD_PROMPT) == b"Password:"
    assert mech.receive(b64(b"alice@example.test")) == Challenge(PASSWORD_PROMPT)
    assert mech.receive(b64("pässword".encode())) == Credentials("alice@example.test", "pässword")
    with pytest.raises(SaslError):
        mech.receive(b64(b"more"))
    mech = SaslLogin()
    assert mech.start(b64(b"bob")) == Challenge(PASSWORD_PROMPT)
    assert mech.receive(b"=") == Credentials("bob", "")  # an empty password is a (failing) answer


@pytest.mark.parametrize("first,second", [
    (b"*", None), (b64(b"u"), b"*"), (b"%%%", None), (b"=", None), (b64(b"u"), b64(b"\xff")),
    (b64(b"u" * 2000), None), (b64(b"u"), b64(b"a\0b")),
])
def test_sasl_login_cancel_and_malformed(first, second):
    mech = SaslLogin()
    mech.start(None)
    with pytest.raises(SaslError) as info:
        mech.receive(first)
        mech.receive(second)
    if b"*" in (first, second):
        assert isinstance(info.value, SaslCancelled)
    with pytest.raises(SaslError):
        mech.receive(b64(b"anything"))


def test_unknown_mechanism():
    assert sasl_mechanism("CRAM-MD5") is None
    assert sasl_mechanism(b"\xff") is None
