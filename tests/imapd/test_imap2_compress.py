"""COMPRESS=DEFLATE (RFC 4978): imaplib over a raw deflate stream (zlib with window
bits -15 both ways) against the real daemon, plain and over TLS; a second
COMPRESS refused; broken deflate data ends the connection."""

from __future__ import annotations

import imaplib
import socket
import zlib

import pytest

from imapd.compress import CHUNK, CompressionError, DeflateStream

# imaplib does not know COMPRESS; allow it in every state so the server's checks are seen.
imaplib.Commands.setdefault("COMPRESS", ("NONAUTH", "AUTH", "SELECTED"))


class DeflateIMAP4(imaplib.IMAP4):
    """imaplib with COMPRESS DEFLATE: after the OK, send and read through zlib."""

    _z_out = _z_in = None
    _plain = b""

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        if typ == "OK":
            self._z_out = zlib.compressobj(6, zlib.DEFLATED, -15)
            self._z_in = zlib.decompressobj(-15)
        return typ, data

    def send(self, data):
        if self._z_out is not None:
            data = self._z_out.compress(data) + self._z_out.flush(zlib.Z_SYNC_FLUSH)
        super().send(data)

    def _fill(self):
        raw = self.sock.recv(65536)
        if not raw:
            raise imaplib.IMAP4.abort("connection closed")
        self._plain += self._z_in.decompress(raw)

    def read(self, size):
        if self._z_in is None:
            return super().read(size)
        while len(self._plain) < size:
            self._fill()
        out, self._plain = self._plain[:size], self._plain[size:]
        return out

    def readline(self):
        if self._z_in is None:
            return super().readline()
        while b"\n" not in self._plain:
            self._fill()
        i = self._plain.index(b"\n") + 1
        out, self._plain = self._plain[:i], self._plain[i:]
        return out


def test_deflate_stream_round_trip_and_bounded_inflate():
    server, client_out = DeflateStream(), zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = client_out.compress(b"a" * (10 * CHUNK)) + client_out.flush(zlib.Z_SYNC_FLUSH)
    pieces = list(server.inflate(bomb))
    assert all(len(p) <= CHUNK for p in pieces) and b"".join(pieces) == b"a" * (10 * CHUNK)
    client_in = zlib.decompressobj(-15)
    assert client_in.decompress(server.deflate(b"* OK hello\r\n")) == b"* OK hello\r\n"
    with pytest.raises(CompressionError):
        list(DeflateStream().inflate(b"\xff\xff\xff\xff garbage"))


def test_compress_with_imaplib(imapd):
    c = DeflateIMAP4("127.0.0.1", imapd.port, timeout=10)
    try:
        assert b"COMPRESS=DEFLATE" in c.capability()[1][0].split()
        c.login(imapd.user, "postroom")
        assert c.compress()[0] == "OK"
        body = b"Subject: squeezed\r\n\r\n" + b"compress me " * 5000 + b"\r\n"
        assert c.append("INBOX", None, None, body)[0] == "OK"
        assert c.select("INBOX") == ("OK", [b"1"])
        typ, data = c.fetch("1", "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == body
        typ, data = c._simple_command("COMPRESS", "DEFLATE")
        assert typ == "NO" and b"COMPRESSIONACTIVE" in data[0]
        assert c.noop()[0] == "OK"
    finally:
        c.logout()


def test_compress_over_tls_and_before_login(imapd):
    c = DeflateIMAP4("127.0.0.1", imapd.port, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="Log in first"):
            c.compress()
        c.login(imapd.user, "postroom")
        with pytest.raises(imaplib.IMAP4.error, match="Unknown compression"):
            c._simple_command("COMPRESS", "GZIP")
        assert c.noop()[0] == "OK"  # still in clear text
    finally:
        c.shutdown()
    t = imapd.tls_client()
    try:
        t.login(imapd.user, "postroom")
        typ, _ = t._simple_command("COMPRESS", "DEFLATE")
        assert typ == "OK"
        out, inflate = zlib.compressobj(6, zlib.DEFLATED, -15), zlib.decompressobj(-15)
        t.sock.sendall(out.compress(b"z1 NOOP\r\n") + out.flush(zlib.Z_SYNC_FLUSH))
        got = b""
        while b"z1 OK" not in got:
            got += inflate.decompress(t.sock.recv(65536))
        assert got.endswith(b"z1 OK NOOP completed\r\n")
    finally:
        t.shutdown()


def test_broken_deflate_input_closes_the_connection(imapd):
    c = imapd.client()
    assert c._simple_command("COMPRESS", "DEFLATE")[0] == "OK"
    c.sock.sendall(b"\xff\xff\xff\xff this is not deflate\r\n")
    inflate = zlib.decompressobj(-15)
    got = b""
    c.sock.settimeout(10)
    while True:
        try:
            data = c.sock.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not data:
            break
        got += inflate.decompress(data)
    assert b"* BYE" in got
    c.shutdown()
