"""Layouts written for /dev/sda put onto vda, nvme, mmcblk and loop disks."""

from __future__ import annotations

import pytest

from agent.storage.devices import partition_number, partition_path, rename_device
from agent.storage.geometry import plan_partitions
from agent.storage.mapping import disk_mapping, map_disks
from agent.storage.sixml import load_layout, parse_layout
from agent.storage.units import GiB
from agent.storage.validate import check, validate
from sysclone.errors import ConfigError


@pytest.mark.parametrize(("disk", "part6"), [
    ("/dev/vda", "/dev/vda6"),
    ("/dev/nvme0n1", "/dev/nvme0n1p6"),
    ("/dev/mmcblk0", "/dev/mmcblk0p6"),
    ("/dev/loop3", "/dev/loop3p6"),
    ("/dev/xvdb", "/dev/xvdb6"),
    ("/dev/cciss/c0d0", "/dev/cciss/c0d0p6"),
    ("/dev/disk/by-id/ata-QEMU_HARDDISK_QM1", "/dev/disk/by-id/ata-QEMU_HARDDISK_QM1-part6"),
])
def test_partition_naming(disk, part6):
    assert partition_path(disk, 6) == part6
    assert partition_number(part6, disk) == 6
    assert partition_number(disk, disk) is None


def test_partition_number_is_not_fooled_by_prefixes():
    assert partition_number("/dev/sda10", "/dev/sda") == 10
    assert partition_number("/dev/sdaa1", "/dev/sda") is None
    assert partition_number("/dev/nvme0n10", "/dev/nvme0n1") is None
    assert partition_number("/dev/nvme0n1p0", "/dev/nvme0n1") is None


@pytest.mark.parametrize(("target", "root", "boot"), [
    ("/dev/vda", "/dev/vda6", "/dev/vda1"),
    ("/dev/nvme0n1", "/dev/nvme0n1p6", "/dev/nvme0n1p1"),
    ("/dev/mmcblk0", "/dev/mmcblk0p6", "/dev/mmcblk0p1"),
    ("/dev/loop3", "/dev/loop3p6", "/dev/loop3p1"),
])
def test_simple_onto_other_disks(compat, target, root, boot):
    lay = map_disks(load_layout(compat / "disk-layout-simple.xml"), [target])
    assert lay.disks[0].dev == target
    assert lay.mount("/").real_dev == root
    assert lay.mount("/boot").real_dev == boot
    assert [t.dev for t in lay.bootloader.targets] == [target]
    validate(lay)
    assert [p.device for p in plan_partitions(lay.disks[0], 20 * GiB)][-1] == root


def test_efi_target_partition_is_renamed(compat):
    lay = map_disks(load_layout(compat / "disk-layout-EFI.xml"), ["nvme0n1"])  # bare names too
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/nvme0n1p1"]
    assert lay.mount("/boot/efi").real_dev == "/dev/nvme0n1p1"
    validate(lay)


def test_two_disks_with_raid_and_lvm(compat):
    src = load_layout(compat / "disk-layout-lvm_over_raid.xml")
    lay = map_disks(src, ["/dev/nvme0n1", "/dev/nvme1n1", "/dev/sdc"])  # extra disk unused
    assert [d.dev for d in lay.disks] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    assert lay.raid_members("/dev/md0") == ("/dev/nvme0n1p3", "/dev/nvme1n1p2")
    assert lay.mount("/boot").real_dev == "/dev/nvme0n1p1"
    assert lay.mount("/").real_dev == "/dev/systemvg/rootlv"  # not a disk path: kept
    assert lay.mount("/media/dvd").real_dev == "/dev/dvd"
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/nvme0n1", "/dev/nvme1n1"]
    # Valid but for reiserfs, which sysclone cannot create.
    assert {p.message.split(": ", 2)[-1].split(" on ")[0] for p in check(lay)} == {
        "sysclone cannot create reiserfs"}
    assert lay.source == src.source


def test_swapped_disks_are_not_renamed_twice():
    text = """<config>
      <disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">
        <part num="1" size="*" p_type="primary"/></disk>
      <disk dev="/dev/sdb" label_type="gpt" unit_of_measurement="MiB">
        <part num="1" size="*" p_type="primary"/></disk>
      <raid><raid_disk name="/dev/md0" raid_level="1" devices="/dev/sda1 /dev/sdb1"/></raid>
      <fsinfo real_dev="/dev/md0" mp="/" fs="ext4"/>
      <fsinfo real_dev="/dev/sdc1" mount_dev="/dev/sdb1" mp="/old" fs="xfs" format="no"/>
    </config>"""
    lay = map_disks(parse_layout(text, "swap.xml"), ["/dev/sdb", "/dev/sda"])
    assert [d.dev for d in lay.disks] == ["/dev/sdb", "/dev/sda"]
    assert lay.raids[0].devices == ("/dev/sdb1", "/dev/sda1")
    assert lay.mount("/old").mount_dev == "/dev/sda1"
    assert lay.mount("/old").real_dev == "/dev/sdc1"


def test_same_names_give_the_same_layout(compat):
    lay = load_layout(compat / "disk-layout-simple.xml")
    assert map_disks(lay, ["/dev/sda", "/dev/sdb"]) is lay


def test_too_few_disks(compat):
    lay = load_layout(compat / "disk-layout-lvm_over_raid.xml")
    with pytest.raises(ConfigError) as err:
        map_disks(lay, ["/dev/vda"])
    message = err.value.message
    assert "disk-layout-lvm_over_raid.xml: the layout needs 2 disk(s) (/dev/sda, /dev/sdb)" \
        in message
    assert "but 1 can be used on this machine (/dev/vda)" in message
    with pytest.raises(ConfigError, match=r"but 0 can be used on this machine \(none\)"):
        map_disks(lay, [])


def test_duplicate_targets():
    lay = parse_layout('<config><disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">'
                       '<part num="1" size="*" p_type="primary"/></disk>'
                       '<fsinfo real_dev="/dev/sda1" mp="/" fs="ext4"/></config>')
    with pytest.raises(ConfigError, match="/dev/vda is given twice"):
        disk_mapping(lay, ["/dev/vda", "vda"])


def test_rename_device():
    mapping = {"/dev/sda": "/dev/nvme0n1", "/dev/sdb": "/dev/sda"}
    assert rename_device("/dev/sda10", mapping) == "/dev/nvme0n1p10"
    assert rename_device("/dev/sdb2", mapping) == "/dev/sda2"
    assert rename_device("/dev/sda", mapping) == "/dev/nvme0n1"
    assert rename_device("/dev/sdaa1", mapping) == "/dev/sdaa1"
    assert rename_device("UUID=1234", mapping) == "UUID=1234"
