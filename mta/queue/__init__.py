"""mta.queue -- the queue manager of postroom-mta: from the spool to each recipient.

`make_queue_service(cfg, reactor)` builds the service that mta/main.py adds to its
parent. It picks up new mail at once: the receiving side calls `service.nudge()`
after it has spooled (and fsync'd) a message into incoming/; inotify and a scan
every second also catch files written by other processes (postroom-sendmail's
maildrop/, the MDA's answers in mda-done/).

SECURITY: trusts only the spool (written by this MTA's own user) and validates
maildrop/; see manager.py and pickup.py.
"""

from __future__ import annotations

from twisted.application.service import IService


def make_queue_service(cfg, reactor, resolver=None) -> IService:
    """The queue manager as a Twisted service. cfg is the loaded Config (.core, .daemon).

    The returned service has `nudge()`: the SMTP side calls it after each message it
    committed to incoming/, so fresh mail is attempted without waiting for a scan
    (only incoming/ is looked at; `nudge("maildrop")` and `nudge("mda-done")` look at
    those).
    It also has `reload()` (relay credentials) for SIGHUP."""
    from .manager import QueueManager

    return QueueManager(cfg, reactor, resolver)
