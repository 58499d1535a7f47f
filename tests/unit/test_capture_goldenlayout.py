"""imageserver.goldenfacts and goldenlayout: a golden client's disk layout
rebuilt, as SystemImager XML, from the facts its tools printed.

The facts under data/capture are real output of the fact script (lsblk,
findmnt, sfdisk, blkid...) run in a chroot on loop devices, except
facts-raid-lvm.json, written by hand (see data/capture/README.md)."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from agent.storage.model import Flag, InstallType, LabelType, PartType, RaidLevel
from agent.storage.sixml import parse_layout, to_xml
from agent.storage.validate import check
from imageserver import goldenfacts as gf
from imageserver.goldenlayout import golden_layout
from tests.conftest import DATA

CAPTURE = DATA / "capture"


def facts(name: str) -> dict[str, Any]:
    return json.loads((CAPTURE / f"facts-{name}.json").read_text())


@pytest.mark.parametrize("name", ["bios-gpt", "uefi-multi", "msdos-logical", "raid-lvm"])
def test_layouts_are_valid_and_survive_xml(name):
    g = golden_layout(facts(name))
    assert g.usable, (g.warnings, g.problems)
    assert check(g.layout) == []
    assert parse_layout(to_xml(g.layout)) == g.layout


def test_bios_gpt_like_the_demo_vm():
    g = golden_layout(facts("bios-gpt"))
    (disk,) = g.layout.disks
    assert (disk.dev, disk.label) == ("/dev/loop0", LabelType.GPT)
    p1, p2, p3 = disk.partitions
    assert p1.flags == (Flag.BIOS_GRUB,) and p1.size.amount == 1 and p1.name == "BIOS boot"
    assert p2.size.is_rest and p2.flags == ()  # the root partition grows
    assert p3.flags == (Flag.SWAP,) and p3.size.amount == 2048
    root, swap = g.layout.fstab()
    assert (root.real_dev, root.mountpoint, root.fs, root.options, root.passno) == \
        ("/dev/loop0p2", "/", "ext4", "errors=remount-ro", 1)
    assert root.mkfs_opts == "-L root"
    assert (swap.real_dev, swap.fs, swap.mountpoint, swap.options) == \
        ("/dev/loop0p3", "swap", "swap", "sw")
    assert g.layout.bootloader.install_type is InstallType.LEGACY
    assert [t.dev for t in g.layout.bootloader.targets] == ["/dev/loop0"]


def test_exact_geometry_keeps_every_size():
    g = golden_layout(facts("bios-gpt"), exact=True)
    assert [p.size.amount for p in g.layout.disks[0].partitions] == \
        [Decimal(1), Decimal(2045), Decimal(2048)]


def test_uefi_two_disks_separate_boot_and_var():
    g = golden_layout(facts("uefi-multi"))
    a, b = g.layout.disks
    assert a.partitions[0].flags == (Flag.ESP,) and a.partitions[0].size.amount == 512
    assert [p.size.is_rest for p in a.partitions] == [False, False, True, False]  # root grows
    assert b.label is LabelType.MSDOS and b.partitions[0].part_id == "83"
    mounts = {e.mountpoint: e for e in g.layout.fsinfo}
    # Bind mounts, tmpfs and pseudo filesystems are not filesystems to make.
    assert set(mounts) == {"/", "/boot", "/boot/efi", "/var", "/srv"}
    assert mounts["/boot/efi"].fs == "vfat" and mounts["/boot/efi"].mkfs_opts == "-n EFI"
    assert mounts["/var"].options == "defaults,noatime"  # from the client's fstab
    assert mounts["/"].fs == "xfs" and mounts["/srv"].real_dev == "/dev/loop1p1"
    bl = g.layout.bootloader
    assert bl.install_type is InstallType.EFI and [t.dev for t in bl.targets] == ["/dev/loop0p1"]


def test_msdos_extended_and_logical():
    g = golden_layout(facts("msdos-logical"))
    p1, ext, p5, p6 = g.layout.disks[0].partitions
    assert p1.flags == (Flag.BOOT,) and p1.kind is PartType.PRIMARY
    assert ext.kind is PartType.EXTENDED and ext.size.is_rest and ext.flags == ()
    assert p5.kind is PartType.LOGICAL and p5.size.is_rest  # the root grows, inside
    assert p6.flags == (Flag.SWAP,) and p6.size.amount == 511
    # swap that is not switched on is still the client's swap
    assert [e.mountpoint for e in g.layout.fstab()] == ["/", "/boot", "swap"]


def test_raid_and_lvm():
    g = golden_layout(facts("raid-lvm"))
    sda, sdb = g.layout.disks
    assert sdb.partitions == sda.partitions  # the mirror half is partitioned the same
    assert [p.raid_dev for p in sda.partitions] == [None, "/dev/md0", "/dev/md1", None]
    assert sda.partitions[2].flags == (Flag.RAID,) and sda.partitions[2].size.is_rest
    md0, md1 = g.layout.raids
    assert (md0.name, md0.level, md0.raid_devices, md0.metadata) == \
        ("/dev/md0", RaidLevel.RAID1, 2, "1.2")
    assert md1.lvm_group == "vg0"
    (vg,) = g.layout.volume_groups
    assert str(vg.phys_extent_size) == "4096K"
    assert [(lv.name, str(lv.size)) for lv in vg.volumes] == \
        [("root", "8192M"), ("swap", "2048M"), ("home", "*")]  # `*` last, swap fixed
    fs = {e.mountpoint: e.real_dev for e in g.layout.fsinfo}
    assert fs == {"/": "/dev/vg0/root", "/boot": "/dev/md0", "/home": "/dev/vg0/home",
                  "swap": "/dev/vg0/swap"}
    assert [t.dev for t in g.layout.bootloader.targets] == ["/dev/sda", "/dev/sdb"]


def test_lsblk_alone_is_enough():
    """No sfdisk on the client (not in Debian's minbase): lsblk's columns."""
    f = facts("raid-lvm")
    f["sfdisk"] = {"rc": 127, "out": "", "err": "sh: sfdisk: not found"}
    g = golden_layout(f)
    assert g.usable
    assert golden_layout(facts("raid-lvm")).layout.disks[0].partitions[0].part_id == \
        g.layout.disks[0].partitions[0].part_id


def test_mdstat_when_mdadm_is_missing():
    f = facts("raid-lvm")
    f["mdadm"] = {"rc": 127, "out": "", "err": "not found"}
    arrays = gf.md_arrays(f)
    assert arrays["/dev/md1"] == gf.MdArray("/dev/md1", "raid1", ("/dev/sdb3", "/dev/sda3"), 2,
                                            0)
    assert golden_layout(f).usable


def test_what_cannot_be_described_is_a_warning_not_a_layout():
    # The client's root is on a whole-disk filesystem (a chroot on the host's /dev/vda).
    f = facts("bios-gpt")
    fm = json.loads(f["findmnt"]["out"])
    fm["filesystems"][0].update(source="overlay", fstype="overlay", **{"maj:min": "0:99"})
    f["findmnt"]["out"] = json.dumps(fm)
    g = golden_layout(f)
    assert g.layout is None and not g.usable
    assert any("root filesystem" in w for w in g.warnings)


def test_no_lsblk_no_layout():
    g = golden_layout({"findmnt": facts("bios-gpt")["findmnt"]})
    assert g.layout is None


def test_fact_parsers():
    f = facts("raid-lvm")
    assert gf.swaps(f) == ["/dev/dm-1"]
    assert gf.blkid(f)["/dev/mapper/vg0-root"]["LABEL"] == "root"
    assert gf.mdstat_chunks(f) == {}
    lvm = gf.lvm(f)
    assert lvm.pvs == {"/dev/md1": "vg0"} and lvm.vg_extent == {"vg0": 4 << 20}
    tab = {line.file: line for line in gf.fstab(f)}
    assert tab["/boot"].options == "defaults,nodev" and tab["/boot"].passno == 2
    assert gf.firmware(f) == "bios" and gf.firmware(facts("uefi-multi")) == "uefi"
    assert len(gf.part_tables(facts("uefi-multi"))) == 2  # two JSON documents, one per disk
    blk = gf.blkid(facts("bios-gpt"))
    assert blk["/dev/loop0p1"]["PARTLABEL"] == "BIOS boot"  # export escapes unescaped
    assert gf.out({"x": {"rc": 1, "out": "partial"}}, "x") == ""  # failed facts say nothing
