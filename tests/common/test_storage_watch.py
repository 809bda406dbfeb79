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
    box = store.open_mailbox("INBOX")
    started = []
    def changed():
        new = box.sync().new
        if new:
            print("NEW", len(new), round(time.monotonic() - started[0], 3), flush=True)
            reactor.stop()
    w = Watcher(box.watch_paths(), changed, reactor, interval=30, use_inotify=sys.argv[2] == "1")
    w.start()
    def deliver():
        started.append(time.monotonic())
        store.deliver(b"Subject: hi\\n\\n")
    reactor.callLater(0.2, deliver)
    reactor.callLater(5, reactor.stop)
    reactor.run()
""")


def test_inotify_sees_a_delivery_at_once(tmp_path):
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "Maildir"), "1"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.startswith("NEW 1 "), out.stdout + out.stderr
    assert float(out.stdout.split()[2]) < 1.0


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
