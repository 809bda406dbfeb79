"""mda.sieve.lexer -- Sieve script text (RFC 5228 section 8.1) into tokens.

Each token carries its line and column (both from 1) so every error a user sees
points at the place in the script. Comments (``#`` to the end of the line and
``/* ... */``) and white space are dropped. Multi-line strings (``text:`` ...
``.``) are undone (dot-stuffing removed); line ends are kept as ``\\n``.

SECURITY: scripts are written by users and are untrusted. The lexer is one linear
pass; the caller bounds the script size before calling it. Nothing here evaluates
anything.
"""

from __future__ import annotations

from dataclasses import dataclass


class SieveSyntaxError(Exception):
    """A mistake in a script, located by line and column."""

    def __init__(self, message: str, line: int, column: int, script: str = ""):
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column
        self.script = script

    def __str__(self) -> str:
        where = f"{self.script}:" if self.script else ""
        return f"{where}{self.line}:{self.column}: {self.message}"


# Token kinds.
IDENTIFIER = "identifier"
TAG = "tag"
NUMBER = "number"
STRING = "string"
SPECIAL = "special"   # one of [ ] ( ) , ; { }
EOF = "end of script"

_QUANTIFIERS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SPECIALS = "[](),;{}"


@dataclass(frozen=True)
class Token:
    kind: str
    value: object       # str for identifiers, tags, strings and specials; int for numbers
    line: int
    column: int
    multiline: bool = False

    def describe(self) -> str:
        if self.kind == EOF:
            return "the end of the script"
        if self.kind == STRING:
            return "a string"
        if self.kind == NUMBER:
            return f"the number {self.value}"
        if self.kind == TAG:
            return f"the tag :{self.value}"
        return f"{self.value!r}"


def _is_ident_start(c: str) -> bool:
    return c == "_" or ("a" <= c <= "z") or ("A" <= c <= "Z")


def _is_ident_char(c: str) -> bool:
    return _is_ident_start(c) or "0" <= c <= "9"


def tokenize(text: str, script: str = "") -> list[Token]:
    """The tokens of text, ending with one EOF token. Raises SieveSyntaxError."""
    text = text.replace("\r\n", "\n")
    tokens: list[Token] = []
    i, n = 0, len(text)
    line, line_start = 1, 0

    def fail(msg: str, at: int | None = None, at_line: int | None = None, at_start: int | None = None):
        pos = i if at is None else at
        ln = line if at_line is None else at_line
        st = line_start if at_start is None else at_start
        raise SieveSyntaxError(msg, ln, pos - st + 1, script)

    while i < n:
        c = text[i]
        if c == "\n":
            i += 1
            line, line_start = line + 1, i
            continue
        if c in " \t":
            i += 1
            continue
        col = i - line_start + 1
        if c == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                fail("unterminated /* comment")
            chunk = text[i:end + 2]
            nl = chunk.count("\n")
            if nl:
                line += nl
                line_start = i + chunk.rfind("\n") + 1
            i = end + 2
            continue
        if c in _SPECIALS:
            tokens.append(Token(SPECIAL, c, line, col))
            i += 1
            continue
        if c == ":":
            j = i + 1
            if j >= n or not _is_ident_start(text[j]):
                fail("':' must be followed by a tag name")
            while j < n and _is_ident_char(text[j]):
                j += 1
            tokens.append(Token(TAG, text[i + 1:j].lower(), line, col))
            i = j
            continue
        if "0" <= c <= "9":
            j = i
            while j < n and "0" <= text[j] <= "9":
                j += 1
            digits = text[i:j]
            value = int(digits) if len(digits) <= 12 else 1 << 62
            if j < n and text[j].upper() in _QUANTIFIERS:
                value *= _QUANTIFIERS[text[j].upper()]
                j += 1
            if j < n and _is_ident_char(text[j]):
                fail("a number must be followed by space or punctuation", j)
            tokens.append(Token(NUMBER, min(value, 1 << 62), line, col))
            i = j
            continue
        if c == '"':
            start_line, start_col = line, col
            j = i + 1
            out: list[str] = []
            while True:
                if j >= n:
                    raise SieveSyntaxError("unterminated string", start_line, start_col, script)
                d = text[j]
                if d == '"':
                    break
                if d == "\\":
                    if j + 1 >= n:
                        raise SieveSyntaxError("unterminated string", start_line, start_col, script)
                    # RFC 5228 2.4.2: \" is ", \\ is \, any other escaped character is itself.
                    d = text[j + 1]
                    j += 1
                if d == "\n":
                    line, line_start = line + 1, j + 1
                out.append(d)
                j += 1
            tokens.append(Token(STRING, "".join(out), start_line, start_col))
            i = j + 1
            continue
        if _is_ident_start(c):
            j = i
            while j < n and _is_ident_char(text[j]):
                j += 1
            word = text[i:j]
            if word.lower() == "text" and j < n and text[j] == ":":
                i, line, line_start = _multiline(text, j + 1, line, col, script, tokens)
                continue
            tokens.append(Token(IDENTIFIER, word.lower(), line, col))
            i = j
            continue
        fail(f"unexpected character {c!r}")
    tokens.append(Token(EOF, None, line, i - line_start + 1))
    return tokens


def _multiline(text: str, i: int, line: int, col: int, script: str, tokens: list[Token]):
    """Read a text: string starting after the colon. Returns (index, line, line_start)."""
    n = len(text)
    start_line = line
    # Only white space and an optional # comment may follow "text:" on its line.
    while i < n and text[i] in " \t":
        i += 1
    if i < n and text[i] == "#":
        end = text.find("\n", i)
        i = n if end < 0 else end
    if i >= n or text[i] != "\n":
        raise SieveSyntaxError("text: must be followed by the end of the line", line, col, script)
    i += 1
    line += 1
    lines: list[str] = []
    while True:
        if i >= n:
            raise SieveSyntaxError("multi-line string not ended by a line with a single '.'", start_line, col, script)
        end = text.find("\n", i)
        if end < 0:
            end = n
        current = text[i:end]
        i = min(end + 1, n)
        line += 1
        if current == ".":
            break
        if current.startswith(".."):
            current = current[1:]
        lines.append(current + "\n")
    tokens.append(Token(STRING, "".join(lines), start_line, col, multiline=True))
    return i, line, i
