"""bench/mda_load.py keeps working: its end-to-end scenario (a real postroom-mta and
postroom-mda) delivers every message with both of its SMTP clients, the pipelining
one (as a sending MTA) and smtplib's, at tiny sizes."""

from __future__ import annotations

import importlib.util

import pytest

from tests.support import ROOT


def load_bench():
    spec = importlib.util.spec_from_file_location("mda_load", ROOT / "bench" / "mda_load.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("use_smtplib", [False, True])
def test_end_to_end_scenario_delivers_every_message(use_smtplib):
    bench = load_bench()
    # run_e2e waits (bounded) until all 12 files are in the maildirs and fails on any
    # refused command or missing file
    assert bench.run_e2e(12, users=3, sessions=2, receive_processes=1, use_smtplib=use_smtplib) > 0
