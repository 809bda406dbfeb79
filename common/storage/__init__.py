"""common.storage -- the only code that touches a maildir; used by the MDA, IMAP and POP3.

Maildir++ laid out as Dovecot does (folders ".Name" in modified UTF-7, "." as the
hierarchy separator), UIDs in dovecot-uidlist v3, keywords in dovecot-keywords, quota
in maildirsize, so Dovecot and postroom can take each other's maildirs over.

    store = MailStore(Path("~alice/Maildir"), owner=(uid, gid))
    store.deliver(message_bytes, "INBOX")          # lock-free, durable when it returns
    box = store.open_mailbox("INBOX")              # synced
    changes = box.sync()                           # new / expunged / flag changes
    box.store([uid], ["\\\\Seen"], "add"); box.expunge()

See docs/storage.md for the layout and the rules.

SECURITY: mailbox names are validated (names.py) and cannot leave the maildir; files
are opened without following symlinks; errors carry paths in their text, which is for
the log only (clients get a generic message).
"""

from __future__ import annotations

from .index import unlink_later_with
from .errors import (InvalidMailboxName, LockTimeout, MailboxExists, MailboxInUse, MailboxNotFound, NoSpace,
                     QuotaExceeded, StorageError)
from .mailbox import Changes, Mailbox, Message, MessageExpunged
from .maildir import MailStore
from .names import INBOX, SEPARATOR, decode_mutf7, encode_mutf7

__all__ = [
    "StorageError", "MailboxNotFound", "MailboxExists", "InvalidMailboxName", "QuotaExceeded", "LockTimeout",
    "NoSpace", "MailboxInUse", "MessageExpunged", "SEPARATOR", "INBOX", "validate_mailbox_name",
    "encode_mutf7", "decode_mutf7", "MailStore", "Mailbox", "Message", "Changes", "unlink_later_with",
]


def validate_mailbox_name(name: str) -> str:
    """The canonical form of a Unicode mailbox name (INBOX normalised), or
    InvalidMailboxName for "..", "/", control characters, empty levels, too long."""
    from .names import validate_mailbox_name as _validate
    try:
        return _validate(name)
    except ValueError as e:
        raise InvalidMailboxName(f"{name!r}: {e}") from None
