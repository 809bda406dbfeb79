"""common.fschild -- the child process of common.fshelper: makes syncfs(2) and
unlink(2) calls that an event loop asks for over its stdin and answers on its stdout
(the protocol is in common.fshelper). Standard library and common.fsutil only, so that
it starts fast and small."""

from __future__ import annotations

import errno
import os
import signal
import sys

from .fsutil import HAVE_SYNCFS, syncfs

#: Longest record either side accepts (a path is far shorter: PATH_MAX is 4096).
MAX_RECORD = 16384


def serve(inp: int = 0, out: int = 1) -> int:
    """The child's loop (the protocol is in common.fshelper). Returns the exit status."""
    buf = b""
    while True:
        try:
            data = os.read(inp, 65536)
        except InterruptedError:
            continue
        if not data:
            return 0
        buf += data
        *records, buf = buf.split(b"\0")
        if len(buf) > MAX_RECORD:
            return 2  # not our parent speaking
        syncs = [r[1:] for r in records if r[:1] == b"S"]
        if syncs:
            answers = []
            for path in syncs:
                try:
                    if not HAVE_SYNCFS:
                        raise OSError(errno.ENOSYS, "syncfs is not available here")
                    syncfs(path)
                    answers.append(b"0")
                except OSError as e:
                    answers.append(b"%d" % (e.errno or errno.EIO))
            reply = b"\0".join(answers) + b"\0"
            while reply:
                reply = reply[os.write(out, reply):]
        for record in records:
            if record[:1] == b"U":
                try:
                    os.unlink(record[1:])
                except OSError:
                    pass
            elif record[:1] != b"S":
                return 2


if __name__ == "__main__":
    # Only the parent ends it (end of input): a terminal's ^C or a stop signal sent to
    # the whole group must not cut short the unlinks already asked for.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(serve())
