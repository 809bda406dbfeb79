"""The sample mda.yaml parses and mentions every setting; the sandbox file parses."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from common.config.core import SandboxContext
from common.config.loader import parse_text
from common.config.mda import MdaConfig, sandbox_yaml
from tests.support import ROOT


def test_sample_parses_and_documents_every_setting():
    path = ROOT / "etc" / "postroom" / "mda.yaml"
    cfg = parse_text(path.read_text(), MdaConfig, path)
    assert cfg.consumer.enabled and cfg.sieve.user_script == "~/.sieve"
    text = path.read_text()
    for f in dataclasses.fields(MdaConfig):
        assert f"\n{f.name}:" in text, f.name
    hints = typing.get_type_hints(MdaConfig)
    for name in ("consumer", "sieve"):
        for f in dataclasses.fields(hints[name]):
            assert f"  {f.name}:" in text, f"{name}.{f.name}"


def test_sandbox_yaml_parses(tmp_path):
    cfg = parse_text(sandbox_yaml(SandboxContext(tmp_path)), MdaConfig, tmp_path / "mda.yaml")
    assert str(cfg.listeners["lmtp"].endpoint) == f"unix:{tmp_path}/run/lmtp.sock:mode=660"
    assert cfg.consumer.enabled


def test_bad_values_are_refused(tmp_path):
    import pytest
    from common.config import ConfigError
    with pytest.raises(ConfigError) as info:
        parse_text("recipient_delimiter: '+-'\n", MdaConfig, Path("mda.yaml"))
    assert "recipient_delimiter" in str(info.value)
    with pytest.raises(ConfigError):
        parse_text("consumer:\n  workers: 0\n", MdaConfig, Path("mda.yaml"))
