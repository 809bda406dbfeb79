"""common.config -- configuration, read once and passed in; never global.

    cfg = load(config_dir(args.config), "mta")
    cfg.core    -> PostroomConfig   (postroom.yaml)
    cfg.daemon  -> MtaConfig        (mta.yaml)

The directory is --config DIR, else $POSTROOM_CONFIG, else /etc/postroom.
Every mistake raises ConfigError; the runner and tools print it as one line and
exit 78 (EX_CONFIG).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .core import PostroomConfig
from .imapd import ImapdConfig
from .loader import EX_CONFIG, ConfigError, Duration, Endpoint, Size, load_file, to_plain
from .mda import MdaConfig
from .mta import MtaConfig
from .pop3d import Pop3dConfig

DEFAULT_DIR = Path("/etc/postroom")

#: daemon name -> (file name, schema)
DAEMONS: dict[str, tuple[str, type]] = {
    "mta": ("mta.yaml", MtaConfig),
    "mda": ("mda.yaml", MdaConfig),
    "imapd": ("imapd.yaml", ImapdConfig),
    "pop3d": ("pop3d.yaml", Pop3dConfig),
}

__all__ = [
    "Config", "ConfigError", "DAEMONS", "Duration", "EX_CONFIG", "Endpoint", "Size",
    "config_dir", "load", "to_plain",
]


@dataclass(frozen=True)
class Config:
    """Everything one daemon or tool needs: the shared file and its own."""

    dir: Path
    core: PostroomConfig
    daemon: Any = None

    def path(self, name: str) -> Path:
        return self.dir / name


def config_dir(arg: str | os.PathLike | None = None) -> Path:
    """--config if given, else $POSTROOM_CONFIG, else /etc/postroom."""
    if arg:
        return Path(arg).absolute()
    env = os.environ.get("POSTROOM_CONFIG")
    return Path(env).absolute() if env else DEFAULT_DIR


def load(directory: Path, daemon: str | None = None) -> Config:
    """Load postroom.yaml and, if named, the daemon's own file. Raises ConfigError."""
    if not directory.is_dir():
        raise ConfigError(directory, None, None, "configuration directory not found")
    core = load_file(directory / "postroom.yaml", PostroomConfig)
    own = None
    if daemon is not None:
        filename, schema = DAEMONS[daemon]
        own = load_file(directory / filename, schema)
    cfg = Config(dir=directory, core=core, daemon=own)
    return cfg
