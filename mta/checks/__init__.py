"""mta.checks -- SPF, DKIM, DMARC and DNS blocklists on mail from outside.

The SMTP glue calls one `MessageChecks` per process at each stage; every method
returns a Deferred that never errbacks (an unexpected error becomes 451 4.3.0):

    checks = MessageChecks(cfg, reactor)            # cfg: common.config.Config for "mta"
    error = await checks.connect(client_ip)         # DNS blocklists at connect
    info = {"client_ip": ip, "helo": helo, "sender": sender}   # one per transaction
    error = await checks.mail_from(ip, helo, sender, info)     # SPF (MAIL FROM and HELO); keeps info["spf"]
    error = await checks.rcpt(ip, recipient)        # DNS blocklists at RCPT
    verdict = await checks.data(info, message)      # DKIM, DMARC, Authentication-Results

`error` is None (go on) or a `common.errors.MailError` to answer with. Per
transaction state lives in the caller's `info` dict: `mail_from` stores its
`SpfResult` as ``info["spf"]``; `data` uses it (or runs SPF itself when it is
missing). `data` returns `DataVerdict(error, message, extra)`: ``message`` is what to
spool (our Authentication-Results header prepended, forged ones removed, plus the
quarantine header when DMARC says quarantine), ``extra`` is ``{"dmarc":
"quarantine"}`` for a quarantined message, else empty. Pass `data` the message as
received, before the Received header is prepended.

What is refused, by default (docs/checks.md has every setting):

- a client listed by a DNS blocklist: 554 5.7.1 naming the list;
- DMARC fail where the domain says p=reject: 550 5.7.1 at end of data;
- DMARC fail with p=quarantine: accepted, marked with ``X-Postroom-Quarantine: dmarc``;
- a DNS failure that leaves a check undecided: 451 4.4.3 (never accepted silently,
  never refused for good); a DKIM key that cannot be fetched only matters when
  DMARC does not pass anyway.

SPF results are recorded only unless configured otherwise (RFC 7208 leaves the
policy to the receiver, and DMARC uses the result).

SECURITY: everything here is about untrusted input: the client's address is the
connection's (or a trusted PROXY header's), HELO, sender and message are the
client's, DNS answers are the world's. Headers claiming our authserv-id are removed
before ours is added, so a Sieve rule or a reader can trust the one at the top.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from twisted.internet.defer import Deferred, inlineCallbacks, maybeDeferred, succeed

from common.config.mta_checks import ChecksConfig, DnsConfig
from common.dns import DnsTemporaryError, Resolver
from common.errors import MailError, PermanentError, TemporaryError, unexpected
from common.log import get_logger

from . import authresults, dkim, dmarc, dnsbl, spf
from .spf import SpfResult

log = _log = get_logger("mta.checks")

DNS_TEMPFAIL_TEXT = "Temporary DNS failure, try again later"


@dataclass
class DataVerdict:
    """What end of data decided: an error to answer with, or the message to spool."""

    error: MailError | None
    message: bytes
    extra: dict = field(default_factory=dict)


def _dns_tempfail(detail: str) -> TemporaryError:
    return TemporaryError(451, "4.4.3", DNS_TEMPFAIL_TEXT, detail)


class MessageChecks:
    """The checks of `checks:` in mta.yaml; see the module docstring."""

    def __init__(self, cfg, reactor=None, resolver: Resolver | None = None):
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811
        self.reactor = reactor
        self.cfg: ChecksConfig = cfg.daemon.checks
        self.hostname: str = cfg.core.hostname
        self.authserv_id = self.cfg.authserv_id or self.hostname
        self._own_resolver = resolver is None
        self.resolver = resolver or Resolver.from_config(getattr(cfg.daemon, "dns", None) or DnsConfig(), reactor)
        self.psl = dmarc.load_public_suffix_list(self.cfg.dmarc.public_suffix_list)

    def close(self) -> None:
        """Stop the resolver's threads if this object made the resolver."""
        if self._own_resolver:
            self.resolver.close()

    # -- stages ------------------------------------------------------------

    def connect(self, client_ip: str) -> Deferred:
        if self.cfg.dnsbl.stage != "connect":
            return succeed(None)
        return self._guard(self._dnsbl, client_ip)

    def rcpt(self, client_ip: str, recipient: str) -> Deferred:
        if self.cfg.dnsbl.stage != "rcpt":
            return succeed(None)
        return self._guard(self._dnsbl, client_ip)

    def mail_from(self, client_ip: str, helo: str, sender: str, info: dict | None = None) -> Deferred:
        if not self.cfg.spf.enabled:
            return succeed(None)
        return self._guard(self._mail_from, client_ip, helo, sender, info)

    def data(self, info: dict, message: bytes) -> Deferred:
        d = maybeDeferred(self._data, info, message)

        def failed(failure):
            log.failure("checks at end of data failed", failure)
            return DataVerdict(unexpected(failure.value), message, {})

        return d.addErrback(failed)

    # -- implementation ----------------------------------------------------

    def _guard(self, function, *args) -> Deferred:
        def failed(failure):
            log.failure("check failed unexpectedly", failure)
            return unexpected(failure.value)

        return maybeDeferred(function, *args).addErrback(failed)

    @inlineCallbacks
    def _dnsbl(self, client_ip: str):
        zones = self.cfg.dnsbl.zones
        if not zones:
            return None
        try:
            zone = yield dnsbl.lookup(self.resolver, client_ip, zones)
        except DnsTemporaryError as e:
            if self.cfg.dnsbl.temperror == "record":
                log.warn("DNS blocklist lookup for {client_ip} failed, going on: {error}", client_ip=client_ip, error=str(e))
                return None
            return _dns_tempfail(f"DNS blocklist lookup for {client_ip}: {e}")
        if zone is None:
            return None
        log.info("client {client_ip} listed by {zone}", client_ip=client_ip, zone=zone)
        return PermanentError(554, "5.7.1", f"Service unavailable; client host [{client_ip}] blocked using {zone}",
                              f"client {client_ip} listed by {zone}")

    def _spf(self, client_ip: str, helo: str, sender: str) -> Deferred:
        return spf.check_spf(self.resolver, client_ip, helo or "", sender or "", self.hostname)

    @inlineCallbacks
    def _mail_from(self, client_ip: str, helo: str, sender: str, info: dict | None):
        result: SpfResult = yield self._spf(client_ip, helo, sender)
        if info is not None:
            info["spf"] = result
        for r in (result, result.helo_result):
            if r is not None:
                log.info("SPF {result} for {identity} {domain} from {client_ip}: {explanation}", result=r.result,
                         identity=r.identity, domain=r.domain, client_ip=client_ip, explanation=r.explanation)
        return self._spf_error(result, client_ip)

    def _spf_error(self, result: SpfResult, client_ip: str) -> MailError | None:
        action = getattr(self.cfg.spf, result.result, "record")
        if action == "record" or result.result == "pass":
            return None
        detail = f"SPF {result.result} for {result.identity} {result.domain} from {client_ip}: {result.explanation}"
        if result.result == "temperror":
            return _dns_tempfail(detail) if action == "defer" else PermanentError(550, "5.7.24", "SPF validation error", detail)
        if action == "defer":
            return TemporaryError(451, "4.7.1", f"SPF check of {result.domain} did not pass, try again later", detail)
        if result.result == "permerror":
            return PermanentError(550, "5.7.24", f"SPF record of {result.domain} is broken", detail)
        return PermanentError(550, "5.7.23", f"SPF check failed: {result.domain} does not allow [{client_ip}] to send its mail", detail)

    @inlineCallbacks
    def _data(self, info: dict, message: bytes):
        cfg = self.cfg
        log = _log.bind(queue_id=info.get("queue_id"), trace_id=info.get("trace_id"))
        client_ip = info.get("client_ip", "")
        helo, sender = info.get("helo") or "", info.get("sender") or ""
        entries: list[str] = []
        error: MailError | None = None
        extra: dict = {}

        spf_result: SpfResult | None = info.get("spf")
        if cfg.spf.enabled and spf_result is None:
            spf_result = yield self._spf(client_ip, helo, sender)
            error = self._spf_error(spf_result, client_ip)
        if spf_result is not None:
            if spf_result.identity == "helo":
                entries.append(authresults.result_entry("spf", spf_result.result, smtp_helo=spf_result.domain))
            else:
                entries.append(authresults.result_entry("spf", spf_result.result, smtp_mailfrom=spf_result.domain))
            if spf_result.helo_result is not None:
                entries.append(authresults.result_entry("spf", spf_result.helo_result.result,
                                                        smtp_helo=spf_result.helo_result.domain))

        dkim_results: list = []
        if cfg.dkim.enabled:
            dkim_results = yield dkim.verify_dkim(self.resolver, message, cfg.dkim.max_signatures, cfg.dkim.min_key_bits)
            for r in dkim_results:
                entries.append(authresults.result_entry("dkim", r.result, header_d=r.domain, header_s=r.selector,
                                                        header_b=r.signature))
            if not dkim_results:
                entries.append("dkim=none")
            for r in dkim_results:
                log.info("DKIM {result} for d={domain} s={selector}: {detail}", result=r.result, domain=r.domain,
                         selector=r.selector, detail=r.detail)

        headers = authresults.header_fields(message)
        dmarc_result = None
        if cfg.dmarc.enabled:
            spf_for_dmarc = spf_result.result if spf_result is not None else "none"
            spf_domain = spf_result.domain if spf_result is not None else ""
            passes = [r.domain for r in dkim_results if r.result == "pass"]
            dmarc_result = yield dmarc.evaluate_dmarc(self.resolver, headers, spf_for_dmarc, spf_domain, passes, self.psl)
            comment = f"p={dmarc_result.policy}" if dmarc_result.result == "fail" else None
            entries.append(authresults.result_entry("dmarc", dmarc_result.result, comment, header_from=dmarc_result.domain))
            log.info("DMARC {result} for {domain}: {detail}", result=dmarc_result.result, domain=dmarc_result.domain,
                     detail=dmarc_result.detail)

        if error is None:
            error, quarantine = self._dmarc_decision(dmarc_result, dkim_results)
            if quarantine:
                extra["dmarc"] = "quarantine"

        cleaned, removed = authresults.remove_fields(message, self.authserv_id, also=(cfg.dmarc.quarantine_header,))
        if removed:
            log.info("removed {count} header fields claiming to be ours from {client_ip}", count=removed, client_ip=client_ip)
        header = authresults.build_header(self.authserv_id, entries)
        if extra.get("dmarc") == "quarantine":
            header = f"{cfg.dmarc.quarantine_header}: dmarc\r\n".encode("ascii") + header
        return DataVerdict(error, header + cleaned, extra)

    def _dmarc_decision(self, result, dkim_results) -> tuple[MailError | None, bool]:
        """(error, quarantine) from the DMARC result and the DKIM temperrors."""
        cfg = self.cfg
        if result is None:
            return None, False
        if result.result == "temperror":
            if cfg.dmarc.temperror == "defer":
                return _dns_tempfail(f"DMARC record of {result.domain}: {result.detail}"), False
            if cfg.dmarc.temperror == "reject":
                return PermanentError(550, "5.7.1", "DMARC check failed", result.detail), False
            return None, False
        if result.result != "fail":
            return None, False
        # A DKIM key we could not fetch might have made DMARC pass: try again later.
        if cfg.dkim.temperror == "defer" and any(r.result == "temperror" for r in dkim_results):
            return _dns_tempfail(f"DKIM key lookup failed and DMARC of {result.domain} did not pass"), False
        action = {"reject": cfg.dmarc.reject, "quarantine": cfg.dmarc.quarantine}.get(result.policy or "none", "record")
        if action == "reject":
            return PermanentError(550, "5.7.1", f"Message rejected by the DMARC policy of {result.domain}",
                                  f"DMARC fail for {result.domain} (p={result.policy}): {result.detail}"), False
        return None, action == "quarantine"


__all__ = ["DataVerdict", "MessageChecks", "SpfResult"]
