"""common.log -- one line per event, to standard error (for journald) or to syslog.

Every daemon logs through twisted.logger. `setup_logging(cfg.core.log, "mta")` installs
one observer chain:

    redaction -> level filter -> stderr or syslog writer

A line reads ``mta[1234]: session=Ab3x queue_id=4F2C trace_id=9c1e... queued from ...``:
the daemon and its pid, then the `session`, `queue_id` and `trace_id` fields when the
event has them (`CONTEXT_FIELDS`), then the formatted message. `trace_id` is the
spool envelope's `trace_id`: every daemon that logs about a message passes it
(``log.info("...", queue_id=env.queue_id, trace_id=env.trace_id)`` or a logger made
with ``.bind(queue_id=..., trace_id=...)``), so one grep follows a message through
the MTA, the queue manager and the MDA. A failure adds the exception on the same line (with its
traceback joined by `` | `` at debug level), so one event is always one line.

`get_logger("mta.smtp", session=sid)` returns a Logger whose events all carry the given
fields; `.bind(queue_id=...)` adds more.

SECURITY: a password or a message body must never reach a log. The redaction step
replaces any event field named password, pass, secret, body or message_body with
``<redacted>`` before anything formats the event, so even a careless
``log.info("{password}", password=pw)`` writes ``<redacted>``.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

from twisted.logger import ILogObserver, LogLevel, Logger, formatEvent, globalLogBeginner
from zope.interface import implementer

#: Event fields whose values never reach a log.
REDACTED_FIELDS = frozenset({"password", "pass", "secret", "body", "message_body"})
REDACTED = "<redacted>"

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn,
          "error": LogLevel.error}

#: Levels as numbers: comparing twisted's LogLevel constants costs more than the rest
#: of writing a line.
_RANK = {LogLevel.debug: 0, LogLevel.info: 1, LogLevel.warn: 2, LogLevel.error: 3, LogLevel.critical: 4}

#: syslog facility names (RFC 3164 section 4.1.1) -> codes.
FACILITIES = {
    "kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6,
    "news": 7, "uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
    **{f"local{i}": 16 + i for i in range(8)},
}

_SEVERITY = {LogLevel.debug: 7, LogLevel.info: 6, LogLevel.warn: 4, LogLevel.error: 3,
             LogLevel.critical: 2}

#: Fields shown before the message, in this order, when the event carries them.
CONTEXT_FIELDS = ("session", "queue_id", "trace_id")


def redact(event: dict[str, Any]) -> dict[str, Any]:
    """The event with every secret-named field replaced by <redacted> (a copy if needed)."""
    if REDACTED_FIELDS.isdisjoint(event):
        return event
    return {k: (REDACTED if k in REDACTED_FIELDS else v) for k, v in event.items()}


@implementer(ILogObserver)
class RedactingObserver:
    """Passes each event on to `inner` with secret-named fields redacted."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, event: dict[str, Any]) -> None:
        self.inner(redact(event))


def _format(event: dict[str, Any]) -> str:
    """The event's message: str.format_map for plain formats (most lines), twisted's
    formatEvent for anything else (its call syntax, a missing field)."""
    fmt = event.get("log_format")
    if fmt is None:
        return ""
    try:
        return fmt.format_map(event)
    except Exception:
        return formatEvent(event)


def format_line(event: dict[str, Any], daemon: str, pid: int | None = None) -> str:
    """``daemon[pid]: session=... queue_id=... trace_id=... message`` on one line."""
    parts = [f"{daemon}[{pid or os.getpid()}]:"]
    for name in CONTEXT_FIELDS:
        value = event.get(name)
        if value is not None:
            parts.append(f"{name}={value}")
    level = event.get("log_level")
    if level is not None and _RANK.get(level, 0) >= 2:
        parts.append(f"{level.name}:")
    text = _format(event)
    failure = event.get("log_failure")
    if failure is not None:
        text = f"{text}: {failure.type.__name__}: {failure.getErrorMessage()}" if text else \
            f"{failure.type.__name__}: {failure.getErrorMessage()}"
        if event.get("log_debug_traceback"):
            text += " | " + " | ".join(failure.getTraceback().strip().splitlines())
    if not text and "log_io" in event:  # stdout/stderr redirected by twisted
        text = str(event["log_io"])
    parts.append(text)
    line = " ".join(p for p in parts if p)
    return line.replace("\r", "\\r").replace("\n", "\\n")


@implementer(ILogObserver)
class StderrObserver:
    """Writes one line per event to a stream (standard error by default)."""

    def __init__(self, daemon: str, stream: IO[str] | None = None, tracebacks: bool = False):
        self.daemon = daemon
        self.stream = stream
        self.tracebacks = tracebacks

    def __call__(self, event: dict[str, Any]) -> None:
        if self.tracebacks and "log_failure" in event:
            event = {**event, "log_debug_traceback": True}
        stream = self.stream or sys.stderr
        try:
            stream.write(format_line(event, self.daemon) + "\n")
            stream.flush()
        except (OSError, ValueError):
            pass  # nowhere left to report it


@implementer(ILogObserver)
class SyslogObserver:
    """Sends RFC 3164 messages over a unix datagram socket such as /dev/log.

    Written directly rather than through the `syslog` module, so that each daemon's
    facility and socket come from its own configuration and nothing is global."""

    def __init__(self, daemon: str, facility: str = "mail", path: Path = Path("/dev/log"),
                 tracebacks: bool = False):
        if facility not in FACILITIES:
            raise ValueError(f"unknown syslog facility {facility!r}")
        self.daemon = daemon
        self.facility = FACILITIES[facility]
        self.path = str(path)
        self.tracebacks = tracebacks
        self.hostname = socket.gethostname().split(".")[0]
        self.sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.setblocking(False)
            sock.connect(self.path)
            self.sock = sock
        return self.sock

    def message(self, event: dict[str, Any]) -> bytes:
        severity = _SEVERITY.get(event.get("log_level", LogLevel.info), 6)
        stamp = time.strftime("%b %d %H:%M:%S", time.localtime(event.get("log_time") or time.time()))
        # "Nov  2" not "Nov 02": RFC 3164 pads the day with a space.
        if stamp[4] == "0":
            stamp = stamp[:4] + " " + stamp[5:]
        if self.tracebacks and "log_failure" in event:
            event = {**event, "log_debug_traceback": True}
        line = format_line(event, f"postroom-{self.daemon}")
        return f"<{self.facility * 8 + severity}>{stamp} {self.hostname} {line}".encode("utf-8", "replace")[:8192]

    def __call__(self, event: dict[str, Any]) -> None:
        data = self.message(event)
        for _attempt in range(2):
            try:
                self._socket().send(data)
                return
            except OSError:
                # syslogd restarted or the socket is not there yet: reconnect once.
                if self.sock is not None:
                    self.sock.close()
                    self.sock = None
        try:
            sys.stderr.write(format_line(event, self.daemon) + "\n")
        except (OSError, ValueError):
            pass


def make_observer(log_cfg, daemon: str, stream: IO[str] | None = None):
    """The full observer chain for a LogConfig: redaction, level filter, writer."""
    level = LEVELS[log_cfg.level]
    debug = level == LogLevel.debug
    if log_cfg.target == "syslog":
        writer = SyslogObserver(daemon, log_cfg.syslog_facility, log_cfg.syslog_socket, debug)
    else:
        writer = StderrObserver(daemon, stream, debug)
    return RedactingObserver(LevelFilter(writer, level))


@implementer(ILogObserver)
class LevelFilter:
    """Passes on the events at `level` or above (one comparison of numbers, where
    twisted's FilteringLogObserver with a LogLevelFilterPredicate does much more)."""

    def __init__(self, inner, level: LogLevel):
        self.inner = inner
        self.minimum = _RANK[level]

    def __call__(self, event: dict[str, Any]) -> None:
        if _RANK.get(event.get("log_level"), 1) >= self.minimum:
            self.inner(event)


class _StdlibBridge(logging.Handler):
    """Libraries that use the standard logging module (dkimpy, ...) log through
    twisted.logger too, so their lines look the same and pass the same redaction."""

    _LEVELS = ((logging.ERROR, LogLevel.error), (logging.WARNING, LogLevel.warn),
               (logging.INFO, LogLevel.info))

    def emit(self, record: logging.LogRecord) -> None:
        level = next((tw for std, tw in self._LEVELS if record.levelno >= std), LogLevel.debug)
        try:
            text = record.getMessage()
        except Exception:
            text = str(record.msg)
        Logger(namespace=record.name).emit(level, "{text}", text=text)


def setup_logging(log_cfg, daemon: str, stream: IO[str] | None = None) -> None:
    """Send every twisted.logger event of this process, and the standard logging
    module's records, through make_observer()."""
    globalLogBeginner.beginLoggingTo([make_observer(log_cfg, daemon, stream)],
                                     redirectStandardIO=False)
    root = logging.getLogger()
    root.handlers[:] = [_StdlibBridge()]
    root.setLevel({"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING,
                   "error": logging.ERROR}[log_cfg.level])


class ContextLogger(Logger):
    """A Logger whose every event carries fixed fields (session, queue_id, ...)."""

    def __init__(self, namespace: str | None = None, source: Any = None, observer=None,
                 **context: Any):
        super().__init__(namespace, source, observer)
        self.context = context

    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        if self.context:
            kwargs = {**self.context, **kwargs}
        super().emit(level, format, **kwargs)

    def bind(self, **more: Any) -> "ContextLogger":
        """A logger with these fields added to this one's."""
        return ContextLogger(self.namespace, self.source, self.observer, **{**self.context, **more})

    def __get__(self, instance, owner=None):  # used as a class attribute, keep the context
        if instance is None:
            return self
        return ContextLogger(self.namespace, instance, self.observer, **self.context)


def get_logger(namespace: str, **context: Any) -> ContextLogger:
    """A twisted.logger Logger for namespace; context fields go into every event."""
    return ContextLogger(namespace, **context)
