"""common.errors -- errors that know whether they are temporary, and what the peer may see.

Every error a protocol reports carries its reply code, its enhanced status code, a
generic public text for the client, and a detail for the log only. Temporary vs
permanent is part of the type: any unexpected error becomes a temporary failure, so
the sender keeps the mail.
"""

from __future__ import annotations


class MailError(Exception):
    """A failure with an SMTP-style code. Subclasses fix temporary or permanent."""

    temporary: bool = True

    def __init__(self, code: int, enhanced: str, public: str, detail: str | None = None):
        super().__init__(detail or public)
        self.code = code
        self.enhanced = enhanced
        self.public = public
        self.detail = detail or public

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.public}" + (f" ({self.detail})" if self.detail != self.public else "")


class TemporaryError(MailError):
    temporary = True


class PermanentError(MailError):
    temporary = False


def unexpected(exc: BaseException) -> TemporaryError:
    """What any unexpected exception turns into: a generic temporary failure."""
    return TemporaryError(451, "4.3.0", "Temporary local problem, try again later",
                          f"{type(exc).__name__}: {exc}")


# sysexits.h, for the pipe commands and tools.
EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_NOUSER = 67
EX_NOHOST = 68
EX_UNAVAILABLE = 69
EX_SOFTWARE = 70
EX_OSERR = 71
EX_CANTCREAT = 73
EX_IOERR = 74
EX_TEMPFAIL = 75
EX_NOPERM = 77
EX_CONFIG = 78
