"""Change notification: inotify sees a delivery at once; the periodic check sees it
where inotify is not used."""

import subprocess
import sys
import textwrap

from twisted.internet.task import Clock

from common.storage import INBOX, MailStore
from common.storage.watch import Watcher

SCRIPT = textwrap.dedent("""
    import sys, time
    from twisted.internet import reactor
    from common.storage import MailStore
    from common.storage.watch import Watcher
    store = MailStore(sys.argv[1])
    a, b = store.open_mailbox("INBOX"), store.open_mailbox("INBOX")
    started = []
    seen = []
    def changed(name, box):
        new = box.sync().new
        if new:
            print(name, "NEW", len(new), round(time.monotonic() - started[-1], 3), flush=True)
            seen.append(name)
            if len(seen) == 2:
                reactor.callLater(0, second)
            if len(seen) == 3:
                reactor.callLater(0.1, reactor.stop)  # a late extra call from "a" would show up
    # Two sessions watching one folder share one kernel watch; each is told.
    wa = Watcher(a.watch_paths(), lambda: changed("a", a), reactor, interval=30).start()
    wb = Watcher(b.watch_paths(), lambda: changed("b", b), reactor, interval=30).start()
    def deliver():
        started.append(time.monotonic())
        store.deliver(b"Subject: hi\\n\\n")
    def second():
        wa.stop()  # the other session keeps its notifications
        deliver()
    reactor.callLater(0.2, deliver)
    reactor.callLater(20, reactor.stop)  # safety net only
    reactor.run()
""")


def test_inotify_sees_a_delivery_at_once(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "Maildir")],
                         capture_output=True, text=True, timeout=60)
    lines = sorted(out.stdout.splitlines())
    assert [line.split()[:3] for line in lines] == [["a", "NEW", "1"], ["b", "NEW", "1"], ["b", "NEW", "1"]], \
        out.stdout + out.stderr
    assert all(float(line.split()[3]) < 1.0 for line in lines)  # at once, not at the 30 s poll


def test_periodic_check_sees_changes_without_inotify(tmp_path):
    store = MailStore(tmp_path / "Maildir")
    box = store.open_mailbox(INBOX)
    clock = Clock()
    seen = []
    w = Watcher(box.watch_paths(), lambda: seen.append(box.sync()), clock, interval=1.0, use_inotify=False).start()
    clock.advance(1.0)
    clock.advance(0.1)
    assert seen == []  # nothing changed yet
    store.deliver(b"Subject: hi\n\n")
    clock.advance(1.0)
    clock.advance(0.1)
    assert len(seen) == 1 and [m.uid for m in seen[0].new] == [1]
    w.stop()
    assert not clock.getDelayedCalls()
