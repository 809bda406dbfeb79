"""postroom-passwd -- hash a password for the user file, or test one, like `doveadm pw`.

    postroom-passwd [-s SCHEME] [-p PASSWORD] [--user NAME] [-V] [--config DIR]
    postroom-passwd -t HASH [-p PASSWORD]
    postroom-passwd -l

The password comes from -p, else is asked twice on the terminal, else is the first
line of standard input (so `echo pw | postroom-passwd` works in scripts). The
result, "{SCHEME}hash", goes to standard output; with --user it is a whole user
file line. The default scheme is auth.default_scheme from postroom.yaml when a
configuration is found (--config, $POSTROOM_CONFIG or /etc/postroom), else ARGON2ID.

Exit status: 0 done (or -t: the password matches), 1 (-t) it does not match,
64 bad usage, 65 unusable password, 78 configuration error.

SECURITY: the password is never echoed or logged. -p puts it on the command line,
where other local users may see it in the process list; prefer the prompt or
standard input.
"""

from __future__ import annotations

import argparse
import getpass
import sys

from common.config import DEFAULT_DIR, EX_CONFIG, ConfigError, config_dir, load
from common.errors import EX_DATAERR, EX_USAGE
from common.passwords import SCHEMES, UnknownScheme, hash_password, verify_password
from common.users import parse_line

FALLBACK_SCHEME = "ARGON2ID"


class Usage(Exception):
    """A command-line mistake: exit 64."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would exit 2; sysexits says 64
        raise Usage(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="postroom-passwd",
        description="Hash a password for postroom's user file (Dovecot passwd-file format), "
                    "or test a password against a hash, like `doveadm pw`.",
        epilog="The password is read from -p, else asked twice on the terminal, else read as one "
               "line from standard input. Exit status: 0 done or matched, 1 not matched (-t), "
               "64 usage, 65 unusable password, 78 configuration error. See docs/users.md.",
    )
    parser.add_argument("-s", "--scheme", type=str.upper, metavar="SCHEME",
                        help=f"one of {', '.join(SCHEMES)} (default: auth.default_scheme from "
                             f"postroom.yaml, else {FALLBACK_SCHEME})")
    parser.add_argument("-p", "--password", help="the password (visible to other local users in the "
                                                 "process list; prefer the prompt or standard input)")
    parser.add_argument("-t", "--test", metavar="HASH",
                        help="test the password against HASH ({SCHEME}hash or a crypt string): "
                             "exit 0 if it matches, 1 if not")
    parser.add_argument("-V", "--verify", action="store_true",
                        help="verify the new hash before printing it and add \" (verified)\"")
    parser.add_argument("-u", "--user", metavar="NAME",
                        help="print a whole user file line, NAME:{SCHEME}hash")
    parser.add_argument("-l", "--list", action="store_true", help="list the schemes and exit")
    parser.add_argument("--config", metavar="DIR",
                        help="configuration folder (default: $POSTROOM_CONFIG, else /etc/postroom); "
                             "only auth.default_scheme is read, and only if the folder exists")
    return parser


def default_scheme(config_arg: str | None) -> str:
    """auth.default_scheme from the configuration, if there is one. Raises ConfigError."""
    directory = config_dir(config_arg)
    explicit = config_arg is not None or directory != DEFAULT_DIR
    if not explicit and not (directory / "postroom.yaml").exists():
        return FALLBACK_SCHEME
    return load(directory).core.auth.default_scheme


def read_password(given: str | None, twice: bool) -> str:
    """The password from -p, the terminal (asked twice for a new one) or stdin."""
    if given is not None:
        password = given
    elif sys.stdin.isatty():
        password = getpass.getpass("Enter password: " if not twice else "Enter new password: ")
        if twice and getpass.getpass("Retype new password: ") != password:
            raise ValueError("the passwords do not match")
    else:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        password = password[:-1] if password.endswith("\r") else password
    if not password:
        raise ValueError("the password is empty")
    return password


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.list:
            print(" ".join(SCHEMES))
            return 0
        if args.test and (args.scheme or args.user or args.verify):
            raise Usage("-t cannot be combined with -s, -u or -V")
        if args.user:
            try:
                parse_line(f"{args.user}:")
            except ValueError as e:
                raise Usage(f"--user: {e}") from None
    except Usage as e:
        parser.print_usage(sys.stderr)
        print(f"postroom-passwd: {e}", file=sys.stderr)
        return EX_USAGE

    try:
        scheme = args.scheme or (None if args.test else default_scheme(args.config))
    except ConfigError as e:
        print(str(e), file=sys.stderr)
        return EX_CONFIG

    try:
        password = read_password(args.password, twice=not args.test)
    except (ValueError, EOFError, KeyboardInterrupt) as e:
        print(f"postroom-passwd: {e or 'no password given'}", file=sys.stderr)
        return EX_DATAERR

    if args.test:
        if verify_password(args.test, password):
            print(f"{args.test} (verified)")
            return 0
        print("postroom-passwd: the password does not match", file=sys.stderr)
        return 1

    try:
        stored = hash_password(password, scheme)
    except UnknownScheme as e:
        print(f"postroom-passwd: {e}", file=sys.stderr)
        return EX_USAGE
    except ValueError as e:
        print(f"postroom-passwd: {e}", file=sys.stderr)
        return EX_DATAERR
    line = f"{args.user.lower()}:{stored}" if args.user else stored
    if args.verify:
        if not verify_password(stored, password):  # pragma: no cover - a library fault
            print("postroom-passwd: the new hash did not verify", file=sys.stderr)
            return 70
        line += " (verified)"
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
