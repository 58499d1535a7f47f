"""bench.storage's pure parts: what it reads from the agent's events and
the script's console, and that its script builds what the agent's layout
asks for (else the ratio would compare different work)."""

from __future__ import annotations

import pytest

from agent.disks import Disk, NoProbe
from agent.plan import make_plan
from bench import storage


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
