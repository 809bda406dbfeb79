"""common.storage.uidlist -- Dovecot's dovecot-uidlist file, version 3.

    3 V<uidvalidity> N<nextuid> G<mailbox guid hex> [more header fields]
    <uid> [<ext letter><value> ...] :<base file name>

The base name is the maildir file name without ":2,flags". Dovecot's record
extensions (W virtual size, S physical size, G message GUID, P POP3 UIDL, O POP3
order) and unknown header fields are kept as they are when we rewrite the file, so
Dovecot can take the maildir back. Version 1 files ("1 <uidvalidity> <nextuid>"
then "<uid> <name>") are read too.

SECURITY: the file is in the user's maildir and so user-writable: parsing is strict
about numbers, bounded by the caller's read limit, and a malformed file is refused
(the caller then keeps its previous view) rather than half-used.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field


class UidListError(ValueError):
    pass


@dataclass
class UidRecord:
    uid: int
    extensions: list[str] = field(default_factory=list)  # raw "W1234" tokens, in order

    def ext(self, letter: str) -> str | None:
        for token in self.extensions:
            if token[:1] == letter:
                return token[1:]
        return None


@dataclass
class UidList:
    uidvalidity: int
    next_uid: int = 1
    guid: str = field(default_factory=lambda: uuid.uuid4().hex)
    header_extra: list[str] = field(default_factory=list)
    records: dict[str, UidRecord] = field(default_factory=dict)  # base name -> record
    last_uid: int = 0  # highest UID of a record read or assigned (records come in UID order)

    def assign(self, base: str) -> int:
        uid = self.next_uid
        self.records[base] = UidRecord(uid)
        self.next_uid += 1
        self.last_uid = uid
        return uid

    def by_uid(self) -> dict[int, str]:
        return {r.uid: b for b, r in self.records.items()}

    def format(self) -> bytes:
        head = " ".join(["3", f"V{self.uidvalidity}", f"N{self.next_uid}", f"G{self.guid}", *self.header_extra])
        lines = [head]
        for base, rec in sorted(self.records.items(), key=lambda item: item[1].uid):
            lines.append(" ".join([str(rec.uid), *rec.extensions, ":" + base]))
        return ("\n".join(lines) + "\n").encode("utf-8")


def _number(s: str, what: str) -> int:
    if not s.isdigit() or len(s) > 10:
        raise UidListError(f"bad {what}: {s[:20]!r}")
    value = int(s)
    if value > 0xFFFFFFFF:
        raise UidListError(f"{what} out of range")
    return value


def parse(data: bytes) -> UidList:
    text = data.decode("utf-8", "surrogateescape")
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        raise UidListError("empty uidlist")
    head = lines[0].split()
    version = head[0]
    if version == "1":
        if len(head) < 3:
            raise UidListError("short version 1 header")
        ul = UidList(_number(head[1], "uidvalidity"), _number(head[2], "next uid"))
    elif version in ("2", "3"):
        values: dict[str, str] = {}
        extra: list[str] = []
        for token in head[1:]:
            if token[:1] in "VNG" and token[:1] not in values:
                values[token[:1]] = token[1:]
            else:
                extra.append(token)
        if "V" not in values or "N" not in values:
            raise UidListError("uidlist header lacks V or N")
        ul = UidList(_number(values["V"], "uidvalidity"), _number(values["N"], "next uid"),
                     values.get("G") or uuid.uuid4().hex, extra)
    else:
        raise UidListError(f"unsupported uidlist version {version[:5]!r}")
    _parse_lines(lines[1:], ul, version)
    return ul


def parse_records(data: bytes, ul: UidList) -> None:
    """Records appended to a version 3 file after it was parsed (as Dovecot appends
    new UIDs): added to `ul`; UidListError when they do not follow on."""
    _parse_lines(data.decode("utf-8", "surrogateescape").split("\n"), ul, "3")


def _parse_lines(lines: list[str], ul: UidList, version: str) -> None:
    last = ul.last_uid
    for line in lines:
        if not line:
            continue
        if version == "1":
            uid_s, _, base = line.partition(" ")
            exts: list[str] = []
        else:
            left, sep, base = line.partition(" :")
            if not sep:
                # Version 2 lines may lack the colon: "<uid> <name>".
                left, _, base = line.partition(" ")
            uid_s, *exts = left.split()
        uid = _number(uid_s, "uid")
        base = base.split(":", 1)[0]
        if not base or "/" in base or uid <= last:
            raise UidListError(f"bad uidlist record for uid {uid}")
        last = uid
        ul.records[base] = UidRecord(uid, exts)
    ul.last_uid = last
    if last >= ul.next_uid:
        ul.next_uid = last + 1
