"""A line-level IMAP client for the part-two tests: commands imaplib cannot send
(several literals) or answers whose order matters (LIST then STATUS)."""

from __future__ import annotations

import socket


class Raw:
    """A line-level client for commands imaplib cannot send (several literals)."""

    def __init__(self, port: int, user: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buf = b""
        self.line()
        assert b" OK" in self.cmd(b"l LOGIN " + user.encode() + b" postroom")[-1]

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            assert data, "connection closed"
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def cmd(self, text: bytes) -> list[bytes]:
        tag = text.split(b" ", 1)[0]
        self.sock.sendall(text + b"\r\n")
        out = []
        while True:
            out.append(self.line())
            if out[-1].startswith(tag + b" "):
                return out

    def close(self):
        self.cmd(b"z LOGOUT")
        self.sock.close()
