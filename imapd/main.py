"""imapd.main -- postroom-imapd: serve the users' maildirs over IMAP.

`build()` wires the runner's service tree: TLS (when a certificate is configured),
the authenticator, and one listener per entry of imapd.yaml's `listeners`
(STARTTLS on 143-style listeners, implicit TLS on 993-style ones, PROXY protocol
where configured: all through `common.runner.listen`).

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


def build(cfg, parent, reactor) -> None:
    from common.auth import Authenticator
    from common.tls import ServerTLS

    from .server import ImapContext, ImapFactory

    server_tls = None
    if cfg.core.tls.certificate is not None:
        server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml"))
    authenticator = Authenticator(cfg.core, reactor)
    ctx = ImapContext(cfg, reactor, server_tls, authenticator)
    UsersReload(authenticator).setServiceParent(parent)
    for name, listener in cfg.daemon.listeners.items():
        listen(parent, listener, ImapFactory(ctx, name, listener), server_tls, reactor, name=f"imap-{name}")


def main(argv=None):
    run("imapd", build, argv, description="postroom IMAP server")


if __name__ == "__main__":
    main()
