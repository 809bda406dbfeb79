"""common.storage.errors -- storage failures that know whether they are temporary.

The text of an error is a detail for the log (it may hold paths); daemons answer
clients with their own generic wording and use `.temporary` to pick the reply.
"""

from __future__ import annotations


class StorageError(Exception):
    """Any storage failure. Unexpected OS errors are wrapped as temporary ones."""

    temporary: bool = True

    def __init__(self, detail: str = "", *, temporary: bool | None = None):
        super().__init__(detail or type(self).__name__)
        if temporary is not None:
            self.temporary = temporary


class MailboxNotFound(StorageError):
    temporary = False


class MailboxExists(StorageError):
    temporary = False


class InvalidMailboxName(StorageError):
    temporary = False


class QuotaExceeded(StorageError):
    """Over the storage or message limit; temporary or not as configured."""

    temporary = False


class LockTimeout(StorageError):
    temporary = True


class MailboxInUse(StorageError):
    """Another POP3 session holds the mailbox (RFC 2449 [IN-USE])."""

    temporary = True


class NoSpace(StorageError):
    """Disk full or filesystem quota (ENOSPC, EDQUOT)."""

    temporary = True
