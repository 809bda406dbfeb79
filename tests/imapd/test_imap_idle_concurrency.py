"""IDLE sees a delivery by another process and an expunge by another session within
a second; two sessions and a delivering process on one mailbox lose no flag, reuse
no UID and keep UIDVALIDITY."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time

MSG = b"From: a@example.test\r\nSubject: s\r\nMessage-ID: <%s@example.test>\r\n\r\nbody\r\n"

DELIVER = """
import sys
from pathlib import Path
from common.storage import MailStore
store = MailStore(Path(sys.argv[1]))
for i in range(int(sys.argv[2])):
    store.deliver(b"From: mda@example.test\\r\\nSubject: d\\r\\nMessage-ID: <d%d@example.test>\\r\\n\\r\\nbody\\r\\n" % i)
"""


def deliver_in_process(maildir, count: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", DELIVER, str(maildir), str(count)])


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
    time.sleep(0.2)

    started = time.monotonic()
    proc = deliver_in_process(imapd.maildir(), 1)
    assert proc.wait(10) == 0
    line, _ = read_until(idler, rb"^\* 2 EXISTS", 2.0)
    assert time.monotonic() - started < 1.0 + 0.5  # the process start itself takes a moment
    delivered_at = time.monotonic()

    other = imapd.client()
    other.select("INBOX")
    other.store("1", "+FLAGS", r"(\Deleted)")
    t0 = time.monotonic()
    other.expunge()
    line, took = read_until(idler, rb"^\* 1 EXPUNGE", 2.0)
    assert time.monotonic() - t0 < 1.0, took
    other.logout()

    idler.send(b"DONE\r\n")
    line, _ = read_until(idler, tag + rb" OK", 2.0)
    typ, data = idler.fetch("1", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert b"<d0@example.test>" in data[0][1]
    assert delivered_at - started < 1.5
    idler.logout()


def test_two_sessions_and_a_delivering_process(imapd):
    setup = imapd.client()
    setup.select("INBOX")
    uidvalidity = int(setup.response("UIDVALIDITY")[1][0])
    setup.logout()

    proc = deliver_in_process(imapd.maildir(), 40)
    errors: list = []
    seen_ids: dict[int, bytes] = {}
    lock = threading.Lock()
    b_flagged: set[int] = set()
    expunged: set[int] = set()
    validities: set[int] = {uidvalidity}

    def record(data):
        with lock:
            for item in data:
                if not isinstance(item, tuple):
                    continue
                uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                mid = re.search(rb"<([^>]+)>", item[1]).group(1)
                if seen_ids.setdefault(uid, mid) != mid:
                    errors.append(f"UID {uid} reused: {seen_ids[uid]!r} then {mid!r}")

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
            c.logout()
        except Exception as e:  # noqa: BLE001
            errors.append(f"A: {e!r}")

    def session_b():
        try:
            c = imapd.client()
            c.select("INBOX")
            validities.add(int(c.response("UIDVALIDITY")[1][0]))
            for _ in range(15):
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

    threads = [threading.Thread(target=session_a), threading.Thread(target=session_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert proc.wait(30) == 0
    assert not errors, errors

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
    assert {b"a%d@example.test" % i for i in range(20)} <= names
    assert {b"d%d@example.test" % i for i in range(40) if i % 5} <= names
    for uid, head in present.items():
        mid = seen_ids[uid]
        if mid.startswith(b"a"):
            assert b"\\Flagged" in head, (mid, head)
        if uid in b_flagged:
            assert b"$B" in head, (mid, head)
    assert not (set(present) & expunged)
    c.logout()
