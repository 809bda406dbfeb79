"""common.config.loader -- YAML files into typed, frozen objects.

A schema is a frozen dataclass. Each field's type says how its YAML value is read:
str, int, float, bool, Path (relative paths are taken from the configuration
folder), Duration ("30s", "5m", "4h", "5d" or a number of seconds), Size ("10M",
"512K" or a number of bytes), Endpoint (a Twisted server endpoint string), Literal
choices, tuple[X, ...], Mapping[str, X], X | None and nested schemas. A field's
``metadata={"doc": ...}`` is the comment `postroom-config show` prints.

Every mistake becomes a ConfigError naming the file, the line and the dotted key,
so an administrator reads one line and knows what to fix. The loader never
returns a half-read object.

SECURITY: configuration files are trusted input from the administrator, but are
still parsed with yaml's safe loader only.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

EX_CONFIG = 78


class ConfigError(Exception):
    """A configuration mistake, located by file, line and key."""

    def __init__(self, file: str | Path | None, line: int | None, key: str | None, message: str):
        super().__init__(message)
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        where = self.file or "<config>"
        if self.line is not None:
            where += f":{self.line}"
        if self.key:
            return f"{where}: {self.key}: {self.message}"
        return f"{where}: {self.message}"


class Duration(float):
    """A span of time in seconds; written as 30s, 5m, 4h, 2d or a plain number."""

    _UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

    @classmethod
    def parse(cls, value: Any) -> "Duration":
        if isinstance(value, bool):
            raise ValueError("expected a duration such as 30s, 5m, 4h or 5d")
        if isinstance(value, (int, float)):
            if value < 0:
                raise ValueError("a duration cannot be negative")
            return cls(value)
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*", str(value))
        if not m:
            raise ValueError(f"expected a duration such as 30s, 5m, 4h or 5d, not {value!r}")
        return cls(float(m.group(1)) * cls._UNITS[m.group(2) or "s"])


class Size(int):
    """A number of bytes; written as 512, 64K, 10M or 2G (powers of 1024)."""

    _UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}

    @classmethod
    def parse(cls, value: Any) -> "Size":
        if isinstance(value, bool):
            raise ValueError("expected a size such as 512K or 10M")
        if isinstance(value, int):
            if value < 0:
                raise ValueError("a size cannot be negative")
            return cls(value)
        m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", str(value), re.IGNORECASE)
        if not m:
            raise ValueError(f"expected a size such as 512K or 10M, not {value!r}")
        return cls(int(m.group(1)) * cls._UNITS[m.group(2).upper()])


class Endpoint(str):
    """A Twisted server endpoint string: tcp:25:interface=0.0.0.0, tcp6:..., unix:PATH,
    systemd:domain=INET:name=smtp for socket activation, or ssl:465 for implicit TLS.

    postroom listens on an ssl: endpoint itself (as tcp: plus implicit TLS) instead of
    letting Twisted build a context, so that its certificate is reloaded on SIGHUP like
    every other. ssl: takes postroom.yaml's certificate, or its own files with
    privateKey=PATH (and certKey=PATH when the certificate is in another file);
    relative paths are taken from the configuration folder.

    The loader records where the string was written (`origin`: file, line, dotted key),
    so a problem found only when listening still points at the line to fix."""

    KINDS = ("tcp", "tcp6", "ssl", "unix", "systemd")

    #: (file, line, dotted key) of the configuration that gave this endpoint
    origin: tuple[str | None, int | None, str | None] = (None, None, None)
    #: an ssl: endpoint's own certificate chain and key (privateKey=, certKey=)
    certificate: Path | None = None
    key: Path | None = None

    @classmethod
    def parse(cls, value: Any, base_dir: Path | None = None) -> "Endpoint":
        if not isinstance(value, str) or not value:
            raise ValueError("expected an endpoint string such as tcp:25:interface=0.0.0.0")
        from twisted.internet.endpoints import _parse

        try:
            args, kw = _parse(value)
        except Exception:
            raise ValueError(f"bad endpoint string {value!r}") from None
        kind = args[0].lower() if args else ""
        if kind not in cls.KINDS:
            raise ValueError(
                f"bad endpoint string {value!r}: the kind must be one of {', '.join(cls.KINDS)}"
            )
        endpoint = cls(value)
        if kind in ("tcp", "tcp6", "ssl"):
            port = args[1] if len(args) > 1 else kw.get("port")
            if port is None or not str(port).isdigit() or not 0 <= int(port) <= 65535:
                raise ValueError(f"bad endpoint string {value!r}: needs a port from 0 to 65535")
            allowed = {"port", "interface", "backlog"} | ({"privateKey", "certKey"} if kind == "ssl" else set())
            unknown = set(kw) - allowed
            if unknown:
                raise ValueError(f"bad endpoint string {value!r}: unknown option {sorted(unknown)[0]}")
            if "certKey" in kw and "privateKey" not in kw:
                raise ValueError(f"bad endpoint string {value!r}: certKey needs privateKey")
            if "privateKey" in kw:
                endpoint.key = _path(kw["privateKey"], base_dir)
                endpoint.certificate = _path(kw.get("certKey") or kw["privateKey"], base_dir)
        elif kind == "unix":
            if len(args) < 2 and "address" not in kw:
                raise ValueError(f"bad endpoint string {value!r}: needs a socket path")
            unknown = set(kw) - {"address", "mode", "backlog", "lockfile"}
            if unknown:
                raise ValueError(f"bad endpoint string {value!r}: unknown option {sorted(unknown)[0]}")
            if "mode" in kw and not re.fullmatch(r"[0-7]{3,4}", kw["mode"]):
                raise ValueError(f"bad endpoint string {value!r}: mode must be octal, like 660")
        elif kind == "systemd":
            if "domain" not in kw or ("name" in kw) == ("index" in kw):
                raise ValueError(
                    f"bad endpoint string {value!r}: needs domain= and exactly one of name= or index="
                )
        return endpoint

    def _parts(self) -> tuple[list[str], dict[str, str]]:
        from twisted.internet.endpoints import _parse

        args, kw = _parse(str(self))
        return [args[0].lower(), *args[1:]], kw

    @property
    def kind(self) -> str:
        """tcp, tcp6, ssl, unix or systemd."""
        return self._parts()[0][0]

    @property
    def port(self) -> int | None:
        """The TCP port, or None for unix and systemd endpoints."""
        args, kw = self._parts()
        if args[0] in ("tcp", "tcp6", "ssl"):
            return int(args[1] if len(args) > 1 else kw["port"])
        return None

    def listening_string(self) -> str:
        """What to bind: an ssl: endpoint as the tcp: endpoint under its TLS layer
        (the runner adds the TLS); any other endpoint as written."""
        args, kw = self._parts()
        if args[0] != "ssl":
            return str(self)
        out = f"tcp:{self.port}"
        for option in ("interface", "backlog"):
            if option in kw:
                out += f":{option}=" + kw[option].replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")
        return out


def _path(value: str, base_dir: Path | None) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() or base_dir is None else base_dir / p


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is bool:
        return "true or false"
    if tp is int:
        return "a whole number"
    if tp is float:
        return "a number"
    if tp is Path:
        return "a path"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return "a list"
    if origin in (dict, Mapping, typing.Mapping) or tp is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


class _Reader:
    def __init__(self, file: Path, base_dir: Path):
        self.file = file
        self.base_dir = base_dir

    def fail(self, node: yaml.Node | None, key: str, message: str) -> ConfigError:
        line = node.start_mark.line + 1 if node is not None else None
        return ConfigError(self.file, line, key or None, message)

    def read(self, tp: Any, node: yaml.Node | None, key: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            choices = [a for a in args if a is not type(None)]
            if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
                if type(None) in args:
                    return None
                raise self.fail(node, key, "a value is required")
            return self.read(choices[0], node, key)
        if dataclasses.is_dataclass(tp):
            # A section with nothing under it (all its settings commented out) is its defaults.
            return self.read_schema(tp, node, key)
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            raise self.fail(node, key, f"expected {_type_name(tp)}, found nothing")
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                # A lone scalar where a list is expected is read as a list of one.
                if isinstance(node, yaml.ScalarNode) and node.value != "":
                    return (self.read(args[0], node, key),)
                raise self.fail(node, key, "expected a list")
            return tuple(self.read(args[0], item, f"{key}[{i}]") for i, item in enumerate(node.value))
        if origin in (dict, Mapping, typing.Mapping) or (hasattr(origin, "__mro__") and Mapping in getattr(origin, "__mro__", ())):
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, key, "expected a mapping")
            out: dict[str, Any] = {}
            for knode, vnode in node.value:
                name = self.scalar_key(knode, key)
                if name in out:
                    raise self.fail(knode, f"{key}.{name}", "appears twice")
                out[name] = self.read(args[1], vnode, f"{key}.{name}" if key else name)
            return types.MappingProxyType(out)
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, f"expected {_type_name(tp)}")
        value = yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
        try:
            result = self.convert(tp, value, node)
        except ValueError as e:
            raise self.fail(node, key, str(e)) from None
        if isinstance(result, Endpoint):
            result.origin = (str(self.file), node.start_mark.line + 1, key)
        return result

    def convert(self, tp: Any, value: Any, node: yaml.ScalarNode) -> Any:
        if typing.get_origin(tp) is Literal:
            if value not in typing.get_args(tp):
                raise ValueError(f"expected {_type_name(tp)}, not {value!r}")
            return value
        if tp is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, not {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected a whole number, not {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, not {value!r}")
            return float(value)
        if tp is str:
            if isinstance(value, (dict, list)) or value is None:
                raise ValueError("expected a string")
            return node.value
        if tp is Path:
            if not isinstance(value, str) or not value:
                raise ValueError("expected a path")
            p = Path(value).expanduser()
            return p if p.is_absolute() else (self.base_dir / p)
        if tp is Endpoint:
            return Endpoint.parse(value, self.base_dir)
        if isinstance(tp, type) and hasattr(tp, "parse"):
            return tp.parse(value)
        raise ValueError(f"unsupported type {tp!r}")  # pragma: no cover - schema bug

    def scalar_key(self, knode: yaml.Node, parent: str) -> str:
        if not isinstance(knode, yaml.ScalarNode):
            raise self.fail(knode, parent, "keys must be plain words")
        return str(knode.value)

    def read_schema(self, schema: type, node: yaml.Node | None, key: str) -> Any:
        fields = {f.name: f for f in dataclasses.fields(schema) if f.init}
        hints = typing.get_type_hints(schema)
        given: dict[str, Any] = {}
        if node is not None and not (isinstance(node, yaml.ScalarNode) and node.value == ""):
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, key, "expected a mapping")
            for knode, vnode in node.value:
                name = self.scalar_key(knode, key)
                full = f"{key}.{name}" if key else name
                if name not in fields:
                    raise self.fail(knode, full, "unknown key" + _suggest(name, fields))
                if name in given:
                    raise self.fail(knode, full, "appears twice")
                given[name] = self.read(hints[name], vnode, full)
        for name, f in fields.items():
            if name in given:
                continue
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise self.fail(node, f"{key}.{name}" if key else name, "is required")
        try:
            return schema(**given)
        except (ValueError, TypeError) as e:
            raise self.fail(node, key, str(e)) from None


def _suggest(name: str, fields: Mapping[str, Any]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(fields), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_text(text: str, schema: type, file: Path, base_dir: Path | None = None) -> Any:
    """Read one YAML document into an instance of schema."""
    reader = _Reader(file, base_dir or file.parent)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        line = e.problem_mark.line + 1 if e.problem_mark else None
        raise ConfigError(file, line, None, f"not valid YAML: {e.problem}") from None
    except yaml.YAMLError as e:
        raise ConfigError(file, None, None, f"not valid YAML: {e}") from None
    return reader.read_schema(schema, node, "")


def load_file(path: Path, schema: type, required: bool = True, base_dir: Path | None = None) -> Any:
    """Read path into schema. A missing optional file gives the defaults."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise ConfigError(path, None, None, "file not found") from None
        text = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(path, None, None, f"cannot read: {getattr(e, 'strerror', None) or e}") from None
    return parse_text(text, schema, path, base_dir)


def to_plain(obj: Any) -> Any:
    """The object as plain YAML-able data (for postroom-config show)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init and f.repr}
    if isinstance(obj, Mapping):
        return {k: to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, Duration):
        return _fmt_duration(obj)
    if isinstance(obj, (Endpoint,)):
        return str(obj)
    if isinstance(obj, bool) or obj is None:
        return obj
    if isinstance(obj, Size):
        return int(obj)
    if isinstance(obj, (int, float, str)):
        return type(obj).__mro__[-2](obj) if type(obj) not in (int, float, str) else obj
    return str(obj)


def _fmt_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def find_line(path: Path, dotted_key: str) -> int | None:
    """The line where dotted_key ("tls.certificate") is written in a YAML file, or None.

    For errors found after loading (an unreadable certificate), so they can still
    point at the line to fix."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"), Loader=yaml.SafeLoader)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    line = None
    for part in dotted_key.split("."):
        if not isinstance(node, yaml.MappingNode):
            return None
        for knode, vnode in node.value:
            if isinstance(knode, yaml.ScalarNode) and knode.value == part:
                line, node = knode.start_mark.line + 1, vnode
                break
        else:
            return None
    return line
