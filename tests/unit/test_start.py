"""The agent's start (agent.start): how the hardware phase's outcome
reaches the flow (what it imports: tests/integration/test_agent_start.py)."""

from __future__ import annotations

import pytest

from agent.start import outcome


def test_outcome_returns_the_result_or_raises_the_error_where_asked() -> None:
    assert outcome(lambda: "report")() == "report"  # type: ignore[arg-type,return-value,comparison-overlap]

    def failing() -> str:
        raise KeyError("pci")

    later = outcome(failing)  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="pci"):
        later()
