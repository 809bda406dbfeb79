"""The passwd-file user database: Dovecot's format, errors with line numbers,
reload that keeps the old users when the new file is broken, maildir and quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from common.config.core import Paths, PostroomConfig
from common.config.loader import ConfigError
from common.users import UserDB, UserRecord, parse_line

SHA = "{SHA512-CRYPT}$6$fixedsalt16$o/I64ONYIlVWnNrOF7W/QpfxCnc4QNgdhlq/nyPXZlXU8b2EAC1Xa79PAa5/oRQLPO5bibF5ZeaM5bP9RKp7J0"

DOVECOT_FILE = f"""\
# a Dovecot passwd-file, used as is
Alice@Example.TEST:{SHA}:5000:5000::/srv/mail/alice::userdb_quota_rule=*:storage=1G userdb_quota_rule2=*:messages=1000
bob@example.test:{SHA}
carol@example.test:{SHA}:::Carol C.:/srv/mail/carol:/bin/false:quota_rule=*:storage=512M:messages=50 nopassword

dave@example.test:{SHA}:::::
plainuser:{{PLAIN}}pw::::::userdb_home=/srv/plain
"""


def write(tmp_path: Path, text: str, name: str = "users") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_dovecot_file_parses(tmp_path):
    db = UserDB(write(tmp_path, DOVECOT_FILE))
    assert db.names() == ["alice@example.test", "bob@example.test", "carol@example.test",
                          "dave@example.test", "plainuser"]
    alice = db.lookup("ALICE@example.test")
    assert alice == db.lookup("alice@example.test")
    assert alice.name == "alice@example.test"
    assert alice.password == SHA
    assert (alice.uid, alice.gid, alice.home) == (5000, 5000, Path("/srv/mail/alice"))
    assert alice.extra["userdb_quota_rule"] == "*:storage=1G"
    assert alice.quota() == (1024**3, 1000)
    bob = db.lookup("bob@example.test")
    assert (bob.uid, bob.gid, bob.home, dict(bob.extra)) == (None, None, None, {})
    carol = db.lookup("carol@example.test")
    assert carol.home == Path("/srv/mail/carol")
    assert carol.extra["nopassword"] == ""
    assert carol.quota() == (512 * 1024**2, 50)
    assert db.lookup("plainuser").home == Path("/srv/plain")
    assert db.lookup("nobody@example.test") is None
    assert len(db) == 5


def test_password_hash_not_in_repr():
    record = parse_line(f"x@example.test:{SHA}")
    assert "fixedsalt" not in repr(record)


@pytest.mark.parametrize("line,message", [
    (":{PLAIN}x", "the user name is empty"),
    ("a/b@example.test:{PLAIN}x", "does not allow"),
    ("..@example.test:{PLAIN}x", "does not allow"),
    ("a b@example.test:{PLAIN}x", "does not allow"),
    ("a@example.test:{PLAIN}x:abc:::", "uid 'abc'"),
    ("a@example.test:{PLAIN}x:1:zz-no-such-group:::", "gid 'zz-no-such-group'"),
    ("a@example.test:{PLAIN}x::::relative/home", "not an absolute path"),
    ("a@example.test:{PLAIN}x::::::quota_rule=*:storage=lots", "bad limit"),
    ("a@example.test:{PLAIN}x::::::quota_rule=storage", "expected MAILBOX:LIMITS"),
    ("a@example.test:{PLAIN}x::::::=novalue", "has no name"),
])
def test_malformed_line_is_a_config_error_with_its_line(tmp_path, line, message):
    path = write(tmp_path, f"# header\nok@example.test:{SHA}\n\n{line}\n")
    with pytest.raises(ConfigError) as info:
        UserDB(path)
    assert info.value.file == str(path)
    assert info.value.line == 4
    assert message in info.value.message
    assert str(info.value).startswith(f"{path}:4: ")


def test_duplicate_and_bad_utf8_and_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        UserDB(write(tmp_path, f"a@x:{SHA}\nA@X:{SHA}\n"))
    assert (info.value.line, info.value.message) == (2, "the user a@x appears twice")
    path = tmp_path / "latin1"
    path.write_bytes(b"ok@x:{PLAIN}a\nj\xf6rg@x:{PLAIN}x\n")
    with pytest.raises(ConfigError) as info:
        UserDB(path)
    assert (info.value.line, info.value.message) == (2, "not valid UTF-8")
    with pytest.raises(ConfigError) as info:
        UserDB(tmp_path / "absent")
    assert info.value.message == "user file not found"


def test_crlf_lines_and_uid_by_name(tmp_path):
    db = UserDB(write(tmp_path, f"a@x:{SHA}:root:root::/h\r\n"))
    record = db.lookup("a@x")
    assert (record.uid, record.gid, record.home, record.password) == (0, 0, Path("/h"), SHA)


def _touch_later(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_reload_picks_up_changes_and_keeps_old_users_when_broken(tmp_path):
    path = write(tmp_path, f"a@x:{SHA}\n")
    db = UserDB(path, check_interval=0)
    assert db.reload() is False  # unchanged
    _touch_later(path, f"a@x:{SHA}\nb@x:{SHA}\n")
    assert db.reload() is True
    assert db.names() == ["a@x", "b@x"]
    _touch_later(path, f"a@x:{SHA}\nb@x:{SHA}:notanumber\n")
    assert db.reload() is False
    assert db.names() == ["a@x", "b@x"]  # the broken file changed nothing
    assert db.reload() is False  # and is not re-read until it changes again
    path.unlink()
    assert db.reload() is False
    assert db.lookup("b@x") is not None
    write(tmp_path, f"c@x:{SHA}\n")
    assert db.reload() is True
    assert db.names() == ["c@x"]


def test_lookup_rechecks_the_file_after_the_interval(tmp_path):
    path = write(tmp_path, f"a@x:{SHA}\n")
    db = UserDB(path, check_interval=0.01)
    _touch_later(path, f"a@x:{SHA}\nnew@x:{SHA}\n")
    import time
    time.sleep(0.02)
    assert db.lookup("new@x") is not None


def test_maildir_expansion(tmp_path):
    core = PostroomConfig(hostname="h", paths=Paths(mail=tmp_path / "mail"))
    with_home = UserRecord("ann@example.test", SHA, home=Path("/srv/ann"))
    no_home = UserRecord("ann@example.test", SHA)
    assert with_home.maildir(core) == Path("/srv/ann/Maildir")
    assert no_home.maildir(core) == tmp_path / "mail" / "example.test" / "ann" / "Maildir"
    for location, expected in [
        ("/var/vmail/%d/%n", "/var/vmail/example.test/ann"),
        ("/var/vmail/%u/", "/var/vmail/ann@example.test"),
        ("maildir:~/Mail:LAYOUT=fs", "/srv/ann/Mail"),
        ("%h", "/srv/ann"),
        ("/m/100%%/%n", "/m/100%/ann"),
        ("rel/%n", str(tmp_path / "mail" / "rel" / "ann")),
    ]:
        core2 = PostroomConfig(hostname="h", mail_location=location, paths=Paths(mail=tmp_path / "mail"))
        assert with_home.maildir(core2) == Path(expected), location
    with pytest.raises(ValueError):
        with_home.maildir(PostroomConfig(hostname="h", mail_location="/m/%z"))


@pytest.mark.parametrize("extra,expected", [
    ({}, (None, None)),
    ({"quota_rule": "*:storage=1G"}, (1024**3, None)),
    ({"quota_rule": "*:storage=100"}, (100 * 1024, None)),  # Dovecot: kilobytes without a unit
    ({"quota_rule": "*:bytes=100"}, (100, None)),
    ({"quota_rule": "*:storage=10M", "quota_rule2": "*:messages=1000"}, (10 * 1024**2, 1000)),
    ({"userdb_quota_rule": "*:storage=1G:messages=10"}, (1024**3, 10)),
    ({"quota_rule": "*:storage=1G", "quota_rule2": "Trash:storage=+100M"}, (1024**3, None)),
    ({"quota_rule": "*:storage=0"}, (None, None)),
    ({"quota_rule": "*:storage=1G", "quota_rule2": "*:ignore"}, (None, None)),
    ({"quota_rule2": "*:storage=2G", "quota_rule": "*:storage=1G"}, (2 * 1024**3, None)),
])
def test_quota_rules(extra, expected):
    assert UserRecord("u@x", SHA, extra=extra).quota() == expected


def test_reference_hash_is_of_the_kind_most_users_have(tmp_path):
    bcrypt5 = "{BLF-CRYPT}$2y$05$pSn/pY0tX0VTMh0lT9YD5uJmYAEbfj/9uhiWVgxnGUOhk8bamyR8O"
    bcrypt10 = "$2y$10$7ykmDfcjOp0a.5fTKucXNOaPTdZW4OO7P.yC5gEdPzblwtxweWfve"
    argon = "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$Z5vzSlD8LMr2VutF4Xm4zA$ZeFQ8IFYFjSlXRYOGxtqHDKJ7JPugvAOeJ9MSz2g+j0"
    lines = ["p@x:{PLAIN}pw", f"a@x:{SHA}", f"b@x:{bcrypt5}", f"c@x:{bcrypt10}", f"d@x:{bcrypt10}",
             f"e@x:{argon}", "f@x:{MD5}abc", "g@x:"]
    db = UserDB(write(tmp_path, "\n".join(lines) + "\n"))
    assert db.reference_hash() == bcrypt10
    assert UserDB(write(tmp_path, "p@x:{PLAIN}pw\n", "plain")).reference_hash() is None
