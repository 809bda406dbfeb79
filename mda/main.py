"""mda.main -- postroom-mda, the delivery daemon: the spool consumer and the LMTP server.

    postroom-mda --config /etc/postroom

Both deliver through mda.delivery; see docs/mda.md. With consumer.processes above one
the first process serves LMTP and supervises that many consumer processes
(common.workers), each delivering its share of the hand-offs.
"""

from __future__ import annotations

import os

from common.runner import listen, run
from common.spool import Spool
from common.workers import WorkerPool, worker_count

from .consumer import SpoolConsumer
from .delivery import Deliverer

#: Set by the first process in the consumer processes it starts: "share/processes".
CONSUMER_ENV = "POSTROOM_MDA_CONSUMER"


def build(cfg, parent, reactor) -> None:
    deliverer = Deliverer(cfg.core, cfg.daemon)
    spool = Spool(cfg.core.paths.spool)
    share = os.environ.pop(CONSUMER_ENV, None)
    if share is not None:  # a consumer process: its share of the hand-offs, nothing else
        i, _, n = share.partition("/")
        SpoolConsumer(spool, deliverer, cfg.daemon, reactor, partition=(int(i), int(n))).setServiceParent(parent)
        return
    if cfg.daemon.consumer.enabled:
        processes = worker_count(cfg.daemon.consumer.processes)
        if processes > 1:
            WorkerPool(cfg, [], processes, reactor, module="mda.main", env_name="POSTROOM_MDA_UNUSED",
                       prefix="", what="consumer process",
                       extra=lambda i: ({CONSUMER_ENV: f"{i}/{processes}"}, ())).setServiceParent(parent)
        else:
            SpoolConsumer(spool, deliverer, cfg.daemon, reactor).setServiceParent(parent)
    if cfg.daemon.listeners:
        from .lmtp import LmtpFactory
        server_tls = None
        if any(l.tls != "none" for l in cfg.daemon.listeners.values()):
            from common.tls import ServerTLS
            server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml"))
        for name, listener in cfg.daemon.listeners.items():
            listen(parent, listener, LmtpFactory(cfg, deliverer, reactor, server_tls, name, listener), server_tls,
                   reactor, name=name)


def main(argv: list[str] | None = None) -> None:
    run("mda", build, argv, description="postroom delivery agent: spool consumer and LMTP server")


if __name__ == "__main__":
    main()
