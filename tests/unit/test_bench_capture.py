"""bench.capture's 1 % change: what the versions and incremental rows
measure is a change of 1 % of the tree's bytes, not more."""

from __future__ import annotations

import random
from pathlib import Path

from bench import capture as bc


def test_a_one_percent_change_is_one_percent(tmp_path: Path) -> None:
    rnd = random.Random(7)
    sizes = [rnd.choice((100, 3_000, 40_000, 900_000)) for _ in range(400)]
    for i, size in enumerate(sizes):
        (tmp_path / f"f{i}").write_bytes(bytes(size))
    total = sum(sizes)
    for seed in range(5):
        before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
        changed = bc.change_one_percent(tmp_path, seed)
        assert 0.99 * total / 100 <= changed <= total / 100
        rewritten = [p for p in tmp_path.iterdir() if p.read_bytes() != before[p.name]]
        assert sum(p.stat().st_size for p in rewritten) == changed
