"""A real authoritative DNS server for tests, on 127.0.0.1, UDP and TCP, one port.

Built with twisted.names and run as its own process, so tests that run a reactor
(or none) are not disturbed:

    from tests.support.dnsserver import DnsServer

    with DnsServer({
        "example.test": {"A": ["127.0.0.1"], "MX": [[10, "mx.example.test"]],
                         "TXT": ["v=spf1 ip4:127.0.0.1 -all"]},
        "mx.example.test": {"A": ["127.0.0.1"], "AAAA": ["::1"]},
        "nullmx.test": {"MX": [[0, "."]]},
        "alias.test": {"CNAME": "example.test"},
        "1.0.0.127.in-addr.arpa": {"PTR": ["mx.example.test"]},
        "broken.test": "servfail",             # every type answers SERVFAIL
        "slow.test": {"TXT": "timeout"},        # TXT is never answered, A is NoAnswer
        "*.bl.test": {"A": ["127.0.0.2"]},      # any name below bl.test (closest wildcard wins)
    }) as dns_server:
        dns_server.port                          # give this to the code under test
        dns_server.update({...})                 # replace every record at once

Rules: names are case-insensitive, without the final dot. A name not in the dict
takes the records of the closest "*.parent" entry, if any; otherwise it is NXDOMAIN,
unless it is a parent of a listed name (then it exists with no records).
A name that exists but lacks the type asked for gives NOERROR with no answer. A TXT
value longer than 255 bytes is split into 255-byte strings, as publishers do; a TXT
value given as a list of strings is sent as exactly those strings. A CNAME is
followed when its target is in the dict. "servfail" or "timeout" in place of the
records (or of one type's records) makes the server answer SERVFAIL or not at all.

The records live in a JSON file that the server re-reads whenever it changes, so
`update` takes effect for the next query. Run by hand:

    python -m tests.support.dnsserver --zone-file records.json --port 0

It prints ``PORT <n>`` on its first line once UDP and TCP both listen on n.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class DnsServer:
    """The server as a child process; see the module docstring."""

    def __init__(self, records: dict):
        self._dir = tempfile.TemporaryDirectory(prefix="postroom-dns-")
        self.zone_file = Path(self._dir.name) / "records.json"
        self.proc: subprocess.Popen | None = None
        self.port: int = 0
        self.update(records)

    def update(self, records: dict) -> None:
        """Replace all records; the next query sees the new ones."""
        tmp = self.zone_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(records))
        os.replace(tmp, self.zone_file)

    def start(self, timeout: float = 15.0) -> "DnsServer":
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.dnsserver", "--zone-file", str(self.zone_file), "--port", "0"],
            stdout=subprocess.PIPE, stderr=None, cwd=str(ROOT),
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        import select

        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if ready:
                line = self.proc.stdout.readline().decode()
                if line.startswith("PORT "):
                    self.port = int(line.split()[1])
                    return self
                if not line:
                    break
            if self.proc.poll() is not None:
                break
        self.stop()
        raise RuntimeError("the test DNS server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            self.proc = None
        self._dir.cleanup()

    def __enter__(self) -> "DnsServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class DnsServerMixin:
    """For a (trial) TestCase: one server per class, with the class's RECORDS, as
    `cls.dns_server`."""

    RECORDS: dict = {}

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.dns_server = DnsServer(cls.RECORDS).start()

    @classmethod
    def tearDownClass(cls):
        cls.dns_server.stop()
        super().tearDownClass()


def dns_server_fixture(records: dict):
    """For a pytest module: one server for the module's tests, with records, as the
    fixture the name is bound to (`dns_server = dns_server_fixture(RECORDS)`)."""
    import pytest

    @pytest.fixture(scope="module")
    def dns_server():
        with DnsServer(records) as server:
            yield server

    return dns_server


# -- the server process ------------------------------------------------------


def _make_resolver(zone_file: Path):
    from twisted.internet import defer
    from twisted.names import dns
    from twisted.names.common import ResolverBase
    from twisted.names.error import DomainError

    class NeverAnswer(Exception):
        pass

    class DictResolver(ResolverBase):
        """Answers from the JSON records file, re-read when it changes."""

        def __init__(self):
            super().__init__()
            self._stamp = None
            self._records: dict = {}

        def _load(self) -> None:
            st = zone_file.stat()
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            if stamp != self._stamp:
                raw = json.loads(zone_file.read_text())
                self._records = {k.lower().rstrip("."): v for k, v in raw.items()}
                self._stamp = stamp

        def _lookup(self, name, cls, qtype, timeout):
            self._load()
            key = name.decode("ascii", "replace").lower().rstrip(".")
            try:
                answers = self._answer(key, qtype, depth=0)
            except NeverAnswer:
                return defer.Deferred()  # the query is simply never answered
            if answers is None:
                return defer.fail(DomainError(name))
            return defer.succeed((answers, [], []))

        def _answer(self, key: str, qtype: int, depth: int):
            entry = self._records.get(key)
            if entry is None:
                entry = self._wildcard(key)
            if entry is None:
                if any(other.endswith("." + key) for other in self._records):
                    return []  # an empty non-terminal exists
                return None
            entry = self._special(entry)
            if "CNAME" in entry and qtype != dns.CNAME and depth < 8:
                target = entry["CNAME"]
                out = [self._rr(key, dns.CNAME, dns.Record_CNAME(target.encode()))]
                rest = self._answer(target.lower().rstrip("."), qtype, depth + 1)
                return out + (rest or [])
            out = []
            for type_name, values in entry.items():
                type_code = getattr(dns, type_name)
                if qtype not in (type_code, dns.ALL_RECORDS):
                    continue
                values = self._special(values)
                if type_name == "CNAME":
                    values = [values]
                for value in values:
                    out.append(self._rr(key, type_code, self._record(type_name, value)))
            return out

        def _wildcard(self, key: str):
            labels = key.split(".")
            for i in range(1, len(labels)):
                entry = self._records.get("*." + ".".join(labels[i:]))
                if entry is not None:
                    return entry
            return None

        @staticmethod
        def _special(value):
            if value == "servfail":
                raise RuntimeError("SERVFAIL asked for by the test records")
            if value == "timeout":
                raise NeverAnswer()
            return value

        @staticmethod
        def _rr(key: str, type_code: int, payload):
            return dns.RRHeader(name=key.encode(), type=type_code, cls=dns.IN, ttl=60, payload=payload, auth=True)

        @staticmethod
        def _record(type_name: str, value):
            if type_name == "A":
                return dns.Record_A(value, ttl=60)
            if type_name == "AAAA":
                return dns.Record_AAAA(value, ttl=60)
            if type_name == "MX":
                preference, exchange = value
                return dns.Record_MX(preference, b"" if exchange == "." else exchange.encode(), ttl=60)
            if type_name == "TXT":
                if isinstance(value, list):
                    strings = [s.encode() for s in value]
                else:
                    raw = value.encode()
                    strings = [raw[i:i + 255] for i in range(0, len(raw), 255)] or [b""]
                return dns.Record_TXT(*strings, ttl=60)
            if type_name == "PTR":
                return dns.Record_PTR(value.encode(), ttl=60)
            if type_name == "CNAME":
                return dns.Record_CNAME(value.encode(), ttl=60)
            if type_name == "NS":
                return dns.Record_NS(value.encode(), ttl=60)
            raise ValueError(f"unsupported record type {type_name}")

    return DictResolver()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="authoritative DNS server for postroom's tests")
    parser.add_argument("--zone-file", required=True, type=Path, help="JSON records, re-read when changed")
    parser.add_argument("--port", type=int, default=0, help="UDP and TCP port (0: any free one)")
    parser.add_argument("--interface", default="127.0.0.1")
    args = parser.parse_args(argv)

    from twisted.internet import reactor
    from twisted.internet.error import CannotListenError
    from twisted.names import dns, server

    factory = server.DNSServerFactory()
    factory.resolver = _make_resolver(args.zone_file)
    port = None
    for _ in range(50):  # bounded: find a port free for both UDP and TCP
        # A fresh protocol each time: one that was bound once cannot be bound again.
        udp_port = reactor.listenUDP(args.port, dns.DNSDatagramProtocol(factory), interface=args.interface)
        number = udp_port.getHost().port
        try:
            reactor.listenTCP(number, factory, interface=args.interface)
        except CannotListenError:
            udp_port.stopListening()
            if args.port:
                raise
            continue
        port = number
        break
    if port is None:
        print("no port free for UDP and TCP", file=sys.stderr)
        return 1
    print(f"PORT {port}", flush=True)
    reactor.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
