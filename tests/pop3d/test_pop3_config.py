"""The sample pop3d.yaml parses and documents every setting; the sandbox file parses;
mistakes in the UIDL format are configuration errors."""

import dataclasses
from pathlib import Path

import pytest

from common.config.core import SandboxContext
from common.config.loader import ConfigError, find_line, load_file
from common.config.pop3d import Pop3dConfig, sandbox_yaml

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "etc" / "postroom" / "pop3d.yaml"


def test_sample_parses_and_documents_every_setting():
    cfg = load_file(SAMPLE, Pop3dConfig)
    assert set(cfg.listeners) == {"pop3", "pop3s"}
    lines = SAMPLE.read_text().splitlines()
    for f in dataclasses.fields(Pop3dConfig):
        line = find_line(SAMPLE, f.name)
        assert line is not None, f"the sample does not show {f.name}"
        assert lines[line - 2].strip().startswith("#"), f"{f.name} has no comment above it"


def test_sandbox_file_parses(tmp_path):
    ctx = SandboxContext(tmp_path, 100)
    path = tmp_path / "pop3d.yaml"
    path.write_text(sandbox_yaml(ctx))
    cfg = load_file(path, Pop3dConfig)
    assert {n: (str(lst.endpoint), lst.tls) for n, lst in cfg.listeners.items()} == {
        "pop3": (f"tcp:{ctx.port('pop3')}:interface=127.0.0.1", "starttls"),
        "pop3s": (f"tcp:{ctx.port('pop3s')}:interface=127.0.0.1", "implicit"),
    }


@pytest.mark.parametrize("text", ['uidl_format: "%q"', 'uidl_format: "static"', "max_line_length: 10",
                                  "max_commands: 0", 'uidl_format: "%08Xu%"'])
def test_bad_settings_are_config_errors(tmp_path, text):
    path = tmp_path / "pop3d.yaml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as exc:
        load_file(path, Pop3dConfig)
    assert "pop3d.yaml" in str(exc.value)
