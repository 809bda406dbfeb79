"""mta.main -- postroom-mta: receive mail over SMTP into the spool, and run the queue.

`build()` wires the pieces into the runner's service tree: the spool (leftovers of
a crash in tmp/ removed at start), the spool writer (group commit), the recipient
policy, the checks, one listener per entry of mta.yaml's `listeners`, the queue
manager, and, with `receive_processes` above 1, that many receiving processes
sharing the listening sockets and one table of per-client counts
(mta.clientlimits) while this one runs only the queue manager (mta.workers).

SECURITY: binds while privileged, then the runner drops to the configured user
before anything is read from the network.
"""

from __future__ import annotations

import os

from twisted.application.service import Service

from common.log import get_logger
from common.runner import listen, run
from common.spool import Spool
from common.workers import inherited_listeners, worker_count

log = get_logger("postroom.mta")

#: Set by mta.workers in a receiving process it starts: "name=fd,name=fd".
WORKER_ENV = "POSTROOM_MTA_WORKER_FDS"
#: Set with it: "fd:column", the shared table of client limits and this process's column.
LIMITS_ENV = "POSTROOM_MTA_LIMITS"


class WriterService(Service):
    """Starts and stops the spool writer's thread pool with the daemon; reloads the
    recipient tables on SIGHUP."""

    name = "spool-writer"

    def __init__(self, writer, policy=None):
        self.writer = writer
        self.policy = policy

    def startService(self):
        super().startService()
        self.writer.start()

    def stopService(self):
        super().stopService()
        self.writer.stop()

    def reload(self):
        """SIGHUP (the runner calls every service's reload()): aliases and users."""
        policy = self.policy
        if policy is not None:
            policy.aliases.reload()
            policy.users.reload()


def receive_processes(cfg) -> int:
    return worker_count(cfg.daemon.receive_processes)


def _client_limits(cfg, inherited: str | None):
    """This process's ClientLimits: in the table inherited from the first process
    ("fd:column"), or in a private one (one receiving process, or failing safe)."""
    from .clientlimits import ClientLimits, SharedTable

    if inherited:
        fd, _, column = inherited.partition(":")
        try:
            return ClientLimits(cfg.daemon.limits, SharedTable.attach(int(fd)), int(column))
        except (OSError, ValueError) as e:
            log.warn("cannot map the shared client limits ({error}): counting them in this process only",
                     error=e)
    return ClientLimits(cfg.daemon.limits, SharedTable.private())


def build_receiver(cfg, reactor, on_commit=None, limits_from: str | None = None):
    """The ReceiverContext of this process (shared by every listener's sessions)."""
    from common.auth import Authenticator
    from common.dns import Resolver
    from common.tls import ServerTLS
    from common.users import UserDB

    from .aliases import Aliases
    from .policy import RecipientPolicy
    from .queue.routing import mta_uid
    from .srs import Srs
    from .receiver import SpoolWriter
    from .smtpd import ReceiverContext

    mta = cfg.daemon
    spool = Spool(cfg.core.paths.spool, create=True)
    server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml")) if cfg.core.tls.certificate else None
    users = UserDB(cfg.core.auth.users_file)
    authenticator = Authenticator(cfg.core, reactor, users=users) if any(
        listener.auth_on for listener in mta.listeners.values()) else None
    policy = RecipientPolicy(cfg.core, mta.recipients, users, Aliases(mta.recipients.aliases_file),
                             srs=Srs.from_config(mta.queue.srs, mta_uid(cfg.core)))
    resolver = Resolver.from_config(mta.dns, reactor)
    checks = None
    if any(listener.checks_on for listener in mta.listeners.values()):
        try:
            from .checks import MessageChecks  # the checks engineer's module
        except ImportError:
            log.warn("mta.checks is not available: SPF, DKIM, DMARC and blocklist checks are off")
        else:
            checks = MessageChecks(cfg, reactor, resolver=resolver)
    writer = SpoolWriter(spool, reactor, threads=mta.spool_threads, on_commit=on_commit)
    return ReceiverContext(cfg, reactor, writer, policy, server_tls=server_tls,
                           authenticator=authenticator, checks=checks,
                           client_limits=_client_limits(cfg, limits_from), resolver=resolver)


def build(cfg, parent, reactor) -> None:
    from .smtpd import SmtpFactory

    inherited = inherited_listeners(WORKER_ENV)
    limits_from = os.environ.pop(LIMITS_ENV, None)
    if inherited is None:
        removed = Spool(cfg.core.paths.spool, create=True).clean_tmp()
        if removed:
            log.info("removed {n} unfinished spool files from tmp/", n=removed)
    queue_service = None
    if inherited is None:
        from .queue import make_queue_service
        queue_service = make_queue_service(cfg, reactor)

    def nudge(_count):
        queue_service.nudge()

    # A receiving process has no queue manager to tell: the first process's periodic
    # scan of incoming/ finds what it spools.
    ctx = build_receiver(cfg, reactor, on_commit=nudge if queue_service is not None else None,
                         limits_from=limits_from)
    WriterService(ctx.writer, ctx.policy).setServiceParent(parent)
    if inherited is not None:
        from .workers import adopt_listeners
        adopt_listeners(parent, cfg, ctx, inherited, reactor)
        return
    listeners = []
    for name, listener in cfg.daemon.listeners.items():
        listeners.append(listen(parent, listener, SmtpFactory(ctx, name, listener), ctx.server_tls, reactor,
                                name=f"smtp-{name}"))
    if receive_processes(cfg) > 1 and listeners:
        from .clientlimits import SharedTable
        from .workers import receiving_pool
        try:
            table = SharedTable.create(receive_processes(cfg))
        except OSError as e:
            table = None
            log.warn("cannot share client limits between receiving processes ({error}): "
                     "each counts its own", error=e)
        receiving_pool(cfg, listeners, receive_processes(cfg), reactor, table).setServiceParent(parent)
    queue_service.setServiceParent(parent)


def main(argv=None):
    run("mta", build, argv, description="postroom SMTP server: receives mail into the spool and delivers it")


if __name__ == "__main__":
    main()
