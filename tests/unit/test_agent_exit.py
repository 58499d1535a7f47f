"""The agent leaves the boot environment without the interpreter's teardown
(agent.main.exit_now): a small client that swapped during the install spun
in reclaim bringing every object back in just to free it."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pytest

from agent import main as agent_main

INIT = Path(agent_main.__file__).resolve().parents[1] / "bootenv/init.sh"


class Exited(Exception):
    pass


def test_exit_now_flushes_then_skips_teardown(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    seen: list[tuple[int, str]] = []

    def fake_exit(rc: int) -> None:
        seen.append((rc, out.getvalue()))
        raise Exited

    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.setattr("os._exit", fake_exit)
    handler = logging.StreamHandler(out)
    logging.getLogger("test-exit-now").addHandler(handler)
    try:
        print("installed", end="")
        logging.getLogger("test-exit-now").warning(" and logged")
        with pytest.raises(Exited):
            agent_main.exit_now(3)
    finally:
        logging.getLogger("test-exit-now").removeHandler(handler)
    assert seen == [(3, "installed and logged\n")]


def test_the_boot_environment_init_uses_it() -> None:
    text = INIT.read_text()
    assert "exit_now(main())" in text and "sys.exit(main())" not in text
