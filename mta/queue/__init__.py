"""mta.queue -- the queue manager of postroom-mta: from the spool to each recipient.

`make_queue_service(cfg, reactor)` builds the service that mta/main.py adds to its
parent. It picks up new mail at once: the receiving side calls `service.nudge()`
after it has spooled (and fsync'd) a message into incoming/; a periodic scan also
catches anything written by other processes (postroom-sendmail, the MDA).

SECURITY: trusts only the spool (written by this MTA's own user); see manager.py.
"""

from __future__ import annotations

from twisted.application.service import IService, Service


class _StubQueueService(Service):
    """Placeholder until the manager is wired in; nudge() is a no-op."""

    name = "queue"

    def nudge(self) -> None:
        """Call after a message was committed to incoming/ (fresh mail, no delay)."""


def make_queue_service(cfg, reactor) -> IService:
    """The queue manager as a Twisted service. cfg is the loaded Config (.core, .daemon).

    The returned service has `nudge()`: the SMTP side calls it after each message it
    committed to incoming/, so fresh mail is attempted without waiting for a scan."""
    return _StubQueueService()
