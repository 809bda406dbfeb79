"""mta.clientlimits -- connections and messages per client address, counted once for
every receiving process (what Postfix's anvil does, in shared memory).

`ClientLimits.admit(ip)` / `release(ip)` count open connections, in total and per
client address; `message(ip)` counts one message against the per-address rate. The
counts live in one table that every receiving process maps: the first process
creates it (`SharedTable.create`, a memfd) before it starts the receiving
processes, which inherit the descriptor and map it (`SharedTable.attach`). So
`max_connections`, `max_connections_per_client` and
`max_messages_per_client_per_minute` hold for the whole server, whatever
`receive_processes` is. With one receiving process the table is private memory.

The table has a fixed size, decided at creation: a header, then per slot the client
address (16 bytes, IPv4 as IPv4-mapped IPv6) and its message counts for the current
and the previous minute, then one column of connection counts per receiving process
(so when a process dies, the first process zeroes its column before starting the
next one, and nothing it held stays counted), and the per-process connection
totals. A client address hashes (BLAKE2b keyed with a random secret kept in the
header, so slots cannot be aimed at) to a slot and probes at most `PROBES` slots
after it; a slot is reusable when no process holds a connection from its address
and its counts are more than a minute old. Every access takes an fcntl lock on the
table (a process that dies holding it releases it).

The rate is a sliding minute estimated from two fixed minutes, as many rate limiters
do: messages this minute plus the previous minute's weighted by the part of it
still inside the last 60 seconds.

Failing safe: if the shared table cannot be created or mapped, each process counts
in its own private table (the limits then hold per process, as a warning in the log
says); if every slot a client address may use is taken (more busy addresses than
the table holds), that client is refused for now (421 4.7.0 at connect, 450 4.7.1
at MAIL): a temporary refusal, never unbounded memory, never an unlimited client.

SECURITY: the table holds addresses and counts only. Only this daemon's processes
(the same program and user) share the descriptor; nothing in it is read as code or
as a size of anything else.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import mmap
import os
import time

from common.log import get_logger

log = get_logger("postroom.mta.limits")

MAGIC = b"PRLIMIT1"
HEADER = 64
PROBES = 32
DEFAULT_SLOTS = 65536
WINDOW = 60.0

# Outcomes of admit().
ADMITTED = None
TOO_MANY_CONNECTIONS = "total"
TOO_MANY_FROM_CLIENT = "client"
TABLE_FULL = "full"


_keys: dict[str, bytes] = {}


def _key(ip: str) -> bytes:
    """16 bytes for an address (IPv4 as IPv4-mapped IPv6); unparsable text hashes.
    Remembered (up to 10,000 addresses): a client connects again and again."""
    key = _keys.get(ip)
    if key is None:
        if len(_keys) >= 10_000:
            _keys.clear()
        key = _keys[ip] = _make_key(ip)
    return key


def _make_key(ip: str) -> bytes:
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return b"\x01" + hashlib.blake2b(ip.encode("utf-8", "replace"), digest_size=15).digest()
    if address.version == 4:
        return b"\x00" * 10 + b"\xff\xff" + address.packed
    mapped = address.ipv4_mapped
    return (b"\x00" * 10 + b"\xff\xff" + mapped.packed) if mapped is not None else address.packed


class SharedTable:
    """The counts in one mapping; see the module docstring for the layout."""

    def __init__(self, memory: mmap.mmap, fd: int | None):
        self.memory = memory
        self.fd = fd  # None: private memory of one process, no lock needed
        if memory[:8] != MAGIC:
            raise ValueError("not a postroom limits table")
        self.secret = bytes(memory[8:24])
        self.slots = int.from_bytes(memory[24:28], "little")
        self.columns = int.from_bytes(memory[28:32], "little")
        n, c = self.slots, self.columns
        self._totals_at = HEADER
        self._keys_at = self._totals_at + 4 * c
        self._rate_at = self._keys_at + 16 * n
        self._conns_at = self._rate_at + 12 * n
        if len(memory) < self._conns_at + 2 * n * c:
            raise ValueError("limits table truncated")
        view = memoryview(memory)
        self.totals = view[self._totals_at:self._keys_at].cast("I")
        self.rate = view[self._rate_at:self._conns_at].cast("I")   # (minute, this, previous) per slot
        self.conns = view[self._conns_at:self._conns_at + 2 * n * c].cast("H")  # column-major
        self._homes: dict[bytes, int] = {}

    @staticmethod
    def size(slots: int, columns: int) -> int:
        return HEADER + 4 * columns + 16 * slots + 12 * slots + 2 * slots * columns

    @classmethod
    def _init(cls, memory: mmap.mmap, slots: int, columns: int) -> None:
        memory[:HEADER] = (MAGIC + os.urandom(16) + slots.to_bytes(4, "little")
                           + columns.to_bytes(4, "little")).ljust(HEADER, b"\0")

    @classmethod
    def private(cls, columns: int = 1, slots: int = DEFAULT_SLOTS) -> "SharedTable":
        """A table only this process uses."""
        memory = mmap.mmap(-1, cls.size(slots, columns))
        cls._init(memory, slots, columns)
        return cls(memory, None)

    @classmethod
    def create(cls, columns: int, slots: int = DEFAULT_SLOTS) -> "SharedTable":
        """A table for `columns` receiving processes, in a memfd they can inherit
        (`fd`). Raises OSError where memfds do not exist."""
        fd = os.memfd_create("postroom-mta-limits", 0)  # not CLOEXEC: pass_fds hands it on
        try:
            os.ftruncate(fd, cls.size(slots, columns))
            memory = mmap.mmap(fd, cls.size(slots, columns))
        except BaseException:
            os.close(fd)
            raise
        cls._init(memory, slots, columns)
        return cls(memory, fd)

    @classmethod
    def attach(cls, fd: int) -> "SharedTable":
        """The table of an inherited descriptor. Raises OSError or ValueError."""
        size = os.fstat(fd).st_size
        return cls(mmap.mmap(fd, size), fd)

    # -- locking

    def lock(self) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, 0)

    def unlock(self) -> None:
        if self.fd is not None:
            fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, 0)

    # -- slots (call with the lock held)

    def _home(self, key: bytes) -> int:
        home = self._homes.get(key)
        if home is None:
            if len(self._homes) >= 10_000:
                self._homes.clear()
            digest = hashlib.blake2b(key, digest_size=8, key=self.secret).digest()
            home = self._homes[key] = int.from_bytes(digest, "little") % self.slots
        return home

    def _key_at(self, slot: int) -> bytes:
        at = self._keys_at + 16 * slot
        return self.memory[at:at + 16]

    def connections(self, slot: int) -> int:
        n = self.slots
        return sum(self.conns[c * n + slot] for c in range(self.columns))

    def _reusable(self, slot: int, minute: int) -> bool:
        return self.connections(slot) == 0 and self.rate[3 * slot] + 1 < minute

    def find(self, key: bytes, minute: int, claim: bool) -> int | None:
        """The slot of key; with claim, a new one if it has none. None: not found, or
        (with claim) no free slot among the PROBES it may use."""
        home = self._home(key)
        free = None
        for i in range(PROBES):
            slot = (home + i) % self.slots
            current = self._key_at(slot)
            if current == key:
                return slot
            if free is None and (current == b"\0" * 16 or self._reusable(slot, minute)):
                free = slot
        if not claim or free is None:
            return None
        at = self._keys_at + 16 * free
        self.memory[at:at + 16] = key
        self.rate[3 * free:3 * free + 3] = memoryview(bytes(12)).cast("I")
        return free

    def clear_column(self, column: int) -> None:
        """Forget every connection counted by the process in column (it died)."""
        self.lock()
        try:
            n = self.slots
            start = self._conns_at + 2 * column * n
            self.memory[start:start + 2 * n] = bytes(2 * n)
            self.totals[column] = 0
        finally:
            self.unlock()


class ClientLimits:
    """The limits of one receiving process, counted in `table` under `column`."""

    def __init__(self, limits, table: SharedTable, column: int = 0, clock=time.monotonic):
        self.max_connections = limits.max_connections
        self.per_client = limits.max_connections_per_client
        self.per_minute = limits.max_messages_per_client_per_minute
        self.table = table
        self.column = column
        self.clock = clock

    def admit(self, ip: str) -> str | None:
        """Count a new connection from ip, or say why not: TOO_MANY_CONNECTIONS,
        TOO_MANY_FROM_CLIENT or TABLE_FULL (ADMITTED is None)."""
        t = self.table
        key = _key(ip)
        t.lock()
        try:
            if sum(t.totals) >= self.max_connections:
                return TOO_MANY_CONNECTIONS
            slot = t.find(key, int(self.clock() // WINDOW), claim=True)
            if slot is None:
                return TABLE_FULL
            if t.connections(slot) >= self.per_client:
                return TOO_MANY_FROM_CLIENT
            t.conns[self.column * t.slots + slot] += 1
            t.totals[self.column] += 1
            return ADMITTED
        finally:
            t.unlock()

    def release(self, ip: str) -> None:
        """A connection counted by admit() closed."""
        t = self.table
        t.lock()
        try:
            slot = t.find(_key(ip), int(self.clock() // WINDOW), claim=False)
            if slot is not None:
                at = self.column * t.slots + slot
                if t.conns[at]:
                    t.conns[at] -= 1
            if t.totals[self.column]:
                t.totals[self.column] -= 1
        finally:
            t.unlock()

    def message(self, ip: str) -> bool:
        """Count one message from ip; False if it is over the per-minute limit (or the
        table has no room for ip), and then it is not counted."""
        limit = self.per_minute
        if not limit:
            return True
        t = self.table
        now = self.clock()
        minute = int(now // WINDOW)
        t.lock()
        try:
            slot = t.find(_key(ip), minute, claim=True)
            if slot is None:
                return False
            rate = t.rate
            at = 3 * slot
            last = rate[at]
            if last != minute:
                # A new minute: this one starts empty, the last becomes the previous.
                rate[at + 2] = rate[at + 1] if last + 1 == minute else 0
                rate[at + 1] = 0
                rate[at] = minute
            previous_weight = 1.0 - (now % WINDOW) / WINDOW
            if rate[at + 1] + rate[at + 2] * previous_weight >= limit:
                return False
            rate[at + 1] += 1
            return True
        finally:
            t.unlock()
