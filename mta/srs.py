"""mta.srs -- the Sender Rewriting Scheme, in the SRS0/SRS1 forms libsrs2 and postsrsd write.

When an alias forwards mail to a remote address, the next server checks SPF for
the original sender's domain against this host and fails. SRS rewrites the
envelope sender toward such a recipient into an address of our own SRS domain
that still names the original one, and that only we can have made:

    carol@c.example                -> SRS0=HHHH=TT=c.example=carol@srs.example.org
    SRS0=hhhh=tt=c.example=carol@fwd.example   (already forwarded once)
                                   -> SRS1=HHHH=fwd.example==hhhh=tt=c.example=carol@srs.example.org

HHHH is the start of an HMAC-SHA1 over the (lower-cased) other fields with the
first secret, in base64; TT is the day of the rewrite, two base32 characters
(days since the epoch, modulo 1024). A bounce to such an address comes back here
and is reversed: an SRS0 address whose hash verifies with any of the secrets and
whose day is at most `max_age` ago gives the original sender; an SRS1 address
gives the SRS0 address at the domain that made it, where it goes next. Hashes and
days compare without regard to case, as libsrs2 does, because servers on the way
may change the case of a local part. Addresses in the sender's own SRS domain are
not rewritten again.

`Srs.from_config(queue.srs, uid)` reads the secrets (one per line: the first signs,
every one verifies, so a new secret is added as the first line and the old one
kept until mail signed with it has aged out).

SECURITY: reversed addresses come from the network: the HMAC makes a forged one
fail (the receiving side refuses it at RCPT with 550 5.1.1, so the SRS domain is no
open relay). The secret file must belong to the MTA's user with no access for
others (mta.queue.routing.private_file_problem); a bad file is a configuration
error. Secrets never reach a log.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from pathlib import Path

TIME_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
TIME_PRECISION = 86400          # one day
TIME_SLOTS = 1024               # two base32 characters
SEPARATORS = "=-+"              # what may follow SRS0/SRS1
MAX_ADDRESS = 512


class Srs:
    """Forward and reverse rewriting for one SRS domain."""

    def __init__(self, domain: str, secrets: list[bytes], max_age_days: int = 21, hash_length: int = 4,
                 separator: str = "=", clock=time.time):
        if not secrets or not all(secrets):
            raise ValueError("SRS needs at least one non-empty secret")
        if separator not in SEPARATORS:
            raise ValueError(f"SRS separator must be one of {SEPARATORS}")
        self.domain = domain.lower().rstrip(".")
        self.secrets = list(secrets)
        self.max_age = max_age_days
        self.hash_length = hash_length
        self.separator = separator
        self.clock = clock

    @classmethod
    def from_config(cls, srs_cfg, uid: int) -> "Srs | None":
        """The Srs of `queue.srs`, or None when SRS is off. Raises ConfigError."""
        if srs_cfg is None or not srs_cfg.domain:
            return None
        from common.config import ConfigError

        from .queue.routing import private_file_problem

        problem = private_file_problem(srs_cfg.secret_file, uid)
        if problem is None:
            try:
                lines = Path(srs_cfg.secret_file).read_bytes().splitlines()
            except OSError as e:
                problem = f"{srs_cfg.secret_file}: {e.strerror}"
        if problem is None:
            secrets = [line.strip() for line in lines if line.strip()]
            if not secrets:
                problem = f"{srs_cfg.secret_file} holds no secret"
        if problem is not None:
            raise ConfigError(None, None, "queue.srs.secret_file", problem)
        return cls(srs_cfg.domain, secrets, max(1, int(srs_cfg.max_age // TIME_PRECISION)))

    # -- the pieces

    def _hash(self, secret: bytes, *fields: str) -> str:
        mac = hmac.new(secret, b"".join(f.encode("utf-8").lower() for f in fields), hashlib.sha1)
        return base64.b64encode(mac.digest()).decode()[: self.hash_length]

    def _hash_ok(self, given: str, *fields: str) -> bool:
        if len(given) < self.hash_length:
            return False
        given = given[: self.hash_length].lower()
        return any(hmac.compare_digest(self._hash(s, *fields).lower(), given) for s in self.secrets)

    def _stamp(self) -> str:
        day = int(self.clock() // TIME_PRECISION)
        return TIME_CHARS[(day >> 5) & 31] + TIME_CHARS[day & 31]

    def _stamp_ok(self, stamp: str) -> bool:
        if len(stamp) != 2 or any(c not in TIME_CHARS for c in stamp.upper()):
            return False
        then = (TIME_CHARS.index(stamp[0].upper()) << 5) | TIME_CHARS.index(stamp[1].upper())
        now = int(self.clock() // TIME_PRECISION) % TIME_SLOTS
        while now < then:
            now += TIME_SLOTS
        return now - then <= self.max_age

    # -- forward

    def forward(self, sender: str) -> str:
        """The SRS form of sender for mail forwarded from here; sender unchanged when it
        is null, has no domain, or is already in the SRS domain."""
        local, at, host = sender.rpartition("@")
        if not at or not local or not host or host.lower().rstrip(".") == self.domain:
            return sender
        sep = self.separator
        tag, mark = local[:4].upper(), local[4:5]
        if tag == "SRS1" and mark and mark in SEPARATORS:
            # SRS1=hash=first-host==rest@other: keep the first forwarder's host and the rest.
            parts = local[5:].split("=", 2)
            if len(parts) != 3 or not parts[1] or not parts[2]:
                return sender
            _, first_host, rest = parts
            return f"SRS1{sep}{self._hash(self.secrets[0], first_host, rest)}={first_host}={rest}@{self.domain}"
        if tag == "SRS0" and mark and mark in SEPARATORS:
            rest = local[4:]          # with its separator: SRS1=hash=host==hhhh=tt=...
            return f"SRS1{sep}{self._hash(self.secrets[0], host, rest)}={host}={rest}@{self.domain}"
        stamp = self._stamp()
        return f"SRS0{sep}{self._hash(self.secrets[0], stamp, host, local)}={stamp}={host}={local}@{self.domain}"

    # -- reverse

    def handles(self, address: str) -> bool:
        """address is an SRS0 or SRS1 address in our SRS domain (valid or not)."""
        local, at, host = address.rpartition("@")
        return (bool(at) and host.lower().rstrip(".") == self.domain and local[:4].upper() in ("SRS0", "SRS1")
                and local[4:5] != "" and local[4:5] in SEPARATORS)

    def reverse(self, address: str) -> str | None:
        """Where a bounce to one of our SRS addresses goes: the original sender (SRS0),
        or the SRS0 address of the first forwarder (SRS1). None when the address is
        malformed, its hash is wrong (forged) or it is older than max_age."""
        if not self.handles(address) or len(address) > MAX_ADDRESS:
            return None
        local = address.rpartition("@")[0]
        if local[:4].upper() == "SRS1":
            parts = local[5:].split("=", 2)
            if len(parts) != 3 or not all(parts):
                return None
            given, host, rest = parts
            return f"SRS0{rest}@{host}" if self._hash_ok(given, host, rest) else None
        parts = local[5:].split("=", 3)
        if len(parts) != 4 or not all(parts):
            return None
        given, stamp, host, user = parts
        if not self._stamp_ok(stamp) or not self._hash_ok(given, stamp, host, user):
            return None
        return f"{user}@{host}"
