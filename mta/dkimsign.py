"""mta.dkimsign -- DKIM signatures (RFC 6376, RFC 8463) on mail from local domains.

`Signer.wants(envelope)` is true for mail this server vouches for: submitted by an
authenticated user, through postroom-sendmail, or generated locally (source
submission, sendmail or local), whose envelope sender's domain (or a parent of it)
has a key in `queue.dkim` and is a local domain. `Signer.sign()` returns the
DKIM-Signature header fields to put in front of the message, one per key of that
domain (an RSA and an Ed25519 key can sign together).

Keys are PEM files as `postroom-dkim keygen` writes them (PKCS#8, RSA or Ed25519),
read at start and on reload. Signatures use relaxed/relaxed canonicalisation and
the usual header set, oversigned so From, Subject, To... cannot be added later.

SECURITY: private keys are read from files the MTA user owns; a key file that
cannot be read is logged and skipped (the mail still goes out, unsigned).
"""

from __future__ import annotations

import base64
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from common.log import get_logger

log = get_logger("mta.dkimsign")

SIGNED_SOURCES = ("submission", "sendmail", "local")
DEFAULT_HEADERS = (b"from", b"sender", b"reply-to", b"subject", b"date", b"message-id", b"to", b"cc",
                   b"mime-version", b"content-type", b"content-transfer-encoding", b"in-reply-to",
                   b"references", b"list-id", b"list-unsubscribe")


def load_private_key(path: Path, algorithm: str) -> bytes:
    """The key in the form dkimpy wants: PEM for RSA, base64 of the 32-byte seed for Ed25519."""
    pem = Path(path).read_bytes()
    if algorithm == "ed25519-sha256":
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 key")
        raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
        return base64.b64encode(raw)
    return pem


class Signer:
    def __init__(self, keys, local_domains):
        self.local_domains = frozenset(local_domains)
        self.keys: dict[str, list[tuple[bytes, bytes, bytes, tuple[bytes, ...]]]] = {}
        for k in keys:
            try:
                secret = load_private_key(k.key, k.algorithm)
            except (OSError, ValueError) as e:
                log.error("DKIM key for {domain} ({selector}) unusable: {why}", domain=k.domain,
                          selector=k.selector, why=str(e))
                continue
            headers = tuple(h.lower().encode() for h in k.headers) or DEFAULT_HEADERS
            self.keys.setdefault(k.domain, []).append((k.selector.encode(), secret, k.algorithm.encode(), headers))

    @classmethod
    def from_config(cls, queue_cfg, core_cfg) -> "Signer":
        return cls(queue_cfg.dkim, core_cfg.local_domains)

    def domain_for(self, sender: str) -> str | None:
        domain = sender.rpartition("@")[2].lower().rstrip(".")
        labels = domain.split(".")
        for i in range(len(labels) - 1):
            d = ".".join(labels[i:])
            if d in self.keys and d in self.local_domains or (d in self.keys and domain in self.local_domains):
                return d
        return None

    def wants(self, envelope) -> bool:
        return (envelope.source in SIGNED_SOURCES and "@" in envelope.sender
                and self.domain_for(envelope.sender) is not None)

    def sign(self, envelope, message: bytes) -> bytes:
        """DKIM-Signature fields (CRLF-terminated) for message; b"" when there is no key."""
        domain = self.domain_for(envelope.sender)
        if domain is None:
            return b""
        message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
        out = b""
        for selector, secret, algorithm, headers in self.keys[domain]:
            present = {line.split(b":", 1)[0].strip().lower() for line in _header_lines(message)}
            # Sign each present field once more than it occurs (oversigning), absent ones once.
            include = [h for h in headers if h in present] + [h for h in headers if h in (b"from", b"subject", b"to", b"cc", b"reply-to")]
            sig = dkim.sign(message, selector, domain.encode(), secret, include_headers=include,
                            canonicalize=(b"relaxed", b"relaxed"), signature_algorithm=algorithm,
                            linesep=b"\r\n")
            out = sig + out
        return out


def _header_lines(message: bytes):
    for line in message.split(b"\r\n"):
        if not line:
            return
        if line[:1] in (b" ", b"\t"):
            continue
        yield line
