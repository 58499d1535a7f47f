"""bench.update's no-op statistic, from fake runs (no server, no rsync):
the pairs alternate their order, and the time ratio is the median of the
pairs' ratios, which one lucky baseline run cannot move."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bench import update


def _lab() -> Any:
    return update.UpdateLab(state=None, server=None, app=Path("app"),  # type: ignore[arg-type]
                            updated=Path("u"), plain=Path("p"), files=1000, tree="fake",
                            changed=10)


def test_noop_alternates_the_pairs_and_takes_the_median_of_their_ratios(
        monkeypatch: pytest.MonkeyPatch) -> None:
    order: list[str] = []
    ours = iter([1.0, 1.0, 1.0, 1.0, 1.0])
    # One lucky rsync run (0.5 s): the best-of-each ratio doubles, the
    # median of the pairs does not move.
    theirs = iter([0.95, 0.5, 0.95, 0.95, 0.95])

    def fake_update(lab: Any, version: int, program: Path | None = None
                    ) -> tuple[float, int, dict[str, Any]]:
        if program is None:
            order.append("update")
            return next(ours), 26_000, {}
        return 1.02, 26_000, {}

    def fake_rsync(lab: Any, version: int) -> tuple[float, int]:
        order.append("rsync")
        return next(theirs), 25_000

    monkeypatch.setattr(update, "updateclient", fake_update)
    monkeypatch.setattr(update, "plain_rsync", fake_rsync)
    r = update.noop(_lab(), rounds=5)
    assert order == ["update", "rsync", "rsync", "update", "update", "rsync",
                     "rsync", "update", "update", "rsync"]
    assert r["time_ratio"] == round(1.0 / 0.95, 3)
    assert r["best_ratio"] == 2.0
    assert r["rounds"] == 5 and len(r["pair_ratios"]) == 5
    assert r["update_bytes_per_file"] == 26.0 and r["rsync_bytes_per_file"] == 25.0
