"""mda.sieve.ext_encoded -- "encoded-character" (RFC 5228 2.4.2.4): ${hex:...} and
${unicode:...} in strings, decoded when the script is parsed. A sequence that does
not have the right form is left as written; one that has the form but names an
impossible character is an error."""

from __future__ import annotations

import re

from .parser import REGISTRY

REGISTRY.capability("encoded-character")

_ENCODED = re.compile(r"\$\{(hex|unicode):([ \t\r\n0-9A-Fa-f]*)\}", re.IGNORECASE)


def decode_encoded_characters(s: str) -> str:
    def sub(m: re.Match) -> str:
        kind = m.group(1).lower()
        words = m.group(2).split()
        if kind == "hex":
            if any(len(w) > 2 for w in words):
                return m.group(0)
            try:
                return bytes(int(w, 16) for w in words).decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"{m.group(0)!r} is not valid UTF-8") from None
        if any(len(w) > 6 for w in words):
            raise ValueError(f"{m.group(0)!r} names a character beyond Unicode")
        out = []
        for w in words:
            cp = int(w, 16)
            if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                raise ValueError(f"{m.group(0)!r} names an invalid Unicode character")
            out.append(chr(cp))
        return "".join(out)

    return _ENCODED.sub(sub, s)
