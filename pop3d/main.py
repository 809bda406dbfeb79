"""pop3d.main -- `postroom-pop3d`: POP3 (RFC 1939) over the users' maildirs.

Listens as pop3d.yaml says (110 with STLS, 995 with implicit TLS), authenticates
against the shared user file, and serves each user's INBOX through common.storage,
alongside postroom-imapd on the same maildirs.

SECURITY: binds as root if it must, then the runner drops to the configured user.
"""

from __future__ import annotations

from collections import OrderedDict

from twisted.application.service import Service

from common.auth import Authenticator
from common.runner import listen
from common.tls import ServerTLS

from .server import Pop3Factory


class UsersReloader(Service):
    """SIGHUP re-reads the user file (the runner calls reload() on every service)."""

    def __init__(self, auth: Authenticator):
        self.auth = auth

    def reload(self) -> None:
        self.auth.reload()


def build(cfg, parent, reactor) -> None:
    listeners = cfg.daemon.listeners
    server_tls = None
    if any(lst.tls != "none" for lst in listeners.values()) or cfg.core.tls.certificate:
        server_tls = ServerTLS(cfg.core.tls, cfg.path("postroom.yaml"))
    auth = Authenticator(cfg.core, reactor)
    UsersReloader(auth).setServiceParent(parent)
    last_login: OrderedDict[str, float] = OrderedDict()
    for name, listener in listeners.items():
        factory = Pop3Factory(cfg, auth, server_tls, reactor, starttls=listener.tls == "starttls",
                              last_login=last_login)
        listen(parent, listener, factory, server_tls, reactor, name=f"pop3d-{name}")


def main(argv: list[str] | None = None) -> None:
    from common.runner import run
    run("pop3d", build, argv, description="postroom POP3 server")


if __name__ == "__main__":
    main()
