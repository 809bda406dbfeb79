"""The sample files in etc/postroom/ show every setting of their schema with a comment,
and load through the real loader, commented-out settings included.

A setting is written either active (`key: value`) or commented out: `# ` in front
of it, so that removing those two characters makes it active at its indentation. A
commented-out setting on one line that has a default shows that default (one without
a default, or a list or mapping written out over several lines, shows an example),
and every commented-out setting must load. A setting has a comment when a comment line stands above it (above the run
of settings it belongs to) or after its value on the same line. A schema field with no
such line in the sample fails here, so a new setting cannot ship without one."""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from common.config import DAEMONS
from common.config.core import PostroomConfig
from common.config.loader import load_file, parse_text
from tests.support import ROOT

SAMPLES = {"postroom": ("postroom.yaml", PostroomConfig),
           **{name: (filename, schema) for name, (filename, schema) in DAEMONS.items()}}

# indent, "- " if a list item starts here, the key, the rest of the line
_SETTING = re.compile(r"^(?P<indent>\s*)(?P<dash>-\s+)?"
                      r"(?P<key>\"[^\"]*\"|'[^']*'|[\w.*\\-]+):(?:\s+(?P<rest>.*))?$")
_COMMENTED = re.compile(r"^(\s*)# ?(.*)$")


@dataclass
class Setting:
    lineno: int        # 1-based
    indent: int        # column of the key, or of the "#" when commented out
    path: str          # dotted schema path; "*" for a mapping's own keys, "[]" for list items
    commented_out: bool
    commented: bool    # has a comment of its own (trailing) or above its run
    block: bool        # its value is on the lines below (a list or mapping written out)


def _is_mapping(tp) -> bool:
    origin = typing.get_origin(tp)
    return origin in (dict, Mapping, typing.Mapping) or (
        isinstance(origin, type) and issubclass(origin, Mapping))


def _unwrap(tp):
    """X | None -> X."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return tp


def _field_type(container, key: str):
    """The type of key inside container (a schema, a mapping type or a tuple type), or None."""
    container = _unwrap(container)
    if dataclasses.is_dataclass(container):
        hints = typing.get_type_hints(container)
        names = {f.name for f in dataclasses.fields(container) if f.init}
        return _unwrap(hints[key]) if key in names else None
    if _is_mapping(container):
        return _unwrap(typing.get_args(container)[1])
    return None


def _trailing_comment(rest: str | None) -> bool:
    """Whether a value is followed by a comment: a # after whitespace, outside quotes."""
    if not rest:
        return False
    quote = None
    for i, ch in enumerate(rest):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or rest[i - 1] in " \t"):
            return True
    return False


def active_form(line: str) -> str | None:
    """A comment line as the setting it would be with its "# " removed; None otherwise."""
    m = _COMMENTED.match(line)
    return m.group(1) + m.group(2) if m else None


def scan(text: str, schema) -> list[Setting]:
    """Every line of text that sets (or shows commented out) a schema field."""
    lines = text.splitlines()
    found: list[Setting] = []
    stack: list[tuple[int, object, str]] = [(-1, schema, "")]  # (indent, type inside, path)
    recognised: dict[int, Setting] = {}
    for i, line in enumerate(lines):
        hashed = line.lstrip().startswith("#")
        m = _SETTING.match(active_form(line) if hashed else line)
        if not m:
            continue
        indent = len(m.group("indent"))
        key = m.group("key").strip("\"'")
        probe = list(stack)
        if m.group("dash"):
            # A list item: a level of its own under the list, then its first key.
            while probe[-1][0] >= indent:
                probe.pop()
            list_type, list_path = probe[-1][1], probe[-1][2]
            if typing.get_origin(list_type) is not tuple:
                continue
            probe.append((indent, typing.get_args(list_type)[0], list_path + "[]"))
            indent = m.start("key")
        while probe[-1][0] >= indent:
            probe.pop()
        parent_type, parent_path = probe[-1][1], probe[-1][2]
        tp = _field_type(parent_type, key)
        if tp is None:
            if hashed:
                continue  # prose that happens to contain a colon
            raise AssertionError(f"line {i + 1}: {key!r} is not a setting here")  # the loader says so too
        name = "*" if _is_mapping(_unwrap(parent_type)) else key
        path = f"{parent_path}.{name}" if parent_path else name
        stack = probe + [(indent, tp, path)]
        rest = m.group("rest")
        setting = Setting(i + 1, indent, path, hashed, _trailing_comment(rest),
                          block=not rest or rest.lstrip().startswith("#"))
        recognised[i] = setting
        found.append(setting)
    # A comment above a run of settings at one indentation counts for each of them.
    for i, setting in recognised.items():
        if setting.commented:
            continue
        j = i - 1
        while j >= 0 and j in recognised and recognised[j].indent == setting.indent:
            j -= 1
        if j >= 0 and j not in recognised and lines[j].lstrip().startswith("#") \
                and len(lines[j]) - len(lines[j].lstrip()) <= setting.indent:
            setting.commented = True
    return found


def schema_paths(schema, prefix: str = "") -> list[str]:
    """Every setting of schema as a dotted path ("listeners.*.tls", "queue.dkim[].key")."""
    out = []
    hints = typing.get_type_hints(schema)
    for f in dataclasses.fields(schema):
        if not f.init:
            continue
        path = prefix + f.name
        out.append(path)
        tp = _unwrap(hints[f.name])
        if dataclasses.is_dataclass(tp):
            out.extend(schema_paths(tp, path + "."))
        elif _is_mapping(tp) and dataclasses.is_dataclass(typing.get_args(tp)[1]):
            out.extend(schema_paths(typing.get_args(tp)[1], path + ".*."))
        elif typing.get_origin(tp) is tuple and dataclasses.is_dataclass(typing.get_args(tp)[0]):
            out.extend(schema_paths(typing.get_args(tp)[0], path + "[]."))
    return out


def sections(schema, prefix: str = "") -> set[str]:
    """The paths of nested schemas (limits:, queue.timeouts:): headings, not settings."""
    return {p for p in schema_paths(schema) if dataclasses.is_dataclass(_type_at(schema, p))}


def _type_at(schema, path: str):
    tp = schema
    for part in path.replace("[]", ".[]").split("."):
        if part == "[]":
            tp = typing.get_args(tp)[0]
        else:
            tp = _field_type(tp, part)
    return tp


def uncommented(text: str, settings: list[Setting]) -> str:
    """text with every commented-out setting made active (its "# " removed)."""
    lines = text.splitlines()
    for s in settings:
        if s.commented_out:
            lines[s.lineno - 1] = active_form(lines[s.lineno - 1])
    return "\n".join(lines) + "\n"


def _value(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_sample_shows_every_setting_with_a_comment_and_loads(name):
    filename, schema = SAMPLES[name]
    sample = ROOT / "etc" / "postroom" / filename
    text = sample.read_text()
    active = load_file(sample, schema)  # as shipped
    settings = scan(text, schema)

    shown = {s.path for s in settings}
    missing = [p for p in schema_paths(schema) if p not in shown]
    assert not missing, f"{filename} does not show: {', '.join(missing)}"
    with_comment = {s.path for s in settings if s.commented}
    bare = [p for p in schema_paths(schema) if p not in with_comment and p not in sections(schema)]
    assert not bare, f"{filename}: no comment for: {', '.join(bare)}"

    # Every commented-out setting is valid where it stands; one that has a default shows it.
    full = parse_text(uncommented(text, settings), schema, sample)
    defaults = schema()
    for s in settings:
        if not s.commented_out or s.block or "*" in s.path or "[]" in s.path:
            continue  # a written-out list or mapping, or a part of one, is an example
        default = _value(defaults, s.path)
        if default is None:
            continue  # no default: the line shows an example
        shown_value = _value(full, s.path)
        if isinstance(default, Mapping):
            shown_value, default = dict(shown_value), dict(default)
        assert shown_value == default, (
            f"{filename}:{s.lineno}: {s.path} is shown commented out as {shown_value!r}, "
            f"but its default is {default!r}")
    assert active is not None and full is not None


def test_scan_finds_commented_settings_and_refuses_prose_keys():
    from common.config.mta import MtaConfig

    text = ("# The queue.\nqueue:\n  # retry_first: 5m   # first retry\n  # name: target (prose)\n"
            "  retry_max: 4h\n  max_active: 10\n\n  dkim:\n    - domain: example.org   # signed domain\n"
            "      selector: s1\n")
    found = {s.path: s for s in scan(text, MtaConfig)}
    assert set(found) == {"queue", "queue.retry_first", "queue.retry_max", "queue.max_active", "queue.dkim",
                          "queue.dkim[].domain", "queue.dkim[].selector"}
    assert found["queue.retry_first"].commented_out and found["queue.retry_first"].commented
    assert found["queue.max_active"].commented  # the comment above its run
    assert found["queue"].commented and not found["queue.dkim"].commented  # a blank line ends a run
    assert not found["queue.dkim[].selector"].commented  # a comment on the line before is not its own
    assert uncommented(text, list(found.values())).splitlines()[2] == "  retry_first: 5m   # first retry"
    with pytest.raises(AssertionError, match="not a setting here"):
        scan("queue:\n  retry_frist: 5m\n", MtaConfig)
