"""common.auth -- password logins for every daemon: twisted.cred, throttling, SASL.

    auth = Authenticator(cfg.core, reactor)          # reads cfg.core.auth.users_file
    if not auth.plaintext_allowed(secure, client_ip): refuse AUTH / LOGIN / USER
    record = await auth.login(username, password, client_ip)   # or LoginFailed

`Authenticator.login` goes through a twisted.cred Portal: `PasswordFileChecker`
verifies the password against the user file in a thread (the hash is meant to be
slow; the reactor never waits for it), `MailRealm` turns the user name into an
`IMailUser` avatar carrying the `UserRecord`.

Failures are slowed, per client address and per user name: the answer to a
failed login waits `failure_delay`, doubled for each recent failure (of that
address, or for that user name, whichever has more) up to `max_failure_delay`;
failures older than `failure_window` are forgotten. A success is answered at
once, so an attacker hammering someone's name never slows the real owner, and a
client address may have only `max_logins_in_progress` logins waiting at once, so
opening more connections does not buy more guesses. Both tables are bounded
(least recently seen forgotten first). Delays use reactor.callLater; nothing
sleeps.

`plaintext_allowed` is the rule "no password over an unencrypted connection":
TLS, or `allow_plaintext`, or a loopback client when `loopback_is_secure`.
Being on loopback says nothing about relaying: that is the MTA's policy.

The SASL part (`decode_plain`, `SaslPlain`, `SaslLogin`) is sans-IO: base64 lines
in, challenges or credentials out, shared by SMTP AUTH (RFC 4954), IMAP
AUTHENTICATE and POP3 AUTH.

SECURITY: everything a client sends here is hostile. An unknown user and a wrong
password give the same LoginFailed with the same text after the same kind of
delay, and an unknown user still costs one hash verification (against a hash
from the user file), so neither the answer nor its timing says whether a name
exists. Passwords are never logged; user names are logged shortened and
escaped. SASL input is bounded and strictly decoded.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import secrets
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from zope.interface import Attribute, Interface, implementer

from .errors import TemporaryError
from .passwords import MAX_PASSWORD_BYTES, UnknownScheme, hash_password, scheme_of, verify_password
from .users import UserDB, UserRecord

if TYPE_CHECKING:
    from .config.core import AuthConfig, PostroomConfig

log = Logger(namespace="postroom.auth")

#: A longer user name cannot exist (RFC 5321 bounds an address to 256 octets).
MAX_USERNAME_BYTES = 320
#: Per key, how many recent failures are kept: the delay has long reached its bound.
MAX_FAILURES_REMEMBERED = 32

ThreadRunner = Callable[..., Deferred]


class LoginFailed(Exception):
    """The one answer to a failed login, whatever the reason (unknown user, wrong
    password, too many attempts). Protocols show `public`; it never varies."""

    public = "Authentication failed"

    def __init__(self) -> None:
        super().__init__(self.public)


def temporary_auth_failure(detail: str) -> TemporaryError:
    """What login() errbacks with when the check itself broke (RFC 4954's 454 4.7.0)."""
    return TemporaryError(454, "4.7.0", "Temporary authentication failure", detail)


# --- twisted.cred: checker, realm, avatar ------------------------------------------------


class IMailUser(Interface):
    """An authenticated mail user: what a daemon gets from a successful login."""

    name = Attribute("the user's name, lower-cased (user@domain)")
    record = Attribute("the common.users.UserRecord the password was checked against")


@implementer(IMailUser)
@dataclass(frozen=True)
class MailUser:
    record: UserRecord

    @property
    def name(self) -> str:
        return self.record.name


def _text(value: str | bytes, limit: int) -> str | None:
    """value as text, or None if it is not UTF-8 or longer than limit bytes."""
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(value)
    if len(raw) > limit:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _loggable(name: str | bytes) -> str:
    """A user name as it may appear in a log line: escaped, at most 64 characters."""
    text = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
    text = text[:64].encode("unicode_escape").decode("ascii")
    return text + ("..." if len(name) > 64 else "")


@implementer(ICredentialsChecker)
class PasswordFileChecker:
    """Checks IUsernamePassword credentials against a UserDB.

    The password is verified by `run_in_thread(verify_password, stored, password)`
    (default deferToThread). An unknown user, or one whose stored password postroom
    cannot verify, costs the same verification against a reference hash, and fails
    with the same UnauthorizedLogin."""

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, users: UserDB, run_in_thread: ThreadRunner | None = None,
                 fallback_scheme: str = "ARGON2ID"):
        self.users = users
        self.run_in_thread = run_in_thread or deferToThread
        self.fallback_scheme = fallback_scheme
        self._fallback: str | None = None
        self._fallback_lock = threading.Lock()

    def requestAvatarId(self, credentials: Any) -> Deferred:
        name = _text(credentials.username, MAX_USERNAME_BYTES)
        record = self.users.lookup(name) if name else None
        if record is not None and not _verifiable(record.password):
            record = None
        password = credentials.password
        if record is None:
            d = self.run_in_thread(self._verify_unknown, password)
        else:
            d = self.run_in_thread(verify_password, record.password, password)

        def decide(matched: bool) -> str:
            if matched and record is not None:
                return record.name
            raise UnauthorizedLogin()

        return d.addCallback(decide)

    def _verify_unknown(self, password: str | bytes) -> bool:
        """Spend what a real user's check costs, then fail. Runs in the thread."""
        verify_password(self.users.reference_hash() or self._fallback_hash(), password)
        return False

    def _fallback_hash(self) -> str:
        with self._fallback_lock:
            if self._fallback is None:
                self._fallback = hash_password(secrets.token_urlsafe(24), self.fallback_scheme)
            return self._fallback


def _verifiable(stored: str) -> bool:
    try:
        return bool(stored) and scheme_of(stored) is not None
    except UnknownScheme:
        return False


@implementer(IRealm)
class MailRealm:
    """Gives the IMailUser avatar for a name the checker accepted."""

    def __init__(self, users: UserDB):
        self.users = users

    def requestAvatar(self, avatarId: str | bytes, mind: object, *interfaces: Any):
        if IMailUser not in interfaces:
            raise NotImplementedError("MailRealm only provides IMailUser")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        record = self.users.lookup(name)
        if record is None:  # removed by a reload between the check and now
            raise UnauthorizedLogin()
        return IMailUser, MailUser(record), lambda: None


# --- throttling ----------------------------------------------------------------------------


class FailureTable:
    """Recent failure times per key (client address or user name), bounded in keys
    (least recently touched forgotten first) and in times per key."""

    def __init__(self, size: int, window: float):
        self.size = size
        self.window = window
        self._entries: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        times = self._entries.get(key)
        if times is None:
            return None
        while times and times[0] <= now - self.window:
            times.popleft()
        if not times:
            del self._entries[key]
            return None
        return times

    def count(self, key: str, now: float) -> int:
        times = self._recent(key, now)
        return len(times) if times is not None else 0

    def add(self, key: str, now: float) -> int:
        """Note one failure now; return the recent failures including it."""
        times = self._recent(key, now)
        if times is None:
            times = self._entries[key] = deque(maxlen=MAX_FAILURES_REMEMBERED)
        times.append(now)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return len(times)

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def failure_delay(config: AuthConfig, failures: int) -> float:
    """How long to wait before answering a failure that makes `failures` recent ones."""
    if failures <= 0:
        return 0.0
    return min(float(config.max_failure_delay), float(config.failure_delay) * 2 ** (failures - 1))


def client_ip_address(client_ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """client_ip parsed (zone index dropped, IPv4-mapped IPv6 unmapped), or None."""
    try:
        ip = ipaddress.ip_address(client_ip.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_key(client_ip: str) -> str:
    """The throttling key for a client: the IPv4 address, or the IPv6 /64 (one
    subscriber usually has a whole /64, so single IPv6 addresses are cheap)."""
    ip = client_ip_address(client_ip)
    if ip is None:
        return client_ip[:100]
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def is_loopback(client_ip: str) -> bool:
    """127.0.0.0/8, ::1, or ::ffff:127.x.y.z."""
    ip = client_ip_address(client_ip)
    return ip is not None and ip.is_loopback


class Authenticator:
    """Logins for one daemon: the user file, the Portal, and the failure throttling.

    `users` defaults to UserDB(core.auth.users_file); `run_in_thread` to
    deferToThread (tests pass a runner of their own)."""

    def __init__(self, core: PostroomConfig, reactor: Any, users: UserDB | None = None,
                 run_in_thread: ThreadRunner | None = None):
        self.config = core.auth
        self.reactor = reactor
        self.users = users if users is not None else UserDB(core.auth.users_file)
        self.checker = PasswordFileChecker(self.users, run_in_thread, core.auth.default_scheme)
        self.portal = Portal(MailRealm(self.users), [self.checker])
        self.by_address = FailureTable(self.config.tracked_failures, float(self.config.failure_window))
        self.by_user = FailureTable(self.config.tracked_failures, float(self.config.failure_window))
        self._in_progress: dict[str, int] = {}

    def reload(self) -> bool:
        """Re-read the user file if it changed (SIGHUP)."""
        return self.users.reload()

    def plaintext_allowed(self, secure: bool, client_ip: str) -> bool:
        """May a password be sent on this connection? Only over TLS, unless
        allow_plaintext, or from loopback when loopback_is_secure."""
        if secure or self.config.allow_plaintext:
            return True
        return self.config.loopback_is_secure and is_loopback(client_ip)

    def login(self, username: str | bytes, password: str | bytes, client_ip: str,
              authzid: str = "") -> Deferred:
        """Deferred firing the UserRecord, or failing with LoginFailed after the delay.

        authzid is SASL's authorization identity: postroom lets nobody act as
        someone else, so a non-empty one must name the same user (else the login
        fails like a wrong password). A broken check (not a wrong password) fails
        with a TemporaryError (454 4.7.0) instead."""
        address = address_key(client_ip)
        user_key = (_text(username, MAX_USERNAME_BYTES) or "<invalid>").lower()
        result: Deferred = Deferred()
        if self._in_progress.get(address, 0) >= self.config.max_logins_in_progress:
            log.warn("login refused: too many logins in progress from {ip}", ip=client_ip)
            delay = max(float(self.config.failure_delay),
                        failure_delay(self.config, self.by_address.count(address, self.reactor.seconds())))
            self.reactor.callLater(delay, _fail, result)
            return result
        self._in_progress[address] = self._in_progress.get(address, 0) + 1
        if authzid and authzid.lower() != user_key:
            password = b""  # checked (for the same cost) but can never match
        raw_user = username.encode("utf-8", "surrogatepass") if isinstance(username, str) else bytes(username)
        raw_password = password.encode("utf-8", "surrogatepass") if isinstance(password, str) else bytes(password)
        if len(raw_password) > MAX_PASSWORD_BYTES:
            raw_password = b""
        attempt = self.portal.login(UsernamePassword(raw_user, raw_password), None, IMailUser)

        def succeeded(answer: tuple) -> None:
            self._release(address)
            _interface, avatar, _logout = answer
            self.by_user.forget(user_key)
            log.info("login {user} from {ip}", user=avatar.name, ip=client_ip)
            if not result.called:
                result.callback(avatar.record)

        def failed(reason: Any) -> None:
            if not reason.check(UnauthorizedLogin):
                self._release(address)
                log.failure("login check for {user} from {ip} broke", reason,
                            user=_loggable(username), ip=client_ip)
                if not result.called:
                    result.errback(temporary_auth_failure(f"{reason.type.__name__}: {reason.value}"))
                return
            now = self.reactor.seconds()
            failures = max(self.by_address.add(address, now), self.by_user.add(user_key, now))
            delay = failure_delay(self.config, failures)
            log.info("login failed for {user} from {ip} ({failures} recent), answering in {delay:.2f}s",
                     user=_loggable(username), ip=client_ip, failures=failures, delay=delay)

            def answer() -> None:
                self._release(address)
                _fail(result)

            self.reactor.callLater(delay, answer)

        attempt.addCallbacks(succeeded, failed)
        attempt.addErrback(lambda reason: log.failure("login bookkeeping broke", reason))
        return result

    def _release(self, address: str) -> None:
        left = self._in_progress.get(address, 1) - 1
        if left > 0:
            self._in_progress[address] = left
        else:
            self._in_progress.pop(address, None)


def _fail(result: Deferred) -> None:
    if not result.called:  # the caller may have cancelled while we waited
        result.errback(LoginFailed())


# --- SASL (sans-IO) ------------------------------------------------------------------------

#: Longest decoded field (authzid, authcid, password) accepted.
MAX_SASL_FIELD = MAX_PASSWORD_BYTES
#: Longest base64 line accepted: PLAIN with three fields of MAX_SASL_FIELD, encoded.
MAX_SASL_LINE = 4 * ((3 * MAX_SASL_FIELD + 2 + 2) // 3)

USERNAME_PROMPT = b"VXNlcm5hbWU6"  # base64 of "Username:" (the LOGIN mechanism)
PASSWORD_PROMPT = b"UGFzc3dvcmQ6"  # base64 of "Password:"


class SaslError(ValueError):
    """A malformed SASL response (SMTP 501 5.5.2; IMAP BAD or NO; POP3 -ERR)."""


class SaslCancelled(SaslError):
    """The client answered a challenge with "*" (SMTP 501 5.7.0; IMAP BAD)."""

    def __init__(self) -> None:
        super().__init__("authentication cancelled")


@dataclass(frozen=True)
class Challenge:
    """Send this base64 text to the client ("334 " in SMTP, "+ " in IMAP and POP3)."""

    data: bytes


@dataclass(frozen=True)
class Credentials:
    """What the exchange produced; pass to Authenticator.login(username, password,
    client_ip, authzid=authzid)."""

    username: str
    password: str
    authzid: str = ""

    def __repr__(self) -> str:  # keep the password out of any log or traceback
        return f"Credentials(username={self.username!r}, authzid={self.authzid!r})"


def decode_b64(data: bytes, limit: int = MAX_SASL_LINE) -> bytes:
    """Strict base64 (RFC 4648: canonical, padded, nothing else). Raises SaslError.

    "=" alone is RFC 4954's empty initial response and decodes to b""."""
    data = bytes(data).strip(b" \t\r\n")
    if len(data) > limit:
        raise SaslError("response too long")
    if data == b"=":
        return b""
    try:
        decoded = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise SaslError("response is not valid base64") from None
    if base64.b64encode(decoded) != data:  # excess padding or stray bits: not canonical
        raise SaslError("response is not valid base64")
    return decoded


def _field(raw: bytes, what: str) -> str:
    if len(raw) > MAX_SASL_FIELD:
        raise SaslError(f"{what} too long")
    if b"\0" in raw:
        raise SaslError(f"{what} contains NUL")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SaslError(f"{what} is not UTF-8") from None


def decode_plain(b64: bytes) -> tuple[str, str, str]:
    """(authzid, authcid, password) from a PLAIN response (RFC 4616). Raises SaslError."""
    message = decode_b64(b64)
    parts = message.split(b"\0")
    if len(parts) != 3:
        raise SaslError("PLAIN needs exactly three NUL-separated fields")
    authzid, authcid, password = (_field(p, w) for p, w in zip(parts, ("authzid", "user name", "password")))
    if not authcid or not password:
        raise SaslError("PLAIN needs a user name and a password")
    return authzid, authcid, password


def _is_cancel(line: bytes) -> bool:
    return bytes(line).strip(b" \t\r\n") == b"*"


class _SaslMechanism:
    """What both mechanisms share: "*" cancels, nothing is read after the end."""

    name = ""

    def __init__(self) -> None:
        self.done = False

    def receive(self, line: bytes) -> Challenge | Credentials:
        """The next step for one response line (without its CRLF)."""
        if self.done:
            raise SaslError("the exchange is already finished")
        if _is_cancel(line):
            self.done = True
            raise SaslCancelled()
        try:
            return self._step(line)
        except SaslError:
            self.done = True
            raise

    def _step(self, line: bytes) -> Challenge | Credentials:
        raise NotImplementedError


class SaslPlain(_SaslMechanism):
    """The PLAIN mechanism: one response carrying authzid, user name and password.

        mech = SaslPlain()
        step = mech.start(initial)      # initial response or None
        while isinstance(step, Challenge):
            send(step.data); step = mech.receive(next_line)
        creds = step                    # Credentials

    receive() raises SaslCancelled for "*" and SaslError for anything malformed."""

    name = "PLAIN"

    def start(self, initial: bytes | None) -> Challenge | Credentials:
        if initial is None:
            return Challenge(b"")
        self.done = True
        return self._step(initial)

    def _step(self, line: bytes) -> Credentials:
        self.done = True
        authzid, authcid, password = decode_plain(line)
        return Credentials(authcid, password, authzid)


class SaslLogin(_SaslMechanism):
    """The LOGIN mechanism: prompts "Username:" then "Password:", one base64 line each.

    An initial response (SMTP "AUTH LOGIN dXNlcg==") is taken as the user name.
    Same use as SaslPlain."""

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self.username: str | None = None

    def start(self, initial: bytes | None) -> Challenge | Credentials:
        if initial is None:
            return Challenge(USERNAME_PROMPT)
        return self.receive(initial)

    def _step(self, line: bytes) -> Challenge | Credentials:
        what = "user name" if self.username is None else "password"
        value = _field(decode_b64(line, 4 * (MAX_SASL_FIELD // 3 + 1)), what)
        if self.username is None:
            if not value:
                raise SaslError("the user name is empty")
            self.username = value
            return Challenge(PASSWORD_PROMPT)
        self.done = True
        return Credentials(self.username, value)


MECHANISMS: dict[str, type[SaslPlain] | type[SaslLogin]] = {"PLAIN": SaslPlain, "LOGIN": SaslLogin}


def sasl_mechanism(name: str | bytes) -> SaslPlain | SaslLogin | None:
    """A fresh state machine for the named mechanism (any case), or None if unsupported."""
    if isinstance(name, bytes):
        name = name.decode("ascii", "replace")
    cls = MECHANISMS.get(name.upper())
    return cls() if cls else None
