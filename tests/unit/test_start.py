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


class Blocked:
    """Stands in for _import_ahead: each run records the switch interval,
    then waits until finish() lets it end."""

    def __init__(self) -> None:
        self.inside: list[float] = []
        self.runs: list[tuple[threading.Thread, threading.Event]] = []

    def __call__(self, flow_imported: threading.Event) -> None:
        release = threading.Event()
        self.runs.append((threading.current_thread(), release))
        self.inside.append(sys.getswitchinterval())
        flow_imported.set()
        release.wait(5)

    def finish(self, i: int) -> None:
        thread, release = self.runs[i]
        release.set()
        thread.join(5)


@pytest.fixture
def blocked(monkeypatch: pytest.MonkeyPatch) -> Blocked:
    """The import threads' work, each held until the test lets it finish."""
    b = Blocked()
    monkeypatch.setattr(start, "_import_ahead", b)
    return b


def test_the_gil_changes_hands_often_while_the_imports_run(blocked: Blocked) -> None:
    # The hardware phase's sysfs reads wait for the GIL after each one; at
    # the default interval an import in progress holds it 5 ms at a time.
    default = sys.getswitchinterval()
    assert start.import_the_rest().wait(5)
    assert blocked.inside == [pytest.approx(start.IMPORTS_SWITCH_INTERVAL)]
    assert blocked.inside[0] < 0.005  # Python's own default
    blocked.finish(0)
    assert sys.getswitchinterval() == default


def test_overlapping_import_threads_leave_the_interval_as_it_was(blocked: Blocked) -> None:
    # Two installs in one process (tests): the first to end keeps it low
    # for the other, the last restores the interval from before both.
    default = sys.getswitchinterval()
    assert start.import_the_rest().wait(5)
    assert start.import_the_rest().wait(5)
    blocked.finish(0)
    assert sys.getswitchinterval() == pytest.approx(start.IMPORTS_SWITCH_INTERVAL)
    blocked.finish(1)
    assert sys.getswitchinterval() == default
    assert blocked.inside == [pytest.approx(start.IMPORTS_SWITCH_INTERVAL)] * 2
