"""common.dns -- the one DNS resolver of a daemon, for the reactor and for threads.

Every lookup goes through dnspython, run in a small bounded thread pool so the
reactor never blocks. The name servers, their port and the total time a lookup may
take come from the configuration (`dns:` in mta.yaml, `common.config.mta_checks.
DnsConfig`), so tests point everything at a DNS server on loopback.

    resolver = Resolver.from_config(cfg.daemon.dns, reactor)
    d = resolver.query("example.org", "MX")        # Deferred[list of dnspython rdata]
    rows = resolver.query_sync("example.org", "TXT")  # the same, from a worker thread
    d = resolver.in_thread(blocking_function, arg)    # run a library that does its own DNS
    d = resolver.verified_name("192.0.2.1")         # Deferred[str | None]: FCrDNS

Results are dnspython rdata objects (``.address`` for A/AAAA, ``.preference`` and
``.exchange`` for MX, ``.strings`` for TXT, ``.target`` for PTR and CNAME); CNAME
chains are followed. Failures are one of three exceptions, all `DnsError`:

- `NXDomain`: the name does not exist (also for names that cannot exist);
- `NoAnswer`: the name exists but has no record of that type;
- `DnsTemporaryError`: time-out, SERVFAIL, REFUSED, no usable server. Callers turn
  it into a temporary failure (451 4.4.3): never acceptance by default and never a
  permanent refusal.

`verified_name(ip)` is the forward-confirmed reverse DNS name of a client (its PTR
names, the first whose A or AAAA records include ip), or None: no PTR, no name that
points back, or DNS failed. Its answers are cached, bounded in number
(`NAME_CACHE_SIZE`) and in time (the records' TTL, at most an hour; a name that is
not confirmed, for `NEGATIVE_TTL`); a DNS failure is not cached.

Libraries that look up DNS themselves (pyspf, dkimpy) run inside `in_thread` and
are given functions built on `query_sync`, so they use the same servers.

SECURITY: answers come from the network and are untrusted; dnspython parses them
strictly and bounds their size. Lookups are bounded in time (`timeout`) and in
number running at once (`threads`); further lookups wait in the pool's queue.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any, Callable

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver
import dns.reversename
from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool


#: verified_name(): at most this many PTR names are checked, this many answers kept,
#: a confirmed name kept at most MAX_NAME_TTL seconds and an unconfirmed one NEGATIVE_TTL.
MAX_PTR_NAMES = 5
NAME_CACHE_SIZE = 10_000
MAX_NAME_TTL = 3600
NEGATIVE_TTL = 60


class DnsError(Exception):
    """A DNS lookup that gave no records. `temporary` says whether to try again later."""

    temporary = False


class NXDomain(DnsError):
    """The name does not exist."""


class NoAnswer(DnsError):
    """The name exists but has no records of the type asked for."""


class DnsTemporaryError(DnsError):
    """Time-out, SERVFAIL or no usable name server: try again later."""

    temporary = True


class Resolver:
    """dnspython behind a bounded thread pool; see the module docstring."""

    def __init__(self, nameservers: list[str] | tuple[str, ...] | None = None, port: int = 53,
                 timeout: float = 5.0, reactor=None, threads: int = 10):
        if reactor is None:
            from twisted.internet import reactor  # noqa: F811 - the global one by default
        self.reactor = reactor
        self.timeout = float(timeout)
        if nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            self._resolver.nameservers = list(nameservers)
        else:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except dns.resolver.NoResolverConfiguration:
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        self._resolver.port = port
        self._resolver.timeout = min(2.0, self.timeout)
        self._resolver.lifetime = self.timeout
        self._resolver.use_edns(0, 0, 1232)
        self._resolver.search = []
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="postroom-dns")
        self._shutdown_trigger = None
        self._names: dict[str, tuple[str | None, float]] = {}

    @classmethod
    def from_config(cls, dns_cfg, reactor=None) -> "Resolver":
        """Build from a `common.config.mta_checks.DnsConfig`."""
        return cls(list(dns_cfg.nameservers) or None, dns_cfg.port, float(dns_cfg.timeout), reactor,
                   dns_cfg.threads)

    @property
    def nameservers(self) -> list[str]:
        return list(self._resolver.nameservers)

    @property
    def port(self) -> int:
        return self._resolver.port

    # -- from the reactor

    def query(self, name: str | dns.name.Name, rdtype: str | int) -> Deferred:
        """Look name up without blocking the reactor: Deferred[list of rdata] or a DnsError."""
        return self.in_thread(self.query_sync, name, rdtype)

    def verified_name(self, ip: str) -> Deferred:
        """The forward-confirmed reverse DNS name of ip: Deferred[str | None], never
        an error (see the module docstring)."""
        cached = self._names.get(ip)
        if cached is not None and cached[1] > time.monotonic():
            return succeed(cached[0])
        return self.in_thread(self.verified_name_sync, ip)

    def in_thread(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred:
        """Run function(*args, **kwargs) in the resolver's thread pool; for libraries
        that look up DNS synchronously (they must use `query_sync` or `txt_sync`)."""
        self._start()
        return deferToThreadPool(self.reactor, self._pool, function, *args, **kwargs)

    def close(self) -> None:
        """Stop the thread pool (waits for lookups in flight, at most `timeout`)."""
        if self._pool.started:
            self._pool.stop()
        if self._shutdown_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            except (ValueError, KeyError):
                pass
            self._shutdown_trigger = None

    def _start(self) -> None:
        if not self._pool.started:
            self._pool.start()
            self._shutdown_trigger = self.reactor.addSystemEventTrigger("during", "shutdown", self.close)

    # -- from a worker thread

    def query_sync(self, name: str | dns.name.Name, rdtype: str | int) -> list:
        """Look name up, blocking: list of rdata, or raise NXDomain, NoAnswer, DnsTemporaryError."""
        return list(self._answer_sync(name, rdtype))

    def verified_name_sync(self, ip: str) -> str | None:
        """verified_name() from a worker thread."""
        address = plain_ip(ip)
        if address is None:
            return None
        try:
            ptr = self._answer_sync(reverse_name(str(address)), "PTR")
        except (NXDomain, NoAnswer):
            return self._remember(ip, None, NEGATIVE_TTL)
        except DnsError:
            return None
        ttl = min(ptr.rrset.ttl, MAX_NAME_TTL)
        failed = False
        for rdata in list(ptr)[:MAX_PTR_NAMES]:
            try:
                forward = self._answer_sync(rdata.target, "A" if address.version == 4 else "AAAA")
            except (NXDomain, NoAnswer):
                continue
            except DnsError:
                failed = True
                continue
            if any(plain_ip(r.address) == address for r in forward):
                name = rdata.target.to_text(omit_final_dot=True).lower()
                return self._remember(ip, name, min(ttl, forward.rrset.ttl))
        return None if failed else self._remember(ip, None, min(ttl, NEGATIVE_TTL))

    def _remember(self, ip: str, name: str | None, ttl: float) -> str | None:
        if len(self._names) >= NAME_CACHE_SIZE:
            self._names.clear()  # bounded: forget everyone rather than grow
        self._names[ip] = (name, time.monotonic() + ttl)
        return name

    def _answer_sync(self, name: str | dns.name.Name, rdtype: str | int):
        try:
            qname = name if isinstance(name, dns.name.Name) else dns.name.from_text(name)
            answer = self._resolver.resolve(qname, rdtype, search=False, raise_on_no_answer=True)
        except dns.resolver.NXDOMAIN:
            raise NXDomain(f"{name}: no such domain") from None
        except dns.resolver.YXDOMAIN:
            raise NXDomain(f"{name}: name too long after DNAME substitution") from None
        except dns.resolver.NoAnswer:
            raise NoAnswer(f"{name}: no {rdtype} records") from None
        except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong, dns.name.BadEscape) as e:
            raise NXDomain(f"{name!r}: not a valid domain name ({e})") from None
        except dns.exception.Timeout:
            raise DnsTemporaryError(f"{name}: DNS time-out after {self.timeout:g}s") from None
        except dns.resolver.NoNameservers as e:
            raise DnsTemporaryError(f"{name}: no name server answered ({_short(e)})") from None
        except dns.exception.DNSException as e:
            raise DnsTemporaryError(f"{name}: DNS failure ({type(e).__name__}: {_short(e)})") from None
        return answer

    def txt_sync(self, name: str | dns.name.Name) -> list[bytes]:
        """The TXT records of name, each with its strings joined (RFC 7208 3.3)."""
        return [b"".join(r.strings) for r in self.query_sync(name, "TXT")]


def plain_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """text as an address (an IPv4-mapped IPv6 address as IPv4, any %zone dropped), or None."""
    try:
        address = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def reverse_name(ip: str, zone: str | None = None) -> dns.name.Name:
    """The reverse-lookup name of an IPv4 or IPv6 address: under in-addr.arpa / ip6.arpa,
    or under zone (a DNS blocklist, RFC 5782). Raises ValueError for a non-address."""
    if zone is None:
        return dns.reversename.from_address(ip)
    origin = dns.name.from_text(zone)
    return dns.reversename.from_address(ip, v4_origin=origin, v6_origin=origin)


def _short(e: Exception, limit: int = 200) -> str:
    text = str(e)
    return text if len(text) <= limit else text[:limit] + "..."
