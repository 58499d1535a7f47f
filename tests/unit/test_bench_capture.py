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


def test_what_plain_trees_need_at_least(tmp_path: Path) -> None:
    """The floor printed beside the versions rows: the demo image's figures
    on ext4 (409 MB, 5.35 MB of directories and 3.83 MB of new data a
    version) need 1.202 for ten versions."""
    assert round(bc.tree_floor(409_000_000, 10, 5_350_000, 3_830_000), 3) == 1.202
    assert bc.tree_floor(100, 1, 50, 50) == 1.0
    (tmp_path / "a/b").mkdir(parents=True)
    (tmp_path / "a/file").write_bytes(bytes(100_000))
    (tmp_path / "link").symlink_to("a")
    dirs = [tmp_path, tmp_path / "a", tmp_path / "a/b"]
    assert bc.dir_bytes(tmp_path) == sum(d.lstat().st_blocks * 512 for d in dirs)


def test_the_versions_line_shows_the_floor_for_hard_linked_trees() -> None:
    row = {"fs": "ext4", "storage": "hardlink", "measured_by": "sysclone disk_use",
           "versions": 10, "all_bytes": 473 << 20, "one_bytes": 390 << 20,
           "records_bytes_per_version": 80 << 10, "dir_bytes_per_version": 5_350_000,
           "added_bytes_per_version": 3_830_000, "tree_floor": 1.2021}
    line = bc.describe_versions(row)
    assert line.endswith("each version's own directories 5.1 MiB + new data 3.7 MiB: "
                         "plain trees need 1.202 before any record")
    del row["tree_floor"]
    assert bc.describe_versions(row).endswith("records 80 KiB/version")
