"""Which disks the install may use: blkinfo's view of lsblk output (captured
and composed samples fed to blkinfo itself), and the target rules."""

from __future__ import annotations

import subprocess
from typing import Any

import pytest

from agent.disks import Disk, DiskError, from_blkinfo, list_disks
from agent.targets import install_targets
from tests.unit.agentfakes import DATA


@pytest.fixture
def lsblk(monkeypatch: pytest.MonkeyPatch) -> Any:
    """blkinfo runs lsblk through subprocess.check_output: answer its two
    commands (by argv) from a sample pair."""

    def use(sample: str) -> None:
        raw = (DATA / f"lsblk-raw-{sample}.txt").read_bytes()
        tree = (DATA / f"lsblk-tree-{sample}.txt").read_bytes()

        def check_output(argv: list[str], **kw: Any) -> bytes:
            if argv[:5] == ["lsblk", "-a", "-n", "-r", "-b"]:
                return raw
            if argv == ["lsblk", "-a", "-n", "-i", "-o", "NAME"]:
                return tree
            raise AssertionError(f"unexpected command {argv}")

        monkeypatch.setattr(subprocess, "check_output", check_output)

    return use


def test_captured_vm_has_no_installable_disk(lsblk: Any) -> None:
    lsblk("vm")
    disks = list_disks()
    assert disks == [
        Disk("vda", 274877906944, model="0x1af4", rotational=True, in_use=True),
        Disk("zram0", 0),
    ]
    with pytest.raises(DiskError) as e:
        install_targets(disks)
    assert e.value.message == "no disk to install on"
    assert e.value.hint == "found vda, zram0; name one with si.disk="


def test_installer_machine(lsblk: Any) -> None:
    lsblk("installer")
    disks = {d.name: d for d in list_disks()}
    assert list(disks) == ["nvme0n1", "nvme1n1", "sda", "sdb", "sdc"]  # no sr0, no loop0
    assert disks["nvme0n1"] == Disk("nvme0n1", 1000204886016, model="Samsung SSD 980 PRO 1TB",
                                    serial="S5GXNF0R123456A", transport="nvme")
    assert disks["sda"].removable and disks["sda"].transport == "usb"
    assert disks["sda"].model == "SanDisk Ultra USB 3.0"  # blkinfo puts the vendor first
    assert disks["sdb"].rotational and disks["sdb"].in_use  # sdb1 is mounted
    assert disks["sdc"].readonly
    assert disks["nvme0n1"].to_dict() == {"name": "nvme0n1", "size": 1000204886016,
                                          "model": "Samsung SSD 980 PRO 1TB",
                                          "serial": "S5GXNF0R123456A", "transport": "nvme"}

    # Old partitions do not matter; the boot stick, the read-only disk and
    # the disk with a mounted filesystem are left out.
    assert [d.name for d in install_targets(list(disks.values())).disks] == ["nvme0n1",
                                                                             "nvme1n1"]


@pytest.mark.parametrize(("wanted", "names"), [
    (["/dev/nvme1n1"], ["nvme1n1"]),
    (["sdb", "nvme0n1"], ["sdb", "nvme0n1"]),  # the order asked for; in use but named
    (["sda"], ["sda"]),  # removable, but named explicitly
])
def test_disks_named_with_si_disk(lsblk: Any, wanted: list[str], names: list[str]) -> None:
    lsblk("installer")
    assert [d.name for d in install_targets(list_disks(), wanted).disks] == names


def test_si_disk_naming_a_missing_disk(lsblk: Any) -> None:
    lsblk("installer")
    with pytest.raises(DiskError) as e:
        install_targets(list_disks(), ["/dev/sdz", "vdb", "nvme0n1"])
    assert e.value.message == "si.disk: no disk named sdz, vdb"
    assert e.value.hint == "found nvme0n1, nvme1n1, sda, sdb, sdc"


def test_si_disk_naming_a_read_only_disk(lsblk: Any) -> None:
    lsblk("installer")
    with pytest.raises(DiskError, match=r"^si\.disk: sdc is read-only$"):
        install_targets(list_disks(), ["sdc"])


def test_no_disks_at_all() -> None:
    with pytest.raises(DiskError) as e:
        install_targets([])
    assert e.value.hint == "found none; name one with si.disk="
    with pytest.raises(DiskError) as e:
        install_targets([], ["sda"])
    assert e.value.hint == "found no disks"


def test_from_blkinfo_entries() -> None:
    part = {"name": "sdb1", "type": "part", "mountpoint": "", "children": [
        {"name": "vg-home", "type": "lvm", "mountpoint": "/home", "children": []}]}
    entries: list[dict[str, Any]] = [
        {"name": "sdb", "type": "disk", "size": "4000787030016", "model": " WDC  WD40EFRX ",
         "serial": "WD-WCC7K1", "tran": "sata", "rota": "1", "rm": "0", "ro": "0",
         "mountpoint": "", "children": [part]},
        {"name": "sr0", "type": "rom", "size": "1073741312"},
        {"name": "sdb1", "type": "part", "size": "4000785957376"},
        {"name": "nvme10n1", "type": "disk", "size": 0},
        {"name": "nvme2n1", "type": "disk", "size": "256060514304", "model": None},
        {"name": "sdaa", "type": "disk", "size": "1"},
    ]
    disks = from_blkinfo(entries)
    assert [d.name for d in disks] == ["nvme2n1", "nvme10n1", "sdaa", "sdb"]  # natural order
    sdb = disks[-1]
    assert sdb == Disk("sdb", 4000787030016, model="WDC  WD40EFRX", serial="WD-WCC7K1",
                       transport="sata", rotational=True, in_use=True)  # LV mounted below
    assert disks[0].model == "" and disks[1].size == 0
    assert Disk("nvme2n1", 1).path == "/dev/nvme2n1"
