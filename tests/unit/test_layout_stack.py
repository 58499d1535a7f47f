"""Sizes of what the layout builds on its partitions (md, LUKS, LVM), and
the options a layout may pass to mkfs and lvcreate."""

from __future__ import annotations

import pytest

from agent.storage.mkfsopts import problems, split_label
from agent.storage.model import LogicalVolume, RaidArray, RaidLevel
from agent.storage.stack import copies, md_overhead, md_size
from agent.storage.units import LvmSize

MiB = 1 << 20
GiB = 1 << 30


@pytest.mark.parametrize(("member", "metadata", "overhead"), [
    (20 * GiB, None, 18 * MiB),  # 1.2: headroom halved to 16 MiB, plus 2
    (200 * GiB, "1.2", 130 * MiB),  # the full 128 MiB
    (510 * MiB, None, 3 * MiB),
    (20 * GiB, "1.0", MiB),  # at the end
    (20 * GiB, "0.90", MiB),
])
def test_md_overhead(member: int, metadata: str | None, overhead: int) -> None:
    assert md_overhead(member, metadata) == overhead


@pytest.mark.parametrize(("level", "members", "size"), [
    (RaidLevel.RAID1, [10 * GiB, 12 * GiB], 10 * GiB - 10 * MiB),  # the smaller; 8 MiB headroom
    (RaidLevel.RAID0, [10 * GiB, 10 * GiB], 2 * (10 * GiB - 10 * MiB)),
    (RaidLevel.RAID5, [10 * GiB] * 3, 2 * (10 * GiB - 10 * MiB)),
    (RaidLevel.RAID6, [10 * GiB] * 4, 2 * (10 * GiB - 10 * MiB)),
    (RaidLevel.RAID10, [10 * GiB] * 4, 2 * (10 * GiB - 10 * MiB)),
])
def test_md_size(level: RaidLevel, members: list[int], size: int) -> None:
    assert md_size(RaidArray("/dev/md0", level), members, len(members)) == size


def test_a_degraded_array_counts_its_missing_member() -> None:
    r = RaidArray("/dev/md0", RaidLevel.RAID5, devices=("missing",))
    assert md_size(r, [10 * GiB, 10 * GiB], 3) == 2 * (10 * GiB - 10 * MiB)


@pytest.mark.parametrize(("options", "factor"), [
    (None, 1), ("--type raid1", 2), ("--type=raid1 -m 2", 3), ("-m1", 2),
    ("--type raid5 -i 3", 4 / 3), ("--type raid6", 5 / 3), ("--type striped -i 2", 1),
])
def test_copies(options: str | None, factor: float) -> None:
    assert copies(LogicalVolume("x", LvmSize.parse("1G", allow_rest=False) or
                                LvmSize(None), options)) == pytest.approx(factor)


@pytest.mark.parametrize(("tool", "text"), [
    ("mke2fs", "-b 4096 -O ^has_journal,metadata_csum -E stride=16,stripe_width=32 -m 1"),
    ("mke2fs", "-b4096 -i 65536 -T news -L root"),
    ("mkfs.xfs", "-d su=64k,sw=4 -i size=512 -l size=64m -n ftype=1 -f"),
    ("mkfs.btrfs", "-d single -m dup --csum xxhash -O no-holes -L data"),
    ("mkfs.fat", "-F 32 -s 8 -n EFI"),
    ("mkswap", "-p 4096 -L swap"),
    ("lvcreate", "--type raid1 -m 1 --nosync --addtag web -r auto"),
])
def test_allowed_options(tool: str, text: str) -> None:
    assert problems(tool, text) == []


@pytest.mark.parametrize(("tool", "text", "problem"), [
    ("mke2fs", "-d /etc", "mke2fs -d is not allowed: it copies files from the installer"),
    ("mke2fs", "-J device=/dev/sdb1", "mke2fs -J 'device=/dev/sdb1': values are plain words"),
    ("mke2fs", "-E offset=4096", "mke2fs -E offset: not allowed"),
    ("mke2fs", "-n", "mke2fs -n is not allowed: it makes mke2fs create nothing"),
    ("mke2fs", "/dev/sdb", "'/dev/sdb' is not an option"),
    ("mke2fs", "-b", "mke2fs -b needs a value"),
    ("mke2fs", "-j=1", "mke2fs -j=1 is not allowed"),
    ("mkfs.xfs", "-r rtdev=/dev/sdc", "values are plain words, never paths"),
    ("mkfs.xfs", "-m uuid=1234", "mkfs.xfs -m uuid: not allowed"),
    ("mkfs.xfs", "-p protofile", "mkfs.xfs -p is not allowed"),
    ("mkfs.btrfs", "-d raid1 /dev/sdb", "'/dev/sdb' is not an option"),
    ("mkfs.btrfs", "--rootdir=/", "mkfs.btrfs --rootdir is not allowed"),
    ("mkfs.btrfs", "-b 10G", "mkfs.btrfs -b is not allowed: the size is the partition's"),
    ("mkfs.fat", "-C", "mkfs.fat -C is not allowed: it creates a file"),
    ("mkswap", "-U clear", "mkswap -U is not allowed"),
    ("lvcreate", "--type thin-pool", "lvcreate --type thin-pool: not allowed"),
    ("lvcreate", "-n other", "lvcreate -n is not allowed"),
    ("lvcreate", "--config devices/filter", "lvcreate --config is not allowed"),
    ("mke2fs", "-L 'a b", "No closing quotation"),
])
def test_refused_options(tool: str, text: str, problem: str) -> None:
    got = problems(tool, text)
    assert any(problem in p for p in got), got


def test_the_label_option_is_read_as_the_label() -> None:
    assert split_label("mke2fs", "-L root -m 1") == ("root", ["-m", "1"])
    assert split_label("mkfs.fat", "-F 32 -n EFI") == ("EFI", ["-F", "32"])
    assert split_label("mkfs.btrfs", "--label=data") == ("data", [])
    assert split_label("mkfs.xfs", None) == (None, [])
