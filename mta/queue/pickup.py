"""mta.queue.pickup -- take local submissions from maildrop/ into the queue.

postroom-sendmail runs as any local user, without privileges: it writes a spool
file (the common.spool format) into maildrop/, a folder that is group-writable
and sticky like /tmp (see docs/queue.md for the setup). The pickup, running as
the MTA user, reads each file and writes a fresh, trusted spool file into
incoming/, then removes the maildrop file.

Nothing in the maildrop file is trusted except what the user may decide: the
recipients, the envelope sender (see below), DSN parameters and the message. The
file's owner (its uid, which the user cannot forge) decides who submitted it:

- the envelope sender becomes `user@sendmail_domain`; a user listed in
  `queue.sendmail_trusted` (and the MTA's own user) may set any sender with -f,
  anyone else only their own address, otherwise it is replaced (and logged);
- source is `sendmail` and auth_user the user's name (so DKIM signing applies);
- recipients lose anything but address, NOTIFY and ORCPT; bare names get
  `@sendmail_domain`; local ones are expanded through the aliases and the user
  database exactly as the receiving side does (mta.policy), so the MDA gets a
  mailbox and remote alias targets are forwarded;
- line ends become CRLF; a Received field names the uid; missing From, Date and
  Message-ID are added (as Postfix's cleanup does).

SECURITY: files are opened with O_NOFOLLOW and must be regular files no larger
than MAX_PICKUP; anything that does not parse goes to corrupt/ with a log line.
The new spool file reuses the maildrop queue id, so a crash between writing it
and removing the maildrop file cannot queue the message twice.
"""

from __future__ import annotations

import email.utils
import os
import pwd
import re
import stat
import time
import uuid

from common.fsutil import fsync_dir
from common.log import get_logger
from common.spool import CorruptSpoolFile, Envelope, Recipient, Spool, new_queue_id, parse

log = get_logger("mta.pickup")

MAX_PICKUP = 64 * 1024 * 1024
MAX_RECIPIENTS = 1000
_QID = re.compile(r"[0-9A-F]{22}")
_ADDRESS = re.compile(r"[^\s<>()\[\]\\,;:\"@]+(@[^\s<>()\[\]\\,;:\"@]+)?")


class Pickup:
    def __init__(self, spool: Spool, cfg, srs=None):
        self.spool = spool
        self.cfg = cfg.daemon.queue
        self.core = cfg.core
        self.domain = self.cfg.sendmail_domain or self.core.hostname
        self.own_uid = os.geteuid()
        self.policy = None
        try:
            from common.users import UserDB

            from ..aliases import Aliases
            from ..policy import RecipientPolicy

            self.policy = RecipientPolicy(cfg.core, cfg.daemon.recipients, UserDB(cfg.core.auth.users_file),
                                          Aliases(cfg.daemon.recipients.aliases_file), srs=srs)
        except Exception as e:   # no users file or aliases: local recipients go to the MDA as they are
            log.warn("pickup cannot expand local recipients: {why}", why=str(e))

    def reload(self) -> None:
        if self.policy is not None:
            self.policy.aliases.reload()
            self.policy.users.reload()

    def _expand(self, r: Recipient) -> list[Recipient]:
        targets = self.policy.resolve(r.address) if self.policy is not None else None
        if not targets:
            return [r]      # remote, or unknown here: the MDA (or the next hop) decides
        return [Recipient(t.address, orcpt=r.orcpt, notify=r.notify,
                          original=r.address if t.address != r.address else None,
                          mailbox=t.mailbox, folder=t.folder) for t in targets]

    def run(self, limit: int = 500) -> int:
        """Pick up at most `limit` files; returns how many were queued."""
        n = 0
        for name in self.spool.list("maildrop")[:limit]:
            try:
                if self._one(name):
                    n += 1
            except Exception as e:
                log.failure("pickup of maildrop/{name} failed: {why}", name=name, why=str(e))
        return n

    def _one(self, name: str) -> bool:
        path = self.spool.dir("maildrop") / name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as e:
            log.error("maildrop/{name}: cannot open ({why}); moved to corrupt/", name=name, why=e.strerror)
            self._corrupt(name)
            return False
        try:
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PICKUP or st.st_nlink != 1:
            log.error("maildrop/{name}: not a plain file within the size limit; moved to corrupt/", name=name)
            self._corrupt(name)
            return False
        try:
            sf = parse(path)
        except (CorruptSpoolFile, OSError) as e:
            log.error("maildrop/{name}: {why}; moved to corrupt/", name=name, why=str(e))
            self._corrupt(name)
            return False
        try:
            user = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            user = f"uid{st.st_uid}"
        env = sf.envelope
        if not env.recipients or len(env.recipients) > MAX_RECIPIENTS:
            log.error("maildrop/{name} from {user}: no or too many recipients; moved to corrupt/",
                      name=name, user=user)
            self._corrupt(name)
            return False
        own = f"{user}@{self.domain}"
        sender = env.sender
        trusted = st.st_uid == self.own_uid or user in self.cfg.sendmail_trusted
        if not trusted and sender.lower() != own.lower():
            if sender:
                log.warn("maildrop/{name}: {user} may not send as <{sender}>; sender set to <{own}>",
                         name=name, user=user, sender=sender[:200], own=own)
            sender = own
        if sender and not _ADDRESS.fullmatch(sender):
            sender = own
        rcpts = []
        for r in env.recipients:
            addr = r.address.strip()
            if not _ADDRESS.fullmatch(addr):
                log.error("maildrop/{name} from {user}: bad recipient address; moved to corrupt/",
                          name=name, user=user)
                self._corrupt(name)
                return False
            if "@" not in addr:
                addr = f"{addr}@{self.domain}"
            notify = tuple(n for n in (r.notify or ()) if n in ("NEVER", "SUCCESS", "FAILURE", "DELAY")) or None
            rcpts += self._expand(Recipient(addr, orcpt=r.orcpt if isinstance(r.orcpt, str) else None,
                                            notify=notify))
        message = _normalise(sf.read_message())
        message = self._headers(message, user, st.st_uid, sender or own)
        qid = env.queue_id if isinstance(env.queue_id, str) and _QID.fullmatch(env.queue_id) else new_queue_id()
        new = Envelope(sender=sender, recipients=rcpts, queue_id=qid, source="sendmail", auth_user=user,
                       body="8BITMIME" if not message.isascii() else "7BIT",
                       smtputf8=not (sender.isascii() and all(r.address.isascii() for r in rcpts)),
                       ret=env.ret if env.ret in ("FULL", "HDRS") else None,
                       envid=env.envid if isinstance(env.envid, str) else None, size=len(message))
        if not any(self.spool.path(q, qid).exists() for q in ("incoming", "active", "deferred", "hold")):
            self.spool.write(new, [message], "incoming")
            log.info("picked up from {user} (uid {uid}) from=<{sender}> nrcpt={n}", queue_id=qid,
                     trace_id=new.trace_id,
                     user=user, uid=st.st_uid, sender=sender, n=len(rcpts))
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)
        return True

    def _corrupt(self, name: str) -> None:
        try:
            os.rename(self.spool.dir("maildrop") / name, self.spool.dir("corrupt") / f"maildrop.{name}")
            fsync_dir(self.spool.dir("corrupt"))
        except OSError:
            pass

    def _headers(self, message: bytes, user: str, uid: int, sender: str) -> bytes:
        end = message.find(b"\r\n\r\n")
        head = message[: end + 2] if end >= 0 else message
        names = {line.split(b":", 1)[0].strip().lower() for line in head.split(b"\r\n")
                 if line and line[:1] not in (b" ", b"\t") and b":" in line}
        now = time.time()
        add = [f"Received: by {self.core.hostname} (postroom-sendmail, from userid {uid});\r\n"
               f"\t{email.utils.formatdate(now)}"]
        if b"from" not in names:
            add.append(f"From: {sender}")
        if b"date" not in names:
            add.append(f"Date: {email.utils.formatdate(now, localtime=True)}")
        if b"message-id" not in names:
            add.append(f"Message-ID: <{time.strftime('%Y%m%d%H%M%S', time.gmtime(now))}."
                       f"{uuid.uuid4().hex[:16]}@{self.core.hostname}>")
        if end < 0 and b":" not in message.split(b"\r\n", 1)[0]:
            # No header at all: the whole input is a body.
            message = b"\r\n" + message
        return "".join(h + "\r\n" for h in add).encode("utf-8") + message


def _normalise(data: bytes) -> bytes:
    data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
    if data and not data.endswith(b"\r\n"):
        data += b"\r\n"
    return data
