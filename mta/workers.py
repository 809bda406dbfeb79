"""mta.workers -- several receiving processes sharing the listening sockets.

With `receive_processes: N` (N > 1) the first process binds every listener as
usual, then starts N receiving processes (common.workers) that inherit the
listening sockets; the kernel hands each new connection to whichever accepts it
first, so every core takes SMTP sessions. The first process then stops accepting:
it runs the queue manager, whose synchronous work must not delay anyone's 250.
Each receiving process drops privileges through the same runner, writes the spool
with its own group commit, and runs no queue manager (the queue manager's scan of
incoming/ finds what they spool). They also inherit the table of per-client counts
(mta.clientlimits), each with its own column of connection counts, zeroed when its
process dies, so the limits hold for all of them together.

SECURITY: the processes are the same program with the same configuration; nothing
but socket descriptors and the counts table's memfd crosses the process boundary.
"""

from __future__ import annotations

from common.runner import listen
from common.workers import AdoptedEndpoint, WorkerPool


def adopt_listeners(parent, cfg, ctx, inherited: list[tuple[str, int]], reactor) -> None:
    """In a receiving process: one listener service per inherited socket."""
    from .smtpd import SmtpFactory

    for name, fd in inherited:
        listener = cfg.daemon.listeners[name]
        listen(parent, listener, SmtpFactory(ctx, name, listener), ctx.server_tls, reactor,
               name=f"smtp-{name}", endpoint=AdoptedEndpoint(reactor, fd))


def receiving_pool(cfg, listener_services, count: int, reactor, limits_table=None) -> WorkerPool:
    """The pool of receiving processes; each gets its column of the counts table."""
    from .main import LIMITS_ENV, WORKER_ENV

    def extra(column: int):
        if limits_table is None:
            return {}, ()
        return {LIMITS_ENV: f"{limits_table.fd}:{column}"}, (limits_table.fd,)

    return WorkerPool(cfg, listener_services, count, reactor, module="mta.main", env_name=WORKER_ENV,
                      prefix="smtp-", what="receiving process", extra=extra,
                      on_exit=limits_table.clear_column if limits_table is not None else None)
