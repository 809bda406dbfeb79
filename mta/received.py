"""mta.received -- the trace header the server prepends, and what submission adds.

`received_header()` writes an RFC 5321 section 4.4 Received field with the protocol
of RFC 3848 / RFC 6531 (ESMTP, ESMTPS, ESMTPSA, UTF8SMTPS...) and, for TLS, the
`tls` clause of RFC 8314 section 4.3 with the cipher suite under its IANA name
(`iana_cipher_name()`: OpenSSL calls TLS 1.2 suites by names of its own) and the
version as a comment. `count_received()` counts the trace fields for loop detection.
`submission_headers()` returns Date and Message-ID fields when the message from an
authenticated submission client lacks them (RFC 6409 section 8).

SECURITY: the HELO name and addresses come from the client: only a safe subset of
characters gets into the header, so no client can inject a header line.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate

#: OpenSSL's names of TLS 1.2 cipher suites -> the IANA registry's (RFC 8314 4.3 asks for
#: those). TLS 1.3 suites have the IANA name in OpenSSL too. The default cipher list
#: (ECDHE+AESGCM:ECDHE+CHACHA20) is covered, and the other AEAD and CBC suites an
#: administrator may allow; a suite not listed keeps OpenSSL's name.
IANA_CIPHERS = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "DHE-RSA-AES128-GCM-SHA256": "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "DHE-RSA-AES256-GCM-SHA384": "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "DHE-RSA-CHACHA20-POLY1305": "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-ECDSA-AES256-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES256-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384",
    "ECDHE-ECDSA-AES128-SHA": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "ECDHE-ECDSA-AES256-SHA": "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "ECDHE-RSA-AES128-SHA": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "ECDHE-RSA-AES256-SHA": "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "AES128-SHA256": "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "AES256-SHA256": "TLS_RSA_WITH_AES_256_CBC_SHA256",
    "AES128-SHA": "TLS_RSA_WITH_AES_128_CBC_SHA",
    "AES256-SHA": "TLS_RSA_WITH_AES_256_CBC_SHA",
}


def iana_cipher_name(openssl_name: str) -> str:
    """The IANA name of a cipher suite named by OpenSSL (unchanged if unknown or already IANA)."""
    return IANA_CIPHERS.get(openssl_name, openssl_name)


_UNSAFE = re.compile(r"[^A-Za-z0-9.\-_:\[\]]")
_HEADER_END = re.compile(rb"\r\n\r\n")


_last_date: tuple[int, str] = (-1, "")


def _date(when: float | None) -> str:
    """formatdate(when, localtime=True), computed once per second: it has no finer
    resolution, and building it cost as much as the rest of the header."""
    global _last_date
    second = int(time.time() if when is None else when)
    cached = _last_date
    if cached[0] != second:
        cached = _last_date = (second, formatdate(second, localtime=True))
    return cached[1]


def protocol_name(esmtp: bool, tls: bool, auth: bool, smtputf8: bool, lmtp: bool = False) -> str:
    if lmtp:
        return "LMTP"
    if not esmtp:
        return "SMTP"
    base = "UTF8SMTP" if smtputf8 else "ESMTP"
    return base + ("S" if tls else "") + ("A" if auth else "")


def _safe(text: str | None, limit: int = 255) -> str:
    return _UNSAFE.sub("?", text or "")[:limit] or "unknown"


def received_header(hostname: str, queue_id: str, protocol: str, helo: str | None, client_ip: str | None,
                    client_name: str | None = None, recipient: str | None = None,
                    tls: tuple[str, str] | None = None, when: float | None = None) -> bytes:
    """One Received field, folded, ending in CRLF."""
    ip = client_ip or "unknown"
    literal = f"IPv6:{ip}" if ":" in ip else ip
    lines = [f"Received: from {_safe(helo)} ({_safe(client_name)} [{_safe(literal)}])",
             f"\tby {_safe(hostname)} (postroom) with {protocol} id {queue_id}"]
    if recipient is not None and len(recipient) < 300 and recipient.isprintable() and ">" not in recipient:
        lines.append(f"\tfor <{recipient}>")
    if tls is not None:
        lines.append(f"\ttls {_safe(tls[1], 100)} ({_safe(tls[0], 20)})")
    lines[-1] += ";"
    lines.append("\t" + _date(when))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def header_section(message: bytes) -> bytes:
    """The header fields of message (everything before the first empty line)."""
    if message.startswith(b"\r\n"):
        return b""
    m = _HEADER_END.search(message)
    return message[:m.start() + 2] if m else message


def count_received(message: bytes) -> int:
    head = b"\r\n" + header_section(message).lower()
    return head.count(b"\r\nreceived:") + head.count(b"\r\nreceived :")


def submission_headers(message: bytes, hostname: str, queue_id: str, when: float | None = None) -> bytes:
    """Date and Message-ID fields to add, for those the message lacks (maybe b"")."""
    head = b"\r\n" + header_section(message).lower()
    out = b""
    if b"\r\ndate:" not in head:
        out += b"Date: " + _date(when).encode() + b"\r\n"
    if b"\r\nmessage-id:" not in head:
        out += b"Message-ID: <%s@%s>\r\n" % (queue_id.encode(), _safe(hostname).encode())
    return out
