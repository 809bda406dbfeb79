"""mta.checks.dkim -- DKIM signature verification (RFC 6376) with dkimpy.

Each DKIM-Signature header (up to a configured number) is verified on its own; the
public keys are fetched through our `common.dns.Resolver` (dkimpy's ``dnsfunc``
hook), in the resolver's thread pool. Per signature the result is one of RFC 8601's:

- ``pass``: the signature verifies;
- ``fail``: it does not (changed header or body, wrong key, key too short, expired);
- ``permerror``: the signature header is malformed, or its key does not exist;
- ``temperror``: DNS failed while fetching the key.

A message without signatures gives an empty list (``dkim=none``).

SECURITY: the message and the keys are untrusted. dkimpy parses both; every
exception it raises is a ``permerror`` for that signature, never a crash. The number
of signatures verified is bounded, and the message size is bounded by the SMTP
server before this runs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dkim
from twisted.internet.defer import Deferred, succeed

from common.dns import DnsTemporaryError, NoAnswer, NXDomain, Resolver

_SIGNATURE_FIELD = re.compile(rb"(?im)^dkim-signature[ \t]*:")


def _has_signature(message: bytes) -> bool:
    end = message.find(b"\r\n\r\n")
    return bool(_SIGNATURE_FIELD.search(message, 0, len(message) if end < 0 else end))


@dataclass(frozen=True)
class DkimResult:
    """The outcome for one signature."""

    result: str       # pass, fail, permerror, temperror
    domain: str       # d=, lower case ("" if unreadable)
    selector: str     # s=
    signature: str    # the first characters of b=, to tell signatures apart
    detail: str       # for the log


def _tag(sig_value: bytes, tag: bytes) -> str:
    m = re.search(rb"(?:^|;)\s*" + re.escape(tag) + rb"\s*=\s*([^;]*)", sig_value)
    if not m:
        return ""
    return re.sub(rb"\s+", b"", m.group(1)).decode("ascii", "replace")


def verify_dkim_sync(resolver: Resolver, message: bytes, max_signatures: int = 5,
                     min_key_bits: int = 1024) -> list[DkimResult]:
    """Blocking verification of every signature; call inside resolver.in_thread."""
    try:
        verifier = dkim.DKIM(message, minkey=min_key_bits, timeout=resolver.timeout)
    except dkim.DKIMException as e:
        if _has_signature(message):
            return [DkimResult("permerror", "", "", "", f"unparsable message: {e}")]
        return []
    signatures = [value for name, value in verifier.headers if name.lower() == b"dkim-signature"]
    results = []
    for index, value in enumerate(signatures[:max_signatures]):
        domain, selector = _tag(value, b"d").lower(), _tag(value, b"s")
        short_b = _tag(value, b"b")[:8]
        missing_key: list[str] = []

        def dnsfunc(name, timeout=5, missing_key=missing_key):
            text = name.decode("ascii") if isinstance(name, bytes) else name
            try:
                records = resolver.txt_sync(text)
            except (NXDomain, NoAnswer, UnicodeError):
                missing_key.append(text)
                return None
            return records[0] if records else None

        try:
            ok = verifier.verify(idx=index, dnsfunc=dnsfunc)
        except DnsTemporaryError as e:
            results.append(DkimResult("temperror", domain, selector, short_b, str(e)))
            continue
        except dkim.ValidationError as e:
            # A changed body or an expired signature did not verify; anything else
            # dkimpy validates (tags, versions, algorithms) makes the signature unusable.
            verdict = "fail" if re.search(r"body hash mismatch|expired", str(e)) else "permerror"
            results.append(DkimResult(verdict, domain, selector, short_b, str(e)))
            continue
        except dkim.DKIMException as e:
            results.append(DkimResult("permerror", domain, selector, short_b, f"{type(e).__name__}: {e}"))
            continue
        except Exception as e:  # dkimpy on hostile input: a broken signature, never a crash
            results.append(DkimResult("permerror", domain, selector, short_b, f"{type(e).__name__}: {e}"))
            continue
        if ok:
            results.append(DkimResult("pass", domain, selector, short_b, "signature verified"))
        elif missing_key:
            results.append(DkimResult("permerror", domain, selector, short_b, f"no key at {missing_key[0]}"))
        else:
            results.append(DkimResult("fail", domain, selector, short_b, "signature did not verify"))
    return results


def verify_dkim(resolver: Resolver, message: bytes, max_signatures: int = 5, min_key_bits: int = 1024) -> Deferred:
    """Deferred[list[DkimResult]], one per signature verified."""
    if not _has_signature(message):
        return succeed([])  # most mail: no thread, no parsing
    return resolver.in_thread(verify_dkim_sync, resolver, message, max_signatures, min_key_bits)
