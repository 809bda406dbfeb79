"""common.passwords -- hash and verify passwords in Dovecot's "{SCHEME}hash" form.

The stored forms are the ones Dovecot writes and reads, so a Dovecot passwd-file
works here unchanged and `doveadm pw` output can be pasted into the user file:

    {ARGON2ID}$argon2id$v=19$m=65536,t=3,p=4$...   (the default for new hashes)
    {BLF-CRYPT}$2y$10$...                           (bcrypt)
    {SHA512-CRYPT}$6$...  {SHA256-CRYPT}$5$...      (glibc / openssl passwd -6, -5)
    {PLAIN}secret                                   (accepted, with a warning)

A stored value without a "{SCHEME}" prefix is a crypt(3) string, as Dovecot's
default CRYPT scheme treats it: its "$id$" says which algorithm it is.

Hashing uses libpass (the maintained passlib fork, imported as `passlib`) with
argon2-cffi and bcrypt; SHA-crypt values are verified by the system's crypt(3)
(libxcrypt's crypt_rn) where there is one, passlib otherwise. Both functions are blocking and CPU-heavy by design:
call them off the reactor thread (common.auth does, with deferToThread).

SECURITY: `stored` comes from the administrator's user file, `password` from an
unauthenticated client. Neither is ever logged; a malformed stored value makes
verification fail (and is logged without the value). Comparisons are constant
time (passlib's own for hashes, hmac.compare_digest for PLAIN). Passwords are
bounded in length so that a client cannot make the server hash megabytes.
"""

from __future__ import annotations

import hmac
import re

from passlib.hash import argon2, bcrypt, sha256_crypt, sha512_crypt
from twisted.logger import Logger

log = Logger(namespace="postroom.passwords")

#: The schemes hash_password can write, in the order postroom recommends them.
SCHEMES = ("ARGON2ID", "BLF-CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "PLAIN")

#: Longer passwords are refused: no real password is this long, and hashing
#: attacker-chosen megabytes would be a cheap denial of service.
MAX_PASSWORD_BYTES = 1024

#: bcrypt reads only the first 72 bytes; crypt_blowfish (Dovecot, htpasswd) truncates
#: silently, the bcrypt module >= 5 raises instead, so we truncate as the others do.
BCRYPT_MAX_BYTES = 72

# Parameters for new hashes. ARGON2ID uses argon2-cffi's defaults (RFC 9106's
# low-memory recommendation: 64 MiB, 3 passes). bcrypt cost 10 is about 0.1 s
# here. SHA-crypt keeps glibc's and Dovecot's 5000 rounds so the result is the
# same shape `doveadm pw -s SHA512-CRYPT` writes; it exists for compatibility,
# ARGON2ID is the scheme to choose.
_WRITERS = {
    "ARGON2ID": argon2.using(type="ID"),
    "BLF-CRYPT": bcrypt.using(ident="2y", rounds=10),
    "SHA512-CRYPT": sha512_crypt.using(rounds=5000),
    "SHA256-CRYPT": sha256_crypt.using(rounds=5000),
}

# scheme -> (handler, the crypt prefixes that scheme's stored values must carry)
_VERIFIERS = {
    "ARGON2ID": (argon2, ("$argon2id$",)),
    "ARGON2I": (argon2, ("$argon2i$",)),
    "BLF-CRYPT": (bcrypt, ("$2y$", "$2b$", "$2a$")),
    "SHA512-CRYPT": (sha512_crypt, ("$6$",)),
    "SHA256-CRYPT": (sha256_crypt, ("$5$",)),
}

#: Dovecot's names for a password stored in clear.
PLAIN_SCHEMES = frozenset({"PLAIN", "CLEAR", "CLEARTEXT"})

_PREFIX = re.compile(r"\{([A-Za-z0-9.-]{1,32})\}")


class UnknownScheme(ValueError):
    """A scheme postroom cannot write (hash_password) or read (scheme_of)."""


def split_scheme(stored: str) -> tuple[str, str]:
    """("SCHEME", "hash") from "{SCHEME}hash"; ("CRYPT", value) when there is no prefix."""
    m = _PREFIX.match(stored)
    if m is None:
        return "CRYPT", stored
    return m.group(1).upper(), stored[m.end():]


def _crypt_scheme(value: str) -> str | None:
    """The scheme a crypt(3) string belongs to, from its "$id$" prefix."""
    for scheme, (_handler, prefixes) in _VERIFIERS.items():
        if value.startswith(prefixes):
            return scheme
    return None


def scheme_of(stored: str) -> str:
    """The effective scheme of a stored value (CRYPT resolved by its "$id$").

    Raises UnknownScheme when postroom cannot verify it; the user file loader uses
    this to warn about such users at load time rather than at their first login."""
    scheme, value = split_scheme(stored)
    if scheme == "CRYPT":
        found = _crypt_scheme(value)
        if found is None:
            raise UnknownScheme("not a crypt string postroom can verify (supported: $argon2id$, $2y$, $6$, $5$)")
        return found
    if scheme in PLAIN_SCHEMES:
        return "PLAIN"
    if scheme not in _VERIFIERS:
        raise UnknownScheme(f"unknown password scheme {{{scheme}}} (supported: {', '.join(SCHEMES)})")
    return scheme


#: Schemes the system's crypt(3) (libxcrypt on Debian, FreeBSD's libcrypt) computes:
#: several times faster than passlib's pure-Python SHA-crypt, and ctypes lets other
#: threads run meanwhile (a login does not hold up the sessions of its process).
_SYSTEM_CRYPT_SCHEMES = frozenset({"SHA512-CRYPT", "SHA256-CRYPT"})


def _load_crypt_rn():
    import ctypes
    import ctypes.util
    name = ctypes.util.find_library("crypt")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
        fn = lib.crypt_rn  # libxcrypt: returns NULL (never a "*0" string) on failure
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int]
    fn.restype = ctypes.c_char_p
    return fn


_crypt_rn = _load_crypt_rn()
_CRYPT_DATA_SIZE = 32768  # struct crypt_data in libxcrypt


def _system_crypt(secret: bytes, setting: str) -> bytes | None:
    """crypt(3) of secret with the stored value as setting, or None when the system
    has no crypt_rn (then passlib does it)."""
    if _crypt_rn is None:
        return None
    import ctypes
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    result = _crypt_rn(secret, setting.encode("ascii", "replace"), data, _CRYPT_DATA_SIZE)
    return result if result else b"*"


def _secret(password: str | bytes, scheme: str) -> bytes:
    secret = password.encode("utf-8") if isinstance(password, str) else bytes(password)
    if scheme == "BLF-CRYPT":
        secret = secret[:BCRYPT_MAX_BYTES]
    return secret


def hash_password(password: str, scheme: str = "ARGON2ID") -> str:
    """The password hashed with scheme, as "{SCHEME}hash". Blocking.

    Raises UnknownScheme for a scheme not in SCHEMES and ValueError for a password
    that is empty, longer than MAX_PASSWORD_BYTES or contains a NUL."""
    scheme = scheme.upper()
    raw = password.encode("utf-8")
    if not raw:
        raise ValueError("the password is empty")
    if len(raw) > MAX_PASSWORD_BYTES:
        raise ValueError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    if b"\0" in raw:
        raise ValueError("the password contains a NUL character")
    if scheme == "PLAIN":
        if any(c in password for c in ":\r\n"):
            raise ValueError("a PLAIN password cannot contain ':' or a line break (the user file could not hold it)")
        return "{PLAIN}" + password
    writer = _WRITERS.get(scheme)
    if writer is None:
        raise UnknownScheme(f"unknown password scheme {scheme!r} (choose one of {', '.join(SCHEMES)})")
    return "{" + scheme + "}" + writer.hash(_secret(raw, scheme))


def verify_password(stored: str, password: str | bytes) -> bool:
    """Whether password matches the stored "{SCHEME}hash" (or bare crypt string).

    Blocking (a deliberate fraction of a second for the strong schemes): call it off
    the reactor thread. Never raises for bad input; a stored value postroom cannot
    read is logged (without the value) and never matches."""
    secret = password.encode("utf-8", "surrogateescape") if isinstance(password, str) else bytes(password)
    if not secret or len(secret) > MAX_PASSWORD_BYTES:
        return False
    scheme, value = split_scheme(stored)
    if scheme in PLAIN_SCHEMES:
        return hmac.compare_digest(value.encode("utf-8", "surrogateescape"), secret)
    if scheme == "CRYPT":
        resolved = _crypt_scheme(value)
        if resolved is None:
            if value:
                log.error("stored password is not a crypt string postroom can verify")
            return False
        scheme = resolved
    entry = _VERIFIERS.get(scheme)
    if entry is None:
        log.error("stored password has an unknown scheme {scheme}", scheme=scheme)
        return False
    handler, prefixes = entry
    if not value.startswith(prefixes):
        log.error("stored {scheme} password does not look like one", scheme=scheme)
        return False
    if b"\0" in secret:
        # No stored hash can contain one (the writers refuse it); bcrypt would raise.
        return False
    if scheme in _SYSTEM_CRYPT_SCHEMES:
        computed = _system_crypt(secret, value)
        if computed is not None:
            return hmac.compare_digest(computed, value.encode("ascii", "replace"))
    try:
        return bool(handler.verify(_secret(secret, scheme), value))
    except (ValueError, TypeError) as e:
        log.error("stored {scheme} password is malformed: {error}", scheme=scheme, error=type(e).__name__)
        return False
