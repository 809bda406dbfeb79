"""postroom-config -- check the configuration, or show it with every default filled in.

    postroom-config check [--config DIR]
        Reads postroom.yaml and every daemon file present (mta.yaml, mda.yaml,
        imapd.yaml, pop3d.yaml), loads the TLS certificate and key (and those an
        ssl: listener names itself), parses the user file, resolves user and group,
        and looks for two listeners on one port. Prints every problem on one line
        each (file:line: key: what is wrong) and exits 78, or prints
        "configuration OK" and exits 0.

    postroom-config show [DAEMON] [--config DIR]
        Prints the effective configuration (postroom.yaml, or DAEMON's file) as YAML,
        defaults included, each setting preceded by its description as a comment,
        like `postconf -n` / `doveconf -n` but complete.

SECURITY: reads the configuration only; prints no secret (the key file's content and
password hashes are never shown).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from common.config import DAEMONS, EX_CONFIG, ConfigError, config_dir, to_plain
from common.config.core import Listener, PostroomConfig
from common.config.loader import find_line, load_file


def check(directory: Path) -> list[str]:
    """Every problem in the configuration folder, one line each."""
    problems: list[str] = []
    if not directory.is_dir():
        return [f"{directory}: configuration directory not found"]
    core_file = directory / "postroom.yaml"
    core: PostroomConfig | None = None
    try:
        core = load_file(core_file, PostroomConfig)
    except ConfigError as e:
        problems.append(str(e))

    daemons: dict[str, Any] = {}
    for name, (filename, schema) in DAEMONS.items():
        path = directory / filename
        if not path.exists():
            continue
        try:
            daemons[name] = load_file(path, schema)
        except ConfigError as e:
            problems.append(str(e))

    if core is not None:
        problems.extend(_check_core(core, core_file, daemons))
    problems.extend(_check_ports(directory, daemons))
    return problems


def _listeners(daemon_cfg: Any) -> Mapping[str, Listener]:
    found = getattr(daemon_cfg, "listeners", None)
    return found if isinstance(found, Mapping) else {}


def _check_core(core: PostroomConfig, core_file: Path, daemons: dict[str, Any]) -> list[str]:
    from common.runner import resolve_user

    problems: list[str] = []
    try:
        resolve_user(core, core_file)
    except ConfigError as e:
        problems.append(str(e))

    from common.tls import build_server_context, listener_files

    wants_tls = []  # listeners that use postroom.yaml's certificate
    for name, cfg in daemons.items():
        for key, lst in _listeners(cfg).items():
            own = listener_files(lst, core.tls)
            if own is not None:
                try:
                    build_server_context(own, where=lst.endpoint.origin)
                except ConfigError as e:
                    problems.append(str(e))
            elif lst.tls != "none":
                wants_tls.append((name, key, lst))
    if core.tls.certificate is not None or core.tls.key is not None or wants_tls:
        try:
            build_server_context(core.tls, core_file)
        except ConfigError as e:
            if wants_tls and core.tls.certificate is None:
                name, key, lst = wants_tls[0]
                problems.append(f"{DAEMONS[name][0]}: listeners.{key}.tls: is {lst.tls} but "
                                f"postroom.yaml has no tls.certificate (set tls: none or add one)")
            else:
                problems.append(str(e))

    users_file = core.auth.users_file
    if users_file.exists() or daemons:  # every daemon looks users up (logins, delivery)
        try:
            from common.users import UserDB

            UserDB(users_file)
        except ConfigError as e:
            problems.append(str(e))
        except ImportError:  # pragma: no cover - only while common.users is being written
            pass
    return problems


def _check_ports(directory: Path, daemons: dict[str, Any]) -> list[str]:
    """Two listeners on the same TCP port and address, or the same unix socket."""
    seen: dict[tuple, str] = {}
    problems = []
    for name, cfg in daemons.items():
        for key, lst in _listeners(cfg).items():
            where = f"{DAEMONS[name][0]}: listeners.{key}"
            ident = _endpoint_identity(str(lst.endpoint))
            if ident is None:
                continue
            if ident in seen:
                path = directory / DAEMONS[name][0]
                line = find_line(path, f"listeners.{key}.endpoint")
                problems.append(f"{path}{f':{line}' if line else ''}: listeners.{key}.endpoint: "
                                f"{lst.endpoint} is also used by {seen[ident]}")
            else:
                seen[ident] = where
    return problems


def _endpoint_identity(endpoint: str) -> tuple | None:
    from twisted.internet.endpoints import _parse

    args, kw = _parse(endpoint)
    kind = args[0].lower()
    if kind in ("tcp", "tcp6", "ssl"):
        port = int(args[1] if len(args) > 1 else kw["port"])
        if port == 0:
            return None
        iface = kw.get("interface", "")
        return ("tcp", port, "" if iface in ("", "0.0.0.0", "::") else iface)
    if kind == "unix":
        return ("unix", args[1] if len(args) > 1 else kw.get("address"))
    if kind == "systemd":
        return ("systemd", kw.get("name") or kw.get("index"))
    return None


# -- show ---------------------------------------------------------------------

def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000, allow_unicode=True).strip()
    return text[:-4].rstrip() if text.endswith("\n...") else text.removesuffix("...").strip()


def render(obj: Any, indent: int = 0) -> list[str]:
    """YAML lines for a schema instance, each field preceded by its doc comment."""
    pad = "  " * indent
    lines: list[str] = []
    for f in dataclasses.fields(obj):
        if not f.init or not f.repr:
            continue
        value = getattr(obj, f.name)
        text = f.metadata.get("doc")
        if text:
            lines.append(f"{pad}# {text}")
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{f.name}:")
            lines.extend(render(value, indent + 1))
        elif isinstance(value, Mapping) and value and all(dataclasses.is_dataclass(v) for v in value.values()):
            lines.append(f"{pad}{f.name}:")
            for key, item in value.items():
                lines.append(f"{pad}  {_scalar(key)}:")
                lines.extend(render(item, indent + 2))
        elif isinstance(value, Mapping) and value:
            lines.append(f"{pad}{f.name}:")
            block = yaml.safe_dump(to_plain(value), default_flow_style=False, sort_keys=False)
            lines.extend(f"{pad}  {line}" for line in block.splitlines())
        else:
            plain = to_plain(value)
            if isinstance(plain, list) and plain and any(isinstance(v, dict) for v in plain):
                lines.append(f"{pad}{f.name}:")
                block = yaml.safe_dump(plain, default_flow_style=False, sort_keys=False)
                lines.extend(f"{pad}  {line}" for line in block.splitlines())
            else:
                lines.append(f"{pad}{f.name}: {_scalar(plain)}")
        if indent == 0 and lines[-1].startswith(" "):
            lines.append("")  # a blank line after each top-level section
    return lines


def show(directory: Path, daemon: str | None) -> str:
    if daemon is None:
        path, schema = directory / "postroom.yaml", PostroomConfig
    else:
        filename, schema = DAEMONS[daemon]
        path = directory / filename
    cfg = load_file(path, schema, required=daemon is None)
    head = [f"# {path} (effective: every default filled in)"]
    return "\n".join(head + render(cfg)).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="postroom-config", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", metavar="DIR",
                        help="configuration folder (default: $POSTROOM_CONFIG, else /etc/postroom)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate every file; exit 78 on any problem")
    p_check.add_argument("--config", metavar="DIR", dest="sub_config", help=argparse.SUPPRESS)
    p_show = sub.add_parser("show", help="print the effective configuration with defaults")
    p_show.add_argument("daemon", nargs="?", choices=sorted(DAEMONS), help="a daemon's file instead of postroom.yaml")
    p_show.add_argument("--config", metavar="DIR", dest="sub_config", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    directory = config_dir(args.sub_config or args.config)

    if args.command == "check":
        problems = check(directory)
        for line in problems:
            print(f"postroom-config: {line}", file=sys.stderr)
        if problems:
            return EX_CONFIG
        print("configuration OK")
        return 0
    try:
        sys.stdout.write(show(directory, args.daemon))
    except ConfigError as e:
        print(f"postroom-config: {e}", file=sys.stderr)
        return EX_CONFIG
    return 0


if __name__ == "__main__":
    sys.exit(main())
