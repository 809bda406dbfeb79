"""IDLE sees a delivery by the MDA (postroom-deliver, run as an MTA runs it) within a
second of the delivering process's exit, and an expunge by another session within a
second; two sessions and the MDA on one mailbox lose no flag, reuse no UID, keep
UIDVALIDITY, and a third session in IDLE sees each delivery within a second."""

from __future__ import annotations

import re
import threading
import time

MSG = b"From: a@example.test\r\nSubject: s\r\nMessage-ID: <%s@example.test>\r\n\r\nbody\r\n"
MDA_MSG = b"From: mda@example.test\r\nSubject: d\r\nMessage-ID: <d%d@example.test>\r\n\r\nbody\r\n"
#: How long after the delivering process exits an IDLE session must have its EXISTS.
DELIVERY_SEEN_WITHIN = 1.0


def read_until(c, pattern: bytes, timeout: float) -> tuple[bytes, float]:
    """Read lines from an imaplib connection until one matches; (line, seconds taken)."""
    start = time.monotonic()
    c.sock.settimeout(timeout)
    while True:
        line = c.readline()
        if re.search(pattern, line):
            return line, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(pattern)


def test_idle_sees_delivery_and_expunge_within_a_second(imapd):
    idler = imapd.client()
    idler.append("INBOX", None, None, MSG % b"first")
    idler.select("INBOX")
    tag = idler._new_tag()
    idler.send(tag + b" IDLE\r\n")
    assert idler.readline().startswith(b"+ ")

    exited = imapd.deliver(MDA_MSG % 0)
    read_until(idler, rb"^\* 2 EXISTS", 2.0)
    assert time.monotonic() - exited < DELIVERY_SEEN_WITHIN

    other = imapd.client()
    other.select("INBOX")
    other.store("1", "+FLAGS", r"(\Deleted)")
    t0 = time.monotonic()
    other.expunge()
    line, took = read_until(idler, rb"^\* 1 EXPUNGE", 2.0)
    assert time.monotonic() - t0 < 1.0, took
    other.logout()

    idler.send(b"DONE\r\n")
    read_until(idler, tag + rb" OK", 2.0)
    typ, data = idler.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert b"<d0@example.test>" in data[0][1]
    idler.logout()


class Watcher(threading.Thread):
    """A session in IDLE that, at each EXISTS, leaves IDLE, fetches the new messages'
    Message-IDs and notes when it first saw each. To end it, set `stop` and then add
    a message (its EXISTS wakes the session)."""

    def __init__(self, imapd):
        super().__init__()
        self.c = imapd.client()
        self.c.select("INBOX")
        self.stop = threading.Event()
        self.first_seen: dict[bytes, float] = {}
        self.last_uid = 0
        self.error: Exception | None = None

    def fetch_new(self) -> None:
        typ, data = self.c.uid("FETCH", f"{self.last_uid + 1}:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        now = time.monotonic()
        for item in data:
            if isinstance(item, tuple):
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                if uid > self.last_uid:
                    self.last_uid = uid
                    self.first_seen.setdefault(re.search(rb"<([^>]+)>", item[1]).group(1), now)

    def run(self) -> None:
        try:
            self.fetch_new()
            for _ in range(10000):
                if self.stop.is_set():
                    break
                tag = self.c._new_tag()
                self.c.send(tag + b" IDLE\r\n")
                # Updates may come before the continuation; an EXISTS among them counts.
                news = False
                while not (line := self.c.readline()).startswith(b"+ "):
                    news = news or re.match(rb"\* \d+ EXISTS", line) is not None
                if not news:
                    # A timed-out socket file cannot be read again: a quiet 30 s is a failure.
                    read_until(self.c, rb"^\* \d+ EXISTS", 30)
                self.c.send(b"DONE\r\n")
                read_until(self.c, tag + rb" OK", 10)
                self.fetch_new()
            self.c.logout()
        except Exception as e:  # noqa: BLE001
            self.error = e


def test_two_sessions_the_mda_and_an_idle_session(imapd):
    setup = imapd.client()
    setup.select("INBOX")
    uidvalidity = int(setup.response("UIDVALIDITY")[1][0])
    setup.logout()

    deliveries = 30
    errors: list = []
    seen_ids: dict[int, bytes] = {}
    lock = threading.Lock()
    b_flagged: set[int] = set()
    expunged: set[int] = set()
    validities: set[int] = {uidvalidity}
    exited: dict[bytes, float] = {}
    mda_done = threading.Event()
    watcher = Watcher(imapd)
    watcher.start()

    def record(data):
        with lock:
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                mid = re.search(rb"<([^>]+)>", item[1]).group(1)
                if seen_ids.setdefault(uid, mid) != mid:
                    errors.append(f"UID {uid} reused: {seen_ids[uid]!r} then {mid!r}")

    def mda():
        try:
            for i in range(deliveries):
                exited[b"d%d@example.test" % i] = imapd.deliver(MDA_MSG % i)
        except Exception as e:  # noqa: BLE001
            errors.append(f"MDA: {e!r}")
        finally:
            mda_done.set()

    def session_a():
        try:
            c = imapd.client()
            c.select("INBOX")
            validities.add(int(c.response("UIDVALIDITY")[1][0]))
            for i in range(20):
                typ, data = c.append("INBOX", None, None, MSG % b"a%d" % i)
                uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
                c.uid("STORE", str(uid), "+FLAGS", r"(\Flagged)")
                c.uid("STORE", "1:*", "+FLAGS", "($A)")
                time.sleep(0.05)
            c.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(f"A: {e!r}")

    def session_b():
        try:
            c = imapd.client()
            c.select("INBOX")
            validities.add(int(c.response("UIDVALIDITY")[1][0]))
            rounds = 0
            # Until the MDA is done (and at least 15 rounds), bounded in count.
            while rounds < 15 or (not mda_done.is_set() and rounds < 1000):
                rounds += 1
                typ, data = c.uid("FETCH", "1:*", "(UID BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
                record(data)
                with lock:
                    doomed = [u for u, m in seen_ids.items() if re.fullmatch(rb"d\d*[05]@example.test", m)]
                    mine = [u for u in seen_ids if u not in doomed]
                if mine:
                    c.uid("STORE", ",".join(map(str, mine)), "+FLAGS", "($B)")
                    b_flagged.update(mine)
                if doomed:
                    c.uid("STORE", ",".join(map(str, doomed)), "+FLAGS", r"(\Deleted)")
                    c.uid("EXPUNGE", ",".join(map(str, doomed)))
                    expunged.update(doomed)
                time.sleep(0.02)
            c.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(f"B: {e!r}")

    threads = [threading.Thread(target=f) for f in (mda, session_a, session_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    time.sleep(DELIVERY_SEEN_WITHIN)
    watcher.stop.set()
    last = imapd.client()
    last.append("INBOX", None, None, MSG % b"last")
    last.logout()
    watcher.join(30)
    assert not errors, errors
    assert watcher.error is None, repr(watcher.error)
    assert len(exited) == deliveries

    c = imapd.client()
    c.select("INBOX")
    validities.add(int(c.response("UIDVALIDITY")[1][0]))
    typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    record(data)
    assert not errors, errors
    assert validities == {uidvalidity}
    present: dict[int, bytes] = {}
    for item in data:
        if isinstance(item, tuple):
            uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
            present[uid] = item[0]
    ids = [seen_ids[u] for u in present]
    assert len(ids) == len(set(ids)), "one message under two UIDs"
    # Every message of A and of the MDA is there, except what B expunged.
    names = set(ids)
    kept = {b"d%d@example.test" % i for i in range(deliveries) if i % 5}
    assert {b"a%d@example.test" % i for i in range(20)} | {b"last@example.test"} <= names
    assert kept <= names
    for uid, head in present.items():
        mid = seen_ids[uid]
        if mid.startswith(b"a"):
            assert b"\\Flagged" in head, (mid, head)
        if uid in b_flagged:
            assert b"$B" in head, (mid, head)
    assert not (set(present) & expunged)
    # The IDLE session saw each delivery B left alone within a second of its process's exit.
    late = {mid: round(watcher.first_seen.get(mid, float("inf")) - exited[mid], 3) for mid in kept}
    assert all(delay < DELIVERY_SEEN_WITHIN for delay in late.values()), late
    c.logout()
