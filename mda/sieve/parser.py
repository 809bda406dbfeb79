"""mda.sieve.parser -- tokens into a checked script tree (RFC 5228 sections 2, 3, 8.2).

Two steps, both reporting SieveSyntaxError with the line and column of the culprit:

1. the grammar: commands, blocks, arguments, string lists, tests and test lists;
2. the check: every command and test is known and its extension was required, tags
   are known and not repeated, tag groups (comparator, match type, address part...)
   are used at most once, positional arguments have the right kind and number,
   if/elsif/else are in order, and each command's own checks (comparators exist,
   relational operators are valid, regular expressions compile...).

Commands and tests are described by `Spec` objects in `REGISTRY`; the base
language and each extension module (ext_*.py) add theirs. A checked `Script` is
immutable and can be run many times.

SECURITY: scripts are untrusted. Nesting depth, the number of commands and the
length of string lists are bounded; nothing is executed here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .lexer import EOF, IDENTIFIER, NUMBER, SPECIAL, STRING, TAG, SieveSyntaxError, Token, tokenize

MAX_NESTING = 32
MAX_NODES = 5000
MAX_LIST = 1024
MAX_SCRIPT_SIZE = 1 << 20


# -- the tree ---------------------------------------------------------------------------


@dataclass
class StringArg:
    values: list[str]
    is_list: bool
    line: int
    column: int


@dataclass
class NumberArg:
    value: int
    line: int
    column: int


@dataclass
class TagArg:
    name: str
    line: int
    column: int


@dataclass
class Node:
    """A command or a test. After the check, `tags` maps each tag given (":copy") to
    its value (True when it takes none) and `positional` holds the other arguments
    as Python values (list[str] for string lists, str for strings, int)."""

    name: str
    line: int
    column: int
    args: list[Any] = field(default_factory=list)
    tests: list["Node"] = field(default_factory=list)
    block: list["Node"] | None = None
    spec: "Spec | None" = None
    tags: dict[str, Any] = field(default_factory=dict)
    groups: dict[str, str] = field(default_factory=dict)     # group -> tag used
    positional: list[Any] = field(default_factory=list)
    branches: list[tuple["Node | None", list["Node"]]] = field(default_factory=list)  # if chains
    compiled: Any = None                                      # a spec's cache (a regex...)

    def where(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass
class Script:
    name: str
    commands: list[Node]
    requires: frozenset[str]


# -- specs ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TagSpec:
    name: str                       # without the colon
    value: str | None = None        # None, "string", "number" or "stringlist"
    group: str | None = None        # tags of one group exclude each other
    extension: str | None = None    # capability that must be required to use it


@dataclass
class Spec:
    name: str
    kind: str                                   # "command" or "test"
    run: Callable[..., Any] | None = None       # command: run(node, ctx); test: run(node, ctx) -> bool
    extension: str | None = None
    positional: tuple[str, ...] = ()            # "string", "stringlist", "number"
    variants: tuple[tuple[str, ...], ...] = ()  # several allowed positional shapes, told apart by count
    tags: dict[str, TagSpec] = field(default_factory=dict)
    uses: tuple[str, ...] = ()                  # shared tag groups: comparator, match, addrpart
    tests: str = "none"                         # none, one, list
    block: bool = False
    check: Callable[[Node, "Checker"], None] | None = None
    action: bool = False                        # counts toward the action limit


class Registry:
    """Every command, test, shared tag group and capability the interpreter knows."""

    def __init__(self) -> None:
        self.commands: dict[str, Spec] = {}
        self.tests: dict[str, Spec] = {}
        self.groups: dict[str, dict[str, TagSpec]] = {"comparator": {}, "match": {}, "addrpart": {}}
        self.capabilities: set[str] = set()
        self.implies: dict[str, tuple[str, ...]] = {}

    def command(self, spec: Spec) -> Spec:
        spec.kind = "command"
        self.commands[spec.name] = spec
        return spec

    def test(self, spec: Spec) -> Spec:
        spec.kind = "test"
        self.tests[spec.name] = spec
        return spec

    def capability(self, *names: str) -> None:
        self.capabilities.update(names)

    def group_tag(self, group: str, tag: TagSpec) -> None:
        self.groups[group][tag.name] = tag

    def add_tag(self, kind: str, name: str, tag: TagSpec) -> None:
        table = self.commands if kind == "command" else self.tests
        table[name].tags[tag.name] = tag

    def tags_for(self, spec: Spec) -> dict[str, TagSpec]:
        tags = dict(spec.tags)
        for g in spec.uses:
            tags.update(self.groups[g])
        return tags


REGISTRY = Registry()


# -- grammar ----------------------------------------------------------------------------


class _Grammar:
    def __init__(self, tokens: list[Token], script: str):
        self.tokens = tokens
        self.pos = 0
        self.script = script
        self.nodes = 0

    def peek(self) -> Token:
        return self.tokens[self.pos]

    def next(self) -> Token:
        t = self.tokens[self.pos]
        if t.kind != EOF:
            self.pos += 1
        return t

    def fail(self, token: Token, message: str) -> SieveSyntaxError:
        return SieveSyntaxError(message, token.line, token.column, self.script)

    def is_special(self, token: Token, char: str) -> bool:
        return token.kind == SPECIAL and token.value == char

    def commands(self, depth: int, closing: bool) -> list[Node]:
        out: list[Node] = []
        while True:
            t = self.peek()
            if t.kind == EOF:
                if closing:
                    raise self.fail(t, "missing '}' at the end of a block")
                return out
            if closing and self.is_special(t, "}"):
                self.next()
                return out
            out.append(self.command(depth))

    def command(self, depth: int) -> Node:
        t = self.next()
        if t.kind != IDENTIFIER:
            raise self.fail(t, f"expected a command name, found {t.describe()}")
        node = self.new_node(t)
        self.arguments(node, depth)
        end = self.next()
        if self.is_special(end, ";"):
            return node
        if self.is_special(end, "{"):
            if depth >= MAX_NESTING:
                raise self.fail(end, "blocks nested too deeply")
            node.block = self.commands(depth + 1, closing=True)
            return node
        raise self.fail(end, f"expected ';' or '{{' after the command {node.name}, found {end.describe()}")

    def new_node(self, t: Token) -> Node:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(t, "script too long")
        return Node(str(t.value), t.line, t.column)

    def arguments(self, node: Node, depth: int) -> None:
        while True:
            t = self.peek()
            if t.kind == TAG:
                self.next()
                node.args.append(TagArg(str(t.value), t.line, t.column))
            elif t.kind == NUMBER:
                self.next()
                node.args.append(NumberArg(int(t.value), t.line, t.column))  # type: ignore[arg-type]
            elif t.kind == STRING:
                self.next()
                node.args.append(StringArg([str(t.value)], False, t.line, t.column))
            elif self.is_special(t, "["):
                node.args.append(self.string_list())
            else:
                break
        t = self.peek()
        if t.kind == IDENTIFIER:
            node.tests.append(self.test(depth + 1))
        elif self.is_special(t, "("):
            node.tests.extend(self.test_list(depth + 1))

    def string_list(self) -> StringArg:
        start = self.next()
        values: list[str] = []
        while True:
            t = self.next()
            if t.kind != STRING:
                raise self.fail(t, f"expected a string in the list, found {t.describe()}")
            values.append(str(t.value))
            if len(values) > MAX_LIST:
                raise self.fail(t, "string list too long")
            sep = self.next()
            if self.is_special(sep, "]"):
                return StringArg(values, True, start.line, start.column)
            if not self.is_special(sep, ","):
                raise self.fail(sep, f"expected ',' or ']' in a string list, found {sep.describe()}")

    def test(self, depth: int) -> Node:
        if depth >= MAX_NESTING:
            raise self.fail(self.peek(), "tests nested too deeply")
        t = self.next()
        if t.kind != IDENTIFIER:
            raise self.fail(t, f"expected a test, found {t.describe()}")
        node = self.new_node(t)
        self.arguments(node, depth)
        return node

    def test_list(self, depth: int) -> list[Node]:
        self.next()
        tests = []
        while True:
            tests.append(self.test(depth))
            sep = self.next()
            if self.is_special(sep, ")"):
                return tests
            if not self.is_special(sep, ","):
                raise self.fail(sep, f"expected ',' or ')' in a test list, found {sep.describe()}")


# -- the check ----------------------------------------------------------------------------


class Checker:
    """Checks a tree against the registry; collects the script's required capabilities."""

    def __init__(self, script: str, registry: Registry = REGISTRY):
        self.script = script
        self.registry = registry
        self.requires: set[str] = set()

    def fail(self, at: Node | StringArg | NumberArg | TagArg, message: str) -> SieveSyntaxError:
        return SieveSyntaxError(message, at.line, at.column, self.script)

    def has(self, capability: str) -> bool:
        return capability in self.requires

    def commands(self, nodes: list[Node], top: bool) -> list[Node]:
        out: list[Node] = []
        seen_other = False
        i = 0
        while i < len(nodes):
            node = nodes[i]
            if node.name == "require":
                if not top or seen_other:
                    raise self.fail(node, "require must come before any other command")
                self.require(node)
                i += 1
                continue
            seen_other = True
            if node.name in ("elsif", "else"):
                raise self.fail(node, f"{node.name} without a preceding if")
            if node.name == "if":
                chain = Node("if", node.line, node.column)
                chain.spec = self.registry.commands["if"]
                chain.branches.append((self.condition(node), self.block(node)))
                i += 1
                while i < len(nodes) and nodes[i].name in ("elsif", "else"):
                    branch = nodes[i]
                    if branch.name == "elsif":
                        chain.branches.append((self.condition(branch), self.block(branch)))
                        i += 1
                        continue
                    if branch.args or branch.tests:
                        raise self.fail(branch, "else takes no arguments")
                    chain.branches.append((None, self.block(branch)))
                    i += 1
                    break
                out.append(chain)
                continue
            self.node(node, "command")
            out.append(node)
            i += 1
        return out

    def condition(self, node: Node) -> Node:
        if node.args:
            raise self.fail(node.args[0], f"{node.name} takes a test, not arguments")
        if len(node.tests) != 1:
            raise self.fail(node, f"{node.name} needs exactly one test")
        test = node.tests[0]
        self.node(test, "test")
        return test

    def block(self, node: Node) -> list[Node]:
        if node.block is None:
            raise self.fail(node, f"{node.name} needs a block {{ ... }}")
        return self.commands(node.block, top=False)

    def require(self, node: Node) -> None:
        if node.tests or node.block is not None or len(node.args) != 1 or not isinstance(node.args[0], StringArg):
            raise self.fail(node, "require takes one string or string list")
        for name in node.args[0].values:
            if name not in self.registry.capabilities:
                raise self.fail(node.args[0], f"unknown extension {name!r}")
            self.requires.add(name)
            self.requires.update(self.registry.implies.get(name, ()))

    def node(self, node: Node, kind: str) -> None:
        table = self.registry.commands if kind == "command" else self.registry.tests
        spec = table.get(node.name)
        if spec is None:
            other = self.registry.tests if kind == "command" else self.registry.commands
            if node.name in other:
                raise self.fail(node, f"{node.name} is a {'test' if kind == 'command' else 'command'}, not a {kind}")
            raise self.fail(node, f"unknown {kind} {node.name!r}")
        if spec.extension and spec.extension not in self.requires:
            raise self.fail(node, f"{node.name} needs require \"{spec.extension}\"")
        node.spec = spec
        self.arguments(node, spec)
        if spec.tests == "none" and node.tests:
            raise self.fail(node.tests[0], f"{node.name} takes no test")
        if spec.tests == "one" and len(node.tests) != 1:
            raise self.fail(node, f"{node.name} needs exactly one test")
        if spec.tests == "list" and not node.tests:
            raise self.fail(node, f"{node.name} needs a list of tests")
        for t in node.tests:
            self.node(t, "test")
        if kind == "command":
            if spec.block and node.block is None:
                raise self.fail(node, f"{node.name} needs a block")
            if not spec.block and node.block is not None:
                raise self.fail(node, f"{node.name} takes no block; end it with ';'")
        if spec.check:
            spec.check(node, self)

    def arguments(self, node: Node, spec: Spec) -> None:
        tags = self.registry.tags_for(spec)
        args = list(node.args)
        i = 0
        while i < len(args) and isinstance(args[i], TagArg):
            arg = args[i]
            tag = tags.get(arg.name)
            if tag is None:
                raise self.fail(arg, f"{node.name} has no tag :{arg.name}")
            if tag.extension and tag.extension not in self.requires:
                raise self.fail(arg, f":{arg.name} needs require \"{tag.extension}\"")
            if arg.name in node.tags:
                raise self.fail(arg, f":{arg.name} given twice")
            if tag.group:
                if tag.group in node.groups:
                    raise self.fail(arg, f":{arg.name} cannot be combined with :{node.groups[tag.group]}")
                node.groups[tag.group] = arg.name
            i += 1
            if tag.value is None:
                node.tags[arg.name] = True
                continue
            if i >= len(args):
                raise self.fail(arg, f":{arg.name} needs a {tag.value} argument")
            node.tags[arg.name] = self.value(args[i], tag.value, f":{arg.name}")
            i += 1
        rest = args[i:]
        for extra in rest:
            if isinstance(extra, TagArg):
                raise self.fail(extra, f"the tag :{extra.name} must come before the other arguments of {node.name}")
        shape = spec.positional
        for variant in spec.variants:
            if len(variant) == len(rest):
                shape = variant
        if len(rest) != len(shape):
            at = rest[len(shape)] if len(rest) > len(shape) else node
            want = " or ".join(str(len(v)) for v in spec.variants) if spec.variants else str(len(shape))
            raise self.fail(at, f"{node.name} takes {want} argument{'s' if want != '1' else ''} besides tags, found {len(rest)}")
        node.positional = [self.value(a, kind, node.name) for a, kind in zip(rest, shape)]

    def value(self, arg: Any, kind: str, what: str) -> Any:
        if kind == "number":
            if not isinstance(arg, NumberArg):
                raise self.fail(arg, f"{what} needs a number")
            return arg.value
        if not isinstance(arg, StringArg):
            raise self.fail(arg, f"{what} needs a {'string list' if kind == 'stringlist' else 'string'}")
        if kind == "string" and arg.is_list:
            raise self.fail(arg, f"{what} needs a single string, not a list")
        values = [self.decode(s, arg) for s in arg.values]
        return values[0] if kind == "string" else values

    def decode(self, s: str, arg: StringArg) -> str:
        if "encoded-character" in self.requires and "${" in s:
            from .ext_encoded import decode_encoded_characters
            try:
                return decode_encoded_characters(s)
            except ValueError as e:
                raise self.fail(arg, str(e)) from None
        return s


def parse(text: str, name: str = "", registry: Registry = REGISTRY) -> Script:
    """Parse and check a script. Raises SieveSyntaxError with line and column."""
    if len(text) > MAX_SCRIPT_SIZE:
        raise SieveSyntaxError("script too large", 1, 1, name)
    tokens = tokenize(text, name)
    tree = _Grammar(tokens, name).commands(0, closing=False)
    checker = Checker(name, registry)
    commands = checker.commands(tree, top=True)
    return Script(name, commands, frozenset(checker.requires))


def parse_bytes(data: bytes, name: str = "") -> Script:
    """Like parse, for a script read from a file (UTF-8, RFC 5228 section 2.2)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise SieveSyntaxError("the script is not valid UTF-8", line, col, name) from None
    if text.startswith("\ufeff"):
        text = text[1:]
    return parse(text, name)
