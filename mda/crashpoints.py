"""mda.crashpoints -- test only: kill the process at a named point, as a power cut would.

POSTROOM_TEST_CRASH_AT (never set in production) is a comma-separated list of
points; the spool consumer and the delivery code call `crash_point(name)` at each
step that matters for exactly-once delivery, and the process kills itself with
SIGKILL there. The points are listed in docs/mda.md.

SECURITY: reads one environment variable; an unknown name does nothing.
"""

from __future__ import annotations

import os
import signal

CRASH_POINTS = frozenset(os.environ.get("POSTROOM_TEST_CRASH_AT", "").replace(" ", "").split(",")) - {""}


def crash_point(name: str) -> None:
    """Die here when POSTROOM_TEST_CRASH_AT names this point."""
    if name in CRASH_POINTS:
        os.kill(os.getpid(), signal.SIGKILL)
