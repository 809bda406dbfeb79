"""mta.queue.routing -- where each recipient goes: the MDA, a transport-map next hop, or MX.

`Router.route(recipient)` gives a `NextHop`: local recipients (a local domain, or
the transport `local:`) go to the MDA; the transport map (`queue.transports` in
mta.yaml) names a relay (`smtp:[host]:port`, no MX lookup) or a domain whose MX
to use (`smtp:host`); everything else goes to the recipient domain's MX hosts.

`resolve_hosts(resolver, hop)` turns an SMTP next hop into the addresses to try,
in order (RFC 5321 section 5.1): MX records by preference with equal preferences
shuffled, each exchange's IPv6 then IPv4 addresses; no MX record means the domain's
own A/AAAA addresses. A null MX (RFC 7505) and a domain that does not exist are
permanent failures (5.1.10, 5.1.2); SERVFAIL and time-outs are temporary (4.4.3).

`Credentials` reads the relay credentials file: `[host]:port username password`
lines (Postfix's sasl_passwd shape, with a space instead of the colon).

SECURITY: DNS answers are untrusted and only used as addresses to connect to
(capped at MAX_ADDRESSES). A file of secrets (the relay credentials, the SRS
secret) must belong to the MTA's user and give its group and others no access
at all (mode 0600 or 0400): `private_file_problem` says what is wrong with one.
At start such a file is a configuration error (exit 78); on reload it is
refused, never used.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import random
import stat
from dataclasses import dataclass
from pathlib import Path

from twisted.internet import defer

from common.dns import DnsTemporaryError, NoAnswer, NXDomain
from common.errors import PermanentError, TemporaryError
from common.spool import Recipient

MAX_ADDRESSES = 10
TLS_ORDER = ("none", "may", "encrypt", "verify")


@dataclass(frozen=True)
class NextHop:
    kind: str                 # "smtp" or "local"
    host: str = ""            # a domain (MX lookup) or a host name / address literal
    port: int = 25
    mx: bool = True           # look up MX records for host
    domain: str = ""          # the recipient domain this hop serves (for the TLS policy)

    @property
    def key(self) -> str:
        """The destination for concurrency limits and back-off."""
        if self.kind == "local":
            return "local"
        return self.host if self.mx else f"[{self.host}]:{self.port}"


@dataclass(frozen=True)
class Host:
    name: str                 # the MX exchange or relay name (for TLS names and Remote-MTA)
    address: str
    port: int


def parse_transport(value: str, default_port: int) -> NextHop:
    """'smtp:[host]:port', 'smtp:host:port', 'smtp:' or 'local:' -> a NextHop (host may be "")."""
    kind, sep, rest = value.strip().partition(":")
    kind = kind.lower()
    if not sep or kind not in ("smtp", "local"):
        raise ValueError(f"transport {value!r}: expected smtp:[host]:port, smtp:host or local:")
    if kind == "local":
        return NextHop("local")
    rest = rest.strip()
    if not rest:
        return NextHop("smtp", "", default_port, True)
    mx = True
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ValueError(f"transport {value!r}: unclosed [")
        host, rest = rest[1:end], rest[end + 1:]
        mx = False
    else:
        host, _, port_part = rest.partition(":")
        rest = ":" + port_part if port_part else ""
    port = default_port
    if rest:
        if not rest.startswith(":") or not rest[1:].isdigit() or not 0 < int(rest[1:]) < 65536:
            raise ValueError(f"transport {value!r}: bad port")
        port = int(rest[1:])
    return NextHop("smtp", host.lower().rstrip("."), port, mx)


def domain_of(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


class Router:
    def __init__(self, queue_cfg, local_domains: tuple[str, ...]):
        self.cfg = queue_cfg
        self.local_domains = frozenset(d.lower() for d in local_domains)
        self.transports = {k: parse_transport(v, queue_cfg.smtp_port) for k, v in queue_cfg.transports.items()}

    def route(self, rcpt: Recipient) -> NextHop:
        domain = domain_of(rcpt.address)
        if rcpt.mailbox is not None or domain in self.local_domains:
            return NextHop("local", domain=domain)
        hop = self._lookup(domain)
        if hop is None:
            return NextHop("smtp", domain, self.cfg.smtp_port, True, domain)
        if hop.kind == "local":
            return NextHop("local", domain=domain)
        if not hop.host:
            return NextHop("smtp", domain, hop.port, True, domain)
        return NextHop("smtp", hop.host, hop.port, hop.mx, domain)

    def _lookup(self, domain: str) -> NextHop | None:
        if domain in self.transports:
            return self.transports[domain]
        labels = domain.split(".")
        for i in range(1, len(labels)):
            parent = "." + ".".join(labels[i:])
            if parent in self.transports:
                return self.transports[parent]
        return self.transports.get("*")

    def tls_level(self, hop: NextHop, has_credentials: bool) -> str:
        policy = self.cfg.tls_policy
        level = policy.get(hop.key) or policy.get(hop.domain) or policy.get(hop.host) or self.cfg.tls
        if has_credentials and TLS_ORDER.index(level) < TLS_ORDER.index("encrypt"):
            level = "encrypt"   # never send a password in the clear toward a relay
        return level


def mta_uid(core) -> int:
    """The uid the MTA runs as once started: core.user when started as root, else our own."""
    if os.geteuid() == 0 and core.user:
        try:
            return pwd.getpwnam(core.user).pw_uid
        except KeyError:
            pass      # the runner reports the unknown user
    return os.geteuid()


def private_file_problem(path: Path, uid: int) -> str | None:
    """Why path may not hold secrets of the MTA running as uid, or None when it may:
    it must be a regular file owned by uid with no access for group or others."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"{path}: {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a regular file"
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (f"{path} is accessible to its group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                f"chmod 600 it")
    if st.st_uid != uid:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = f"uid {uid}"
        return f"{path} belongs to uid {st.st_uid}, not to the MTA's user {name}; chown it"
    return None


class Credentials:
    """AUTH credentials per next hop, from the relay credentials file. `error` says
    why the file could not be used (None when it could)."""

    def __init__(self, path: Path | None, uid: int | None = None):
        self.path = path
        self.uid = os.geteuid() if uid is None else uid
        self.entries: dict[str, tuple[str, str]] = {}
        self.error: str | None = None
        if path is not None:
            self.load()

    def load(self) -> None:
        entries: dict[str, tuple[str, str]] = {}
        problem = private_file_problem(self.path, self.uid)
        try:
            if problem is not None:
                raise PermissionError(problem)
            text = Path(self.path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            self.error = str(e)
            self.entries = {}
            return
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split(None, 2)
            if len(parts) == 3:
                entries[parts[0].lower()] = (parts[1], parts[2])
        self.entries = entries
        self.error = None

    def lookup(self, hop: NextHop) -> tuple[str, str] | None:
        return self.entries.get(hop.key.lower()) or self.entries.get(hop.host.lower())


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


@defer.inlineCallbacks
def _addresses(resolver, name: str):
    """IPv6 then IPv4 addresses of name; (addresses, temporary_failure_text or None)."""
    if _is_ip(name):
        return [name], None
    found: list[str] = []
    temporary = None
    results = yield defer.DeferredList([resolver.query(name, "AAAA"), resolver.query(name, "A")],
                                       consumeErrors=True)
    for ok, value in results:
        if ok:
            found += [r.address for r in value]
        elif value.check(DnsTemporaryError):
            temporary = f"lookup of {name} failed: {value.getErrorMessage()}"
        elif not value.check(NXDomain, NoAnswer):
            temporary = f"lookup of {name} failed: {value.getErrorMessage()}"
    return found, temporary


@defer.inlineCallbacks
def resolve_hosts(resolver, hop: NextHop):
    """The hosts to try for an SMTP next hop, in order. Errbacks with TemporaryError
    or PermanentError."""
    if not hop.mx:
        addrs, temp = yield _addresses(resolver, hop.host)
        if not addrs:
            if temp:
                raise TemporaryError(451, "4.4.3", f"cannot resolve relay host {hop.host}", temp)
            raise TemporaryError(451, "4.4.4", f"relay host {hop.host} has no address")
        return [Host(hop.host, a, hop.port) for a in addrs[:MAX_ADDRESSES]]
    domain = hop.host
    try:
        records = yield resolver.query(domain, "MX")
    except NXDomain:
        raise PermanentError(550, "5.1.2", f"domain {domain} does not exist (NXDOMAIN)") from None
    except NoAnswer:
        records = None
    except DnsTemporaryError as e:
        raise TemporaryError(451, "4.4.3", f"MX lookup for {domain} failed temporarily", str(e)) from None
    exchanges: list[str]
    if records is None:
        exchanges = [domain]      # RFC 5321 5.1: the implicit MX
    else:
        mxs = [(r.preference, str(r.exchange).rstrip(".").lower()) for r in records]
        if any(name == "" for _, name in mxs):
            # RFC 7505: a null MX says the domain accepts no mail.
            raise PermanentError(556, "5.1.10", f"domain {domain} accepts no mail (null MX)")
        by_pref: dict[int, list[str]] = {}
        for pref, name in mxs:
            by_pref.setdefault(pref, []).append(name)
        exchanges = []
        for pref in sorted(by_pref):
            group = by_pref[pref]
            random.shuffle(group)
            exchanges += group
    hosts: list[Host] = []
    temporary = None
    for name in exchanges[:MAX_ADDRESSES]:
        addrs, temp = yield _addresses(resolver, name)
        temporary = temporary or temp
        hosts += [Host(name, a, hop.port) for a in addrs]
        if len(hosts) >= MAX_ADDRESSES:
            break
    if not hosts:
        if temporary:
            raise TemporaryError(451, "4.4.3", f"cannot resolve the mail exchangers of {domain}", temporary)
        raise PermanentError(550, "5.4.4", f"no address found for the mail exchangers of {domain}")
    return hosts[:MAX_ADDRESSES]
