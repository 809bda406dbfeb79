"""imapd.main -- postroom-imapd: serve the users' maildirs over IMAP.

`build()` wires the runner's service tree: TLS (when a certificate is configured),
the authenticator, and one listener per entry of imapd.yaml's `listeners`
(STARTTLS on 143-style listeners, implicit TLS on 993-style ones, PROXY protocol
where configured: all through `common.runner.listen`). With `workers` above one the
first process binds and supervises that many workers that share its sockets
(`common.workers`).

SECURITY: binds while privileged; the runner drops to the configured user before
anything is read from the network.
"""

from __future__ import annotations

from twisted.application.service import Service

from common.runner import listen, run


class UsersReload(Service):
    """SIGHUP re-reads the user file (the runner calls reload() on every service)."""

    name = "imap-users"

    def __init__(self, authenticator):
        self.authenticator = authenticator

    def reload(self) -> None:
        self.authenticator.reload()


#: Set by the first process in the workers it starts (common.workers): "name=fd,...".
WORKER_ENV = "POSTROOM_IMAPD_WORKER_FDS"


def _raise_file_limit(connections: int) -> None:
    """Each connection is a descriptor: take the hard limit if the soft one is lower
    than the connections allowed (systemd's LimitNOFILE= sets the hard one)."""
    try:
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = connections + 256
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard == resource.RLIM_INFINITY else
                                                        min(hard, max(want, soft)), hard))
    except (ImportError, ValueError, OSError):
        pass


def build(cfg, parent, reactor) -> None:
    from common.auth import Authenticator
    from common.tls import ServerTLS
    from common.workers import AdoptedEndpoint, WorkerPool, inherited_listeners, worker_count

    from .server import ImapContext, ImapFactory

    server_tls = None
    if cfg.core.tls.certificate is not None:
        server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml"))
    authenticator = Authenticator(cfg.core, reactor)
    ctx = ImapContext(cfg, reactor, server_tls, authenticator)
    UsersReload(authenticator).setServiceParent(parent)
    _raise_file_limit(cfg.daemon.limits.max_connections)
    inherited = inherited_listeners(WORKER_ENV)
    if inherited is not None:  # a worker: serve on the sockets the first process bound
        for name, fd in inherited:
            listener = cfg.daemon.listeners[name]
            listen(parent, listener, ImapFactory(ctx, name, listener), server_tls, reactor, name=f"imap-{name}",
                   endpoint=AdoptedEndpoint(reactor, fd))
        return
    services = [listen(parent, listener, ImapFactory(ctx, name, listener), server_tls, reactor, name=f"imap-{name}")
                for name, listener in cfg.daemon.listeners.items()]
    count = worker_count(cfg.daemon.workers)
    if count > 1:
        WorkerPool(cfg, services, count, reactor, module="imapd.main", env_name=WORKER_ENV, prefix="imap-",
                   what="IMAP worker").setServiceParent(parent)


def main(argv=None):
    run("imapd", build, argv, description="postroom IMAP server")


if __name__ == "__main__":
    main()
