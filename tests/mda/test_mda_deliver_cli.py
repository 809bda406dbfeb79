"""postroom-deliver as the MTA runs it: a real subprocess, the message on standard
input, the exit status and standard error checked."""

from __future__ import annotations


import socket
import struct
import subprocess
import sys

from tests.mda.mda_support import MESSAGE, folder_files, maildir, mda_config, small_maildir_disk, write_script


def deliver(etc, *args, message=MESSAGE):
    return subprocess.run([sys.executable, "-m", "mda.deliver", "-c", str(etc), *args], input=message,
                          capture_output=True, timeout=60)


def test_delivered_exit_0(tmp_path):
    etc = mda_config(tmp_path)
    p = deliver(etc, "-d", "alice@example.test", "-f", "sender@remote.test")
    assert p.returncode == 0, p.stderr
    [f] = folder_files(tmp_path)
    assert f.read_bytes().startswith(b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\n")


def test_mbox_from_line_default_folder_and_return_path_header(tmp_path):
    etc = mda_config(tmp_path)
    msg = b"From sender@remote.test  Sun Nov 22 01:00:00 2026\nReturn-Path: <rp@remote.test>\n" + MESSAGE.replace(b"\r\n", b"\n")
    p = deliver(etc, "-d", "alice", "-a", "alice+x@example.test", "-m", "Incoming", message=msg)
    assert p.returncode == 0, p.stderr
    [f] = folder_files(tmp_path, "Incoming")
    data = f.read_bytes()
    # The message's own Return-Path gave the sender and is replaced, not kept below ours.
    assert data.startswith(b"Return-Path: <rp@remote.test>\nDelivered-To: alice+x@example.test\nFrom: Sender")
    assert data.count(b"Return-Path:") == 1
    assert b"\r\n" not in data


def test_unknown_user_exit_67(tmp_path):
    p = deliver(mda_config(tmp_path), "-d", "nobody@example.test")
    assert p.returncode == 67
    assert b"550 5.1.1" in p.stderr


def test_reject_exit_77_with_reason_on_stderr(tmp_path):
    write_script(tmp_path, 'require "reject"; reject "I do not want your mail";')
    p = deliver(mda_config(tmp_path), "-d", "alice@example.test")
    assert p.returncode == 77
    assert p.stderr.decode().strip() == "postroom-deliver: 550 5.7.1 I do not want your mail"


def test_over_quota_77_or_75_when_temporary(tmp_path):
    extra = {"alice@example.test": "userdb_quota_rule=*:storage=1"}   # 1 KiB
    big = MESSAGE + b"x" * 4096
    p = deliver(mda_config(tmp_path, user_extra=extra), "-d", "alice@example.test", message=big)
    assert p.returncode == 77 and b"552 5.2.2" in p.stderr
    p = deliver(mda_config(tmp_path, "quota_temporary: true\n", user_extra=extra), "-d", "alice@example.test", message=big)
    assert p.returncode == 75 and b"452 4.2.2" in p.stderr


def test_local_problem_exit_75(tmp_path):
    etc = mda_config(tmp_path)
    md = maildir(tmp_path)
    md.parent.mkdir(parents=True)
    md.write_text("not a maildir")
    p = deliver(etc, "-d", "alice@example.test")
    assert p.returncode == 75 and b"4.3.0" in p.stderr
    assert b"Traceback" not in p.stderr


def test_bad_configuration_exit_78(tmp_path):
    etc = mda_config(tmp_path, "no_such_setting: 1\n")
    p = deliver(etc, "-d", "alice@example.test")
    assert p.returncode == 78 and b"unknown key" in p.stderr


def test_bad_usage_is_temporary(tmp_path):
    p = deliver(mda_config(tmp_path), "--frobnicate")
    assert p.returncode == 75


def test_too_big_exit_77(tmp_path):
    p = deliver(mda_config(tmp_path, "max_message_size: 1K\n"), "-d", "alice@example.test", message=MESSAGE + b"x" * 2000)
    assert p.returncode == 77 and b"5.3.4" in p.stderr


def test_disk_full_exit_75(tmp_path):
    with small_maildir_disk(tmp_path) as (_mount, core_extra):
        p = deliver(mda_config(tmp_path, core_extra=core_extra), "-d", "alice@example.test",
                    message=MESSAGE + b"x" * 200_000)
        assert p.returncode == 75 and b"452 4.3.1" in p.stderr


def test_unexpected_exception_exits_75_without_a_traceback(tmp_path):
    """Standard input that fails while the message is read (here a TCP connection reset
    by its peer) raises an error no code path expects: the MTA must keep the message,
    so the exit is 75 with a one-line reason."""
    etc = mda_config(tmp_path)
    with socket.create_server(("127.0.0.1", 0)) as server, \
            socket.create_connection(server.getsockname()) as stdin:
        peer, _ = server.accept()
        peer.sendall(MESSAGE[:40])
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()   # an abortive close: the reader gets ECONNRESET
        p = subprocess.run([sys.executable, "-m", "mda.deliver", "-c", str(etc), "-d", "alice@example.test"],
                           stdin=stdin.fileno(), capture_output=True, timeout=60)
    assert p.returncode == 75, p.stderr
    assert p.stderr.decode().strip() == ("postroom-deliver: 451 4.3.0 Temporary local problem, try again later "
                                         "(ConnectionResetError)")
    assert folder_files(tmp_path) == []
