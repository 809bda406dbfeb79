"""mda.sieve.cli -- postroom-sieve: check a Sieve script, or show what it would do.

    postroom-sieve check FILE
    postroom-sieve test FILE MESSAGE [--from SENDER] [--to RECIPIENT]

`check` prints each error as FILE:LINE:COLUMN: message and exits 1 (0 when the
script is fine). `test` runs the script against a message file and prints the
actions it would take, one per line, without delivering or sending anything.
Includes are read from --personal-dir (default: the "sieve" folder next to FILE)
and --global-dir.

SECURITY: reads only the files named; nothing is delivered or sent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import CAPABILITIES, EnvelopeInfo, Environment, Message, SieveSyntaxError, parse_bytes, run


class _FileEnvironment(Environment):
    def __init__(self, personal: Path, global_dir: Path | None):
        self.personal = personal
        self.global_dir = global_dir

    def load_include(self, location: str, name: str):
        folder = self.global_dir if location == "global" else self.personal
        if folder is None:
            return None
        path = folder / f"{name}.sieve"
        if not path.exists():
            return None
        return parse_bytes(path.read_bytes(), str(path))


def _load(path: Path):
    return parse_bytes(path.read_bytes(), str(path))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="postroom-sieve", description="Check Sieve scripts and try them on messages.",
                                epilog="Extensions: " + ", ".join(CAPABILITIES))
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("check", help="report errors with line and column")
    c.add_argument("file", type=Path)
    t = sub.add_parser("test", help="print the actions the script would take for a message")
    t.add_argument("file", type=Path)
    t.add_argument("message", type=Path)
    t.add_argument("--from", dest="sender", default="", help="the envelope sender (default: <>)")
    t.add_argument("--to", dest="recipient", default="user@localhost", help="the envelope recipient")
    t.add_argument("--personal-dir", type=Path, help="folder of :personal includes (default: FILE's folder/sieve)")
    t.add_argument("--global-dir", type=Path, help="folder of :global includes")
    args = p.parse_args(argv)
    try:
        script = _load(args.file)
    except SieveSyntaxError as e:
        print(str(e), file=sys.stderr)
        sys.exit(1)
    except OSError as e:
        print(f"{args.file}: {e.strerror}", file=sys.stderr)
        sys.exit(66)
    if args.command == "check":
        print(f"{args.file}: OK")
        sys.exit(0)
    try:
        raw = args.message.read_bytes()
    except OSError as e:
        print(f"{args.message}: {e.strerror}", file=sys.stderr)
        sys.exit(66)
    env = _FileEnvironment(args.personal_dir or args.file.parent / "sieve", args.global_dir)
    result = run(script, Message(raw), EnvelopeInfo(args.sender, args.recipient), env)
    for line in result.describe():
        print(line)
    for error in result.errors:
        print(f"error: {error}", file=sys.stderr)
    sys.exit(1 if result.errors else 0)


if __name__ == "__main__":
    main()
