"""mta.checks.dmarc -- DMARC (RFC 7489) on top of the SPF and DKIM results.

Small enough to do here, with the asynchronous resolver, instead of in a library that
looks DNS up by itself: find the RFC5322.From domain, fetch its policy record
(``_dmarc.<domain>``, else ``_dmarc.<organizational domain>``), and check whether a
passing SPF identity or DKIM signature is aligned with the From domain (relaxed:
same organizational domain; strict: the same name). Organizational domains come
from the public suffix list.

Results: ``pass``, ``fail`` (with the policy to apply: none, quarantine, reject),
``none`` (no record, or no single From domain to check), ``temperror`` (DNS failed).

SECURITY: the From header and the DMARC record are untrusted. A message with
several From addresses in different domains is ``permerror`` (a caller may treat it
as failing); records are parsed strictly, unknown tags ignored, as the RFC says.
"""

from __future__ import annotations

import email.utils
import functools
import random
import re
from dataclasses import dataclass
from pathlib import Path

from twisted.internet.defer import inlineCallbacks

from common.dns import DnsTemporaryError, NoAnswer, NXDomain, Resolver

SYSTEM_PSL = Path("/usr/share/publicsuffix/public_suffix_list.dat")


@dataclass(frozen=True)
class DmarcRecord:
    policy: str            # p=: none, quarantine, reject
    subdomain_policy: str  # sp= (defaults to p=)
    adkim: str             # r or s
    aspf: str              # r or s
    pct: int


@dataclass(frozen=True)
class DmarcResult:
    result: str            # pass, fail, none, temperror, permerror
    domain: str            # the From domain ("" when there is none)
    policy: str | None     # the policy to apply when result is fail (after pct)
    detail: str


# -- public suffix list ------------------------------------------------------


class PublicSuffixList:
    """The rules of publicsuffix.org, to find organizational domains (RFC 7489 3.2)."""

    def __init__(self, text: str):
        self.rules: set[str] = set()
        self.exceptions: set[str] = set()
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("//"):
                continue
            rule = line.split()[0].lower()
            is_exception = rule.startswith("!")
            rule = rule.lstrip("!")
            if not rule.isascii():
                try:
                    rule = ".".join(label if label == "*" else label.encode("idna").decode("ascii")
                                    for label in rule.split("."))
                except UnicodeError:
                    continue
            (self.exceptions if is_exception else self.rules).add(rule)

    def public_suffix(self, domain: str) -> str:
        labels = domain.lower().rstrip(".").split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self.exceptions:
                return ".".join(labels[i + 1:])
            if candidate in self.rules:
                return candidate
            if i + 1 < len(labels) and "*." + ".".join(labels[i + 1:]) in self.rules:
                return candidate
        return labels[-1]  # the default rule "*"

    def organizational_domain(self, domain: str) -> str:
        domain = domain.lower().rstrip(".")
        suffix = self.public_suffix(domain)
        if domain == suffix:
            return domain
        labels = domain[: -len(suffix) - 1].split(".")
        return f"{labels[-1]}.{suffix}"


@functools.lru_cache(maxsize=4)
def load_public_suffix_list(path: Path | None = None) -> PublicSuffixList:
    """The list at path; default: Debian's publicsuffix package, else the copy that
    the publicsuffixlist package ships (maintained, released as the list changes)."""
    if path is None:
        if SYSTEM_PSL.exists():
            path = SYSTEM_PSL
        else:
            import publicsuffixlist

            path = Path(publicsuffixlist.__file__).parent / "public_suffix_list.dat"
    return PublicSuffixList(path.read_text(encoding="utf-8"))


# -- the From domain and the record ------------------------------------------


def from_domain(headers: list[tuple[str, str]]) -> tuple[str | None, str, str]:
    """(domain, result, problem) for the RFC5322.From field: the domain in A-labels, or
    None with the DMARC result to give (none or permerror) and why."""
    values = [v for name, v in headers if name.lower() == "from"]
    if not values:
        return None, "none", "no From header"
    if len(values) > 1:
        return None, "permerror", "more than one From header"
    domains = {addr.rpartition("@")[2].lower().rstrip(".") for _, addr in email.utils.getaddresses(values) if "@" in addr}
    domains.discard("")
    if not domains:
        return None, "none", "From names no domain"
    if len(domains) > 1:
        return None, "permerror", "From names several domains"
    domain = domains.pop()
    try:
        domain = domain.encode("idna").decode("ascii") if not domain.isascii() else domain
    except UnicodeError:
        return None, "permerror", "From domain is not a domain name"
    if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)+", domain):
        return None, "permerror", "From domain is not a domain name"
    return domain, "", ""


def parse_record(text: str) -> DmarcRecord | None:
    """A DMARC record, or None if text is not one (RFC 7489 6.3, 6.6.3)."""
    tags: dict[str, str] = {}
    for part in text.split(";"):
        part = part.strip()
        if not part:
            continue
        name, sep, value = part.partition("=")
        if not sep:
            return None
        tags.setdefault(name.strip().lower(), value.strip())
    if text.split(";", 1)[0].replace(" ", "") != "v=DMARC1":
        return None
    policy = tags.get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        if "rua" in tags:  # 6.6.3: a record with rua but no valid p= acts as p=none
            policy = "none"
        else:
            return None
    sub = tags.get("sp", "").lower()
    sub = sub if sub in ("none", "quarantine", "reject") else policy
    adkim = tags.get("adkim", "r").lower()
    aspf = tags.get("aspf", "r").lower()
    try:
        pct = int(tags.get("pct", "100"))
    except ValueError:
        pct = 100
    return DmarcRecord(policy, sub, adkim if adkim in ("r", "s") else "r", aspf if aspf in ("r", "s") else "r",
                       min(max(pct, 0), 100))


def _aligned(mode: str, a: str, b: str, psl: PublicSuffixList) -> bool:
    a, b = a.lower().rstrip("."), b.lower().rstrip(".")
    if mode == "s":
        return a == b
    return psl.organizational_domain(a) == psl.organizational_domain(b)


@inlineCallbacks
def _fetch_record(resolver: Resolver, domain: str):
    try:
        rows = yield resolver.query(f"_dmarc.{domain}", "TXT")
    except (NXDomain, NoAnswer):
        return None
    records = [parse_record(b"".join(r.strings).decode("utf-8", "replace")) for r in rows]
    records = [r for r in records if r is not None]
    return records[0] if len(records) == 1 else None  # 6.6.3: more than one is none


@inlineCallbacks
def evaluate_dmarc(resolver: Resolver, headers: list[tuple[str, str]], spf_result: str, spf_domain: str,
                   dkim_passes: list[str], psl: PublicSuffixList, rng=random.random):
    """Deferred[DmarcResult]. spf_* are the MAIL FROM result and domain (RFC 7489 uses
    only the MAIL FROM identity, or HELO when it is empty); dkim_passes are the d=
    domains of the signatures that verified."""
    domain, result, problem = from_domain(headers)
    if domain is None:
        return DmarcResult(result, "", None, problem)
    org = psl.organizational_domain(domain)
    try:
        record = yield _fetch_record(resolver, domain)
        from_org = False
        if record is None and org != domain:
            record = yield _fetch_record(resolver, org)
            from_org = record is not None
    except DnsTemporaryError as e:
        return DmarcResult("temperror", domain, None, str(e))
    if record is None:
        return DmarcResult("none", domain, None, "no DMARC record")
    spf_ok = spf_result == "pass" and spf_domain and _aligned(record.aspf, spf_domain, domain, psl)
    dkim_ok = any(_aligned(record.adkim, d, domain, psl) for d in dkim_passes)
    if spf_ok or dkim_ok:
        how = "SPF" if spf_ok else "DKIM"
        return DmarcResult("pass", domain, None, f"aligned {how} pass")
    policy = record.subdomain_policy if from_org else record.policy
    if record.pct < 100 and rng() * 100 >= record.pct:  # 6.6.4: the next policy down
        policy = {"reject": "quarantine", "quarantine": "none"}.get(policy, policy)
    return DmarcResult("fail", domain, policy, "no aligned SPF or DKIM pass")

