"""imapd.commands.idle -- IDLE (RFC 2177).

While idling, changes to the selected mailbox (noticed by the storage watcher the
glue runs for the paths in `Watch`) are sent at once, EXPUNGE included: IDLE uses no
sequence numbers. The only input accepted is DONE.
"""

from __future__ import annotations

from ..protocol import AUTH, Done, Unwatch, Watch, command


@command("IDLE", AUTH)
def idle(conn, tag, r):
    r.end()
    if conn.selected is not None:
        conn.selected.refresh()  # a vanished mailbox raises: NO now, BYE at the end
        for line in conn.selected.updates(allow_expunge=True):
            conn.send(line)
    conn.send(b"+ idling\r\n")
    if conn.selected is not None:
        conn.emit(Watch(tuple(conn.selected.mailbox.watch_paths())))
    return conn.wait("idle", tag, "IDLE")


def idle_input(conn, data: bytes) -> None:
    tag, spec, _extra = conn.stop_waiting()
    conn.emit(Unwatch())
    if data.strip().upper() == b"DONE":
        conn.finish(tag, spec, Done("Idle completed"))
    else:
        conn.finish(tag, spec, Done("Expected DONE", status="BAD"))
