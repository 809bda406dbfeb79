"""mda.main -- postroom-mda, the delivery daemon: the spool consumer and the LMTP server.

    postroom-mda --config /etc/postroom

Both deliver through mda.delivery; see docs/mda.md.
"""

from __future__ import annotations

from common.runner import listen, run
from common.spool import Spool

from .consumer import SpoolConsumer
from .delivery import Deliverer


def build(cfg, parent, reactor) -> None:
    deliverer = Deliverer(cfg.core, cfg.daemon)
    if cfg.daemon.consumer.enabled:
        SpoolConsumer(Spool(cfg.core.paths.spool), deliverer, cfg.daemon, reactor).setServiceParent(parent)
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
