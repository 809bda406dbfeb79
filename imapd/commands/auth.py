"""imapd.commands.auth -- STARTTLS, LOGIN, AUTHENTICATE PLAIN / LOGIN with SASL-IR
(RFC 3501 6.2, RFC 4959).

Passwords are accepted only where `plaintext_allowed` says (TLS, or as configured);
elsewhere LOGINDISABLED is advertised and LOGIN / AUTHENTICATE answer NO
[PRIVACYREQUIRED]. The password check itself is asynchronous (the glue runs
`common.auth.Authenticator`); until it answers, pipelined input waits.

SECURITY: credentials are never logged; the SASL decoders of `common.auth` bound
and strictly decode what the client sends. After a few failures the connection is
closed.
"""

from __future__ import annotations

from common.auth import SaslCancelled, SaslError, SaslLogin, SaslPlain

from ..protocol import NOT_AUTH, Bad, CheckPassword, Done, No, StartTLS, State, command

MECHANISMS = {"PLAIN": SaslPlain, "LOGIN": SaslLogin}


@command("STARTTLS", NOT_AUTH)
def starttls(conn, tag, r):
    r.end()
    if not conn.settings.tls_available or conn.secure:
        raise Bad("TLS is not available" if not conn.settings.tls_available else "TLS is already active")
    conn.finish(tag, None, Done("Begin TLS negotiation now"))
    # Anything the client sent after STARTTLS in clear text must not count: nothing
    # more is read until tls_started(); common.tls.start_tls discards it.
    conn.emit(StartTLS())
    return conn.wait("tls", tag, "STARTTLS")


def _refuse_plaintext(conn) -> None:
    if not conn.settings.plaintext_allowed(conn.secure):
        raise No("Plaintext authentication is disabled, use STARTTLS", "PRIVACYREQUIRED")


@command("LOGIN", NOT_AUTH)
def login(conn, tag, r):
    r.sp()
    username = r.astring()
    r.sp()
    password = r.astring()
    r.end()
    _refuse_plaintext(conn)
    return _check(conn, tag, "LOGIN", username.decode("utf-8", "replace"), password.decode("utf-8", "replace"), "")


def _check(conn, tag, spec_name, username, password, authzid):
    conn.emit(CheckPassword(username, password, authzid))
    return conn.wait("login", tag, spec_name, username)


@command("AUTHENTICATE", NOT_AUTH)
def authenticate(conn, tag, r):
    r.sp()
    mech_name = r.atom().upper()
    initial = None
    if not r.at_end():
        r.sp()
        initial = r._take(frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="))
        r.end()
    mech_class = MECHANISMS.get(mech_name)
    if mech_class is None:
        raise No("Unsupported authentication mechanism", "CANNOT")
    _refuse_plaintext(conn)
    mech = mech_class()
    return _sasl_step(conn, tag, mech, lambda: mech.start(initial))


def _sasl_step(conn, tag, mech, step):
    from common.auth import Challenge
    try:
        got = step()
    except SaslCancelled:
        raise Bad("Authentication cancelled") from None
    except SaslError as e:
        raise Bad("Invalid SASL response") from e
    if isinstance(got, Challenge):
        conn.send(b"+ " + got.data + b"\r\n")
        return conn.wait("sasl", tag, "AUTHENTICATE", mech)
    return _check(conn, tag, "AUTHENTICATE", got.username, got.password, got.authzid)


def sasl_input(conn, data: bytes) -> None:
    """A client line during an AUTHENTICATE exchange."""
    tag, spec, mech = conn.stop_waiting()
    from ..protocol import PENDING, CommandError
    try:
        result = _sasl_step(conn, tag, mech, lambda: mech.receive(data))
    except CommandError as e:
        conn.finish(tag, spec, e)
        return
    if result is not PENDING:
        conn.finish(tag, spec, result)


def login_finished(conn, tag, spec, user, temporary: bool = False) -> None:
    """The password check answered: a user record, or None."""
    if user is None:
        if temporary:
            conn.finish(tag, spec, No("Temporary authentication failure", "UNAVAILABLE"))
            return
        conn.auth_failures += 1
        conn.finish(tag, spec, No("Authentication failed", "AUTHENTICATIONFAILED"))
        if conn.auth_failures >= conn.settings.auth_failures_before_disconnect:
            conn.send(b"* BYE Too many authentication failures\r\n")
            conn.close_after_reply()
        return
    username = getattr(user, "name", None) or "?"
    try:
        conn.logged_in(user, username)
        defaults = conn.settings.special_use_defaults
        if defaults:
            conn.store.ensure_default_mailboxes(dict(defaults))
    except Exception as e:  # noqa: BLE001 -- an unusable maildir is a temporary failure
        conn.log.error("opening the mail store of {user} failed: {error!r}", user=username, error=e,
                       session=conn.settings.session_id)
        conn.state = State.NOT_AUTHENTICATED
        conn.store = None
        conn.user = None
        conn.finish(tag, spec, No("Mailbox store unavailable, try again later", "UNAVAILABLE"))
        return
    conn.log.info("logged in {user}", user=username, session=conn.settings.session_id)
    conn.finish(tag, spec, Done("Logged in", conn.capability_code()))

