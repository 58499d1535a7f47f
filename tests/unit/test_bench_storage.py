"""bench.storage's pure parts: what it reads from the agent's events and
the script's console, and that its script builds what the agent's layout
asks for (else the ratio would compare different work); and its row in
`python -m bench` (target, PASS/MISS, JSON), from fake results."""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

import pytest

import bench.__main__ as bench_main
from agent.disks import Disk, NoProbe
from agent.planner import make_plan
from bench import storage
from sysclone.paths import StateRoot


def test_storage_seconds_from_the_done_event() -> None:
    events = [{"kind": "phase", "phase": "plan"},
              {"kind": "done", "timings": {"hardware": 3.0, "plan": 1.5, "partition": 2.0,
                                           "assemble": 4.0, "format": 6.5, "fetch": 60.0}}]
    r = storage.storage_seconds(events)
    assert (r.seconds, r.without_plan) == (14.0, 12.5)
    assert r.timings == {"plan": 1.5, "partition": 2.0, "assemble": 4.0, "format": 6.5}


def test_a_failed_install_is_said() -> None:
    with pytest.raises(RuntimeError, match="did not finish: the image has no mdadm"):
        storage.storage_seconds([{"kind": "failed", "message": "the image has no mdadm"}])
    with pytest.raises(RuntimeError, match="no assemble phase"):
        storage.storage_seconds([{"kind": "done", "timings": {"plan": 1, "partition": 1,
                                                              "format": 1}}])


def test_script_seconds() -> None:
    assert storage.script_seconds(f"{storage.BENCH_DONE} mode=storage seconds=12.34") == 12.34
    with pytest.raises(RuntimeError):
        storage.script_seconds("garbage")


def test_the_script_does_what_the_layout_asks() -> None:
    plan = make_plan(instructions={"image": {"name": "x"}, "layout": {
        "name": "raid1-lvm.toml", "format": "toml", "text": storage.LAYOUT.read_text()}},
        server="s", hostname="bench-storage", targets=[Disk("vda", storage.DISK_BYTES),
                                                       Disk("vdb", storage.DISK_BYTES)],
        fw="bios", ram_bytes=512 << 20, have_tool=lambda t: True, probe=NoProbe())
    script = storage.STORAGE_INIT
    sizes = [p.size >> 20 for p in plan.disks[0].partitions]
    assert sizes[:2] == [1, 512] and "size=1MiB" in script and "size=512MiB" in script
    for a in plan.arrays:
        assert f"--create {a.name} --run --metadata={a.metadata} --level={a.level}" in script
    (g,) = plan.groups
    assert f"vgcreate --config \"$C\" {g.name} /dev/md1" in script
    assert [(lv.name, lv.extents is None) for lv in g.volumes] == [("swap", False),
                                                                   ("root", True)]
    assert "-n swap -L 512M" in script and "-n root -l 100%FREE" in script
    assert [f.fs for f in plan.filesystems if f.creates] == ["ext4", "ext4", "swap"]
    assert script.count("mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0") == 2


# python -m bench's storage row: bench.storage.run replaced by fake results.

def _fake_run(agent: list[float], script: list[float]) -> dict[str, Any]:
    a, s = statistics.median(agent), statistics.median(script)
    timings = {"plan": 1.0, "partition": 2.0, "assemble": 3.0, "format": agent[-1] - 6.0}
    return {"agent": [{"seconds": x, "timings": timings} for x in agent], "script": script,
            "ratio": round(a / s, 3), "ratio_without_plan": round((a - 1.0) / s, 3),
            "agent_s": a, "script_s": s}


@pytest.mark.parametrize(("agent", "script", "ok"), [
    ([22.0], [20.0], True),             # 1.1
    ([24.0], [20.0], True),             # 1.2 exactly: met
    ([25.0], [20.0], False),            # 1.25
    ([30.0, 22.0, 23.0], [20.0, 19.0, 40.0], True),  # medians: 23 / 20
])
def test_the_storage_row(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                         tmp_path: Path, agent: list[float], script: list[float],
                         ok: bool) -> None:
    seen = {}

    def fake(state: StateRoot, image: str | None, runs: int) -> dict[str, Any]:
        seen.update(image=image, runs=runs)
        return _fake_run(agent, script)

    monkeypatch.setattr(storage, "run", fake)
    res = bench_main.Results()
    bench_main.bench_storage(StateRoot.from_options(tmp_path), len(agent), res)
    # bench.storage's own image (mdadm, lvm2), not --image's demo image
    assert seen == {"image": None, "runs": len(agent)}
    ratio = statistics.median(agent) / statistics.median(script)
    row = res.data["results"]["storage"]
    assert row["ratio"] == round(ratio, 3) and row["target"] == "<= 1.2" and row["pass"] is ok
    assert row["script"] == script and len(row["agent"]) == len(agent)
    assert res.verdicts == [(bench_main.TARGETS["storage"].name, ratio, "<= 1.2", ok)]
    first, second = capsys.readouterr().out.splitlines()
    assert first.startswith(f"storage   {ratio:6.2f}  target <= 1.2  {'PASS' if ok else 'MISS'}")
    assert "(plan+partition+assemble+format) vs script" in first
    assert "without the plan phase" in second and "partition 2.0s" in second


def test_the_storage_target_is_the_overhead_rows() -> None:
    t = bench_main.TARGETS["storage"]
    assert (t.limit, t.higher_is_better) == (bench_main.TARGETS["overhead"].limit, False)
    assert t.check(1.2) and not t.check(1.21)


def test_storage_is_a_section_of_the_default_run_and_the_help() -> None:
    assert "storage" in bench_main.SECTIONS and "storage" not in bench_main.NEED_BOOTENV
    doc = bench_main.__doc__ or ""
    assert "\n  storage   " in doc and "storage" in doc.split("[--only ")[1].split("]")[0]


def test_only_storage(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                      tmp_path: Path) -> None:
    """`--only storage` runs that section alone, under the machine header,
    and writes it to the JSON file under `storage`."""
    monkeypatch.setattr(storage, "run", lambda state, image, runs: _fake_run([30.0], [20.0]))

    def boom(*a: object) -> None:
        raise AssertionError("not asked for")

    for other in ("bench_bootenv", "bench_capture", "bench_update"):
        monkeypatch.setattr(bench_main, other, boom)
    monkeypatch.setenv("SYSCLONE_ROOT", str(tmp_path / "state"))
    out = tmp_path / "bench.json"
    monkeypatch.setattr(sys, "argv", ["bench", "--only", "storage", "--json", str(out)])
    assert bench_main.main() == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("sysclone benchmarks on ")
    assert lines[1].startswith("storage     1.50  target <= 1.2  MISS")
    assert lines[-1] == "0 of 1 targets met"
    data = json.loads(out.read_text())
    assert set(data) == {"machine", "results"} and set(data["results"]) == {"storage"}
    assert data["results"]["storage"]["pass"] is False
    assert data["results"]["storage"]["agent_s"] == 30.0


def test_only_rejects_unknown_sections(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "argv", ["bench", "--only", "storage,disks"])
    with pytest.raises(SystemExit):
        bench_main.main()
