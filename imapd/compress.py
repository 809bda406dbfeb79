"""imapd.compress -- COMPRESS=DEFLATE (RFC 4978): the command and the deflate stream.

After the tagged OK of `COMPRESS DEFLATE` both directions are raw deflate (RFC
1951, no zlib header: window bits -15). The core answers and emits
`StartCompression`; the glue (`imapd.server`) then passes everything it writes
through `DeflateStream.deflate` (flushed with Z_SYNC_FLUSH, so each response
reaches the client at once) and everything it reads through `inflate`.

SECURITY: compressed input can expand enormously: `inflate` yields the output in
pieces of at most CHUNK bytes, so the glue hands each to the core, whose framer
limits apply before more is expanded. Broken deflate data raises
`CompressionError` and the connection is closed. A second COMPRESS is refused
with NO [COMPRESSIONACTIVE]; input the client pipelined behind COMPRESS in
clear text is discarded.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Iterator

from .parser import ParseError
from .protocol import AUTH, PENDING, Done, No, advertise, command

CHUNK = 64 * 1024


@dataclass(frozen=True)
class StartCompression:
    """From now on, deflate what is written and inflate what is read."""


class CompressionError(Exception):
    pass


class DeflateStream:
    def __init__(self, level: int = 6):
        self._out = zlib.compressobj(level, zlib.DEFLATED, -15)
        self._in = zlib.decompressobj(-15)

    def deflate(self, data: bytes) -> bytes:
        return self._out.compress(data) + self._out.flush(zlib.Z_SYNC_FLUSH)

    def inflate(self, data: bytes) -> Iterator[bytes]:
        """The plain bytes of `data`, in pieces of at most CHUNK."""
        pending = data
        while True:
            try:
                out = self._in.decompress(pending, CHUNK)
            except zlib.error as e:
                raise CompressionError(str(e)) from None
            if out:
                yield out
            pending = self._in.unconsumed_tail
            if not pending:
                return
            if self._in.eof:
                raise CompressionError("data after the end of the deflate stream")


@command("COMPRESS", AUTH)
def compress(conn, tag, r):
    r.sp()
    mechanism = r.atom().upper()
    r.end()
    if mechanism != "DEFLATE":
        raise ParseError("Unknown compression mechanism")
    if getattr(conn, "compressing", False):
        raise No("Compression is already active", "COMPRESSIONACTIVE")
    conn.finish(tag, None, Done("DEFLATE active"))
    conn.framer.discard_input()  # nothing sent in clear text after COMPRESS counts
    conn.compressing = True
    conn.emit(StartCompression())
    return PENDING


advertise("COMPRESS=DEFLATE")
