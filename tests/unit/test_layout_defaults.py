"""The built-in layout used when the server has none for a client."""

from __future__ import annotations

import pytest

from agent.storage.defaults import default_layout
from agent.storage.geometry import plan_partitions
from agent.storage.mapping import map_disks
from agent.storage.model import Flag, InstallType, LabelType
from agent.storage.sixml import parse_layout, to_xml
from agent.storage.units import GiB, MiB, Unit
from agent.storage.validate import validate
from sysclone.errors import ConfigError


def summary(lay):
    (d,) = lay.disks
    return [(p.number, str(p.size), tuple(f.value for f in p.flags), p.name)
            for p in d.partitions]


def test_gpt_bios():
    lay = default_layout()
    (sda,) = lay.disks
    assert (sda.dev, sda.label, sda.unit) == ("/dev/sda", LabelType.GPT, Unit.MIB)
    assert summary(lay) == [(1, "1", ("bios_grub",), "BIOS boot"), (2, "*", (), "root"),
                            (3, "2048", ("swap",), "swap")]
    assert lay.bootloader.install_type is InstallType.LEGACY
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda"]
    assert [(e.real_dev, e.mountpoint, e.fs) for e in lay.fstab()] == [
        ("/dev/sda2", "/", "ext4"), ("/dev/sda3", "swap", "swap")]
    assert mib(plan_partitions(sda, 8 * GiB)) == [(1, 1), (2, 6141), (3, 2048)]


def test_gpt_uefi():
    lay = default_layout(firmware="uefi", root_fs="xfs", swap_mib=1024)
    assert summary(lay) == [(1, "512", ("esp",), "EFI System"), (2, "*", (), "root"),
                            (3, "1024", ("swap",), "swap")]
    assert lay.bootloader.install_type is InstallType.EFI
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/sda1"]
    esp = lay.mount("/boot/efi")
    assert (esp.real_dev, esp.fs, esp.formats) == ("/dev/sda1", "vfat", True)
    assert lay.mount("/").fs == "xfs"


def test_msdos_bios_has_a_boot_flag():
    lay = default_layout(label="msdos")
    assert lay.disks[0].label is LabelType.MSDOS
    assert summary(lay) == [(1, "*", ("boot",), None), (2, "2048", ("swap",), None)]
    assert lay.mount("/").real_dev == "/dev/sda1"


def test_msdos_uefi():
    lay = default_layout(firmware="uefi", label="msdos", swap_mib=0)
    assert summary(lay) == [(1, "512", ("esp",), None), (2, "*", (), None)]
    assert lay.mount("swap") is None


def test_nvme_disk_names():
    lay = default_layout(disk="/dev/nvme0n1", firmware="uefi")
    assert lay.mount("/").real_dev == "/dev/nvme0n1p2"
    assert [t.dev for t in lay.bootloader.targets] == ["/dev/nvme0n1p1"]


@pytest.mark.parametrize("firmware", ["bios", "uefi"])
@pytest.mark.parametrize("label", ["gpt", "msdos"])
def test_round_trip_and_valid(firmware, label):
    lay = default_layout(firmware=firmware, label=label)
    text = to_xml(lay)
    again = parse_layout(text, "default.xml")
    assert again == lay
    validate(again)
    moved = map_disks(again, ["/dev/vda"])
    validate(moved)
    assert moved.disks[0].partition(1).has(Flag.ESP) == (firmware == "uefi")


def test_written_file_is_systemimager_shaped():
    text = to_xml(default_layout())
    assert text.startswith("<!--")
    assert '<disk dev="/dev/sda" label_type="gpt" unit_of_measurement="MiB">' in text
    assert '<part num="1" size="1" p_type="primary" p_name="BIOS boot" flags="bios_grub" />' \
        in text
    assert '<bootloader flavor="grub2" install_type="legacy">' in text
    assert '<fsinfo line="10" real_dev="/dev/sda2" mp="/" fs="ext4" options="defaults" ' \
           'dump="0" pass="1" />' in text


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"firmware": "coreboot"}, "firmware 'coreboot' is not bios or uefi"),
    ({"label": "sun"}, "partition table 'sun' is not gpt or msdos"),
    ({"root_fs": "vfat"}, "root filesystem 'vfat' is not one of"),
    ({"swap_mib": -1}, "swap size -1 MiB is negative"),
    ({"disk": "/dev/sda1x/"}, "<built-in default layout>"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        default_layout(**kwargs)


def mib(plan):
    return [(p.number, p.size // MiB) for p in plan]
