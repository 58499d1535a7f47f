"""When the hardware phase's work may start before the agent's imports
(agent.drivers); tests/unit/test_flow.py runs the install with it."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import drivers


@pytest.mark.parametrize(("cmdline", "local_cfg", "early"), [
    ("console=ttyS0 IMAGESERVER=10.0.2.2", False, True),
    ("IMAGESERVER=10.0.2.2 si.break=hardware", False, False),
    ("IMAGESERVER=10.0.2.2 SI_BREAK=network", False, False),
    ("IMAGESERVER=10.0.2.2 si.break=parse-localcfg", False, False),
    ("IMAGESERVER=10.0.2.2", True, False),  # a local.cfg may hold a break
])
def test_drivers_load_early_only_when_nothing_can_stop_before(
        tmp_path: Path, cmdline: str, local_cfg: bool, early: bool) -> None:
    cfg = tmp_path / "local.cfg"
    if local_cfg:
        cfg.write_text("SI_BREAK=hardware\n")
    assert drivers.may_start_early(cmdline, cfg) is early
