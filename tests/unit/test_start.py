"""The agent's start (agent.start): how the hardware phase's outcome
reaches the flow (what it imports: tests/integration/test_agent_start.py)."""

from __future__ import annotations

import sys
import threading

import pytest

from agent import start
from agent.start import outcome


def test_outcome_returns_the_result_or_raises_the_error_where_asked() -> None:
    assert outcome(lambda: "report")() == "report"  # type: ignore[arg-type,return-value,comparison-overlap]

    def failing() -> str:
        raise KeyError("pci")

    later = outcome(failing)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="pci"):
        later()


def test_the_gil_changes_hands_often_while_the_imports_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The hardware phase's sysfs reads wait for the GIL after each one; at
    # the default interval an import in progress holds it 5 ms at a time.
    release, inside = threading.Event(), []
    earlier = sys.getswitchinterval()  # another test's run may have left it low
    default = 0.005
    sys.setswitchinterval(default)

    def importing(flow_imported: threading.Event) -> None:
        inside.append(sys.getswitchinterval())
        flow_imported.set()
        release.wait(5)

    monkeypatch.setattr(start, "_import_ahead", importing)
    done = start.import_the_rest()
    assert done.wait(5)
    assert inside == [pytest.approx(start.IMPORTS_SWITCH_INTERVAL)] and inside[0] < default
    release.set()
    thread = next(t for t in threading.enumerate() if t.name == "imports")
    thread.join(5)
    try:
        assert sys.getswitchinterval() == pytest.approx(default)
    finally:
        sys.setswitchinterval(earlier)
