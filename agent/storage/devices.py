"""How Linux names partitions of a disk, and the reverse.

Layouts name partitions by device path (`real_dev="/dev/sda6"`), and the
same partition is `/dev/nvme0n1p6` on another machine: the kernel inserts a
"p" when the disk name ends with a digit, and udev's by-id/by-path links use
"-partN".  Everything that turns (disk, number) into a path goes through
here so the rule exists once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

# A disk as a layout may name it: /dev/sda, /dev/nvme0n1, /dev/cciss/c0d0,
# /dev/disk/by-id/ata-...; no empty components, no trailing slash.
DISK_PATH = re.compile(r"/dev(/[A-Za-z0-9._+:-]+)+")


def _partition_prefix(disk: str) -> str:
    if "/dev/disk/by-" in disk:
        return f"{disk}-part"
    if disk[-1:].isdigit():  # nvme0n1, mmcblk0, loop3, md0, cciss/c0d0
        return f"{disk}p"
    return disk  # sda, vda, xvda, hda


def partition_path(disk: str, number: int) -> str:
    """/dev/sda + 6 -> /dev/sda6; /dev/nvme0n1 + 6 -> /dev/nvme0n1p6."""
    return f"{_partition_prefix(disk)}{number}"


def partition_number(path: str, disk: str) -> int | None:
    """The partition number if `path` names a partition of `disk`, else None
    (/dev/sda10 is partition 10 of /dev/sda, /dev/sdaa1 is not one of its)."""
    prefix = _partition_prefix(disk)
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix):]
    if not rest.isdigit() or rest.startswith("0") or not rest.isascii():
        return None
    return int(rest)


def split_partition_path(path: str, disks: Iterable[str]) -> tuple[str, int] | None:
    """(disk, number) for the first of `disks` that `path` is a partition of."""
    for disk in disks:
        number = partition_number(path, disk)
        if number is not None:
            return disk, number
    return None


def rename_device(path: str, mapping: Mapping[str, str]) -> str:
    """Rewrite a disk or partition path after disks were renamed by
    `mapping` (old disk -> new disk); other paths are returned unchanged.
    Every path is looked up against the old names only, so a swap
    (sda -> sdb, sdb -> sda) is not applied twice."""
    if path in mapping:
        return mapping[path]
    hit = split_partition_path(path, mapping)
    if hit is None:
        return path
    disk, number = hit
    return partition_path(mapping[disk], number)


def lv_paths(vg: str, lv: str) -> tuple[str, str]:
    """The two names udev gives a logical volume; device-mapper doubles the
    dashes inside each name (vg "data-vg" -> /dev/mapper/data--vg-...)."""
    dm = f"{vg.replace('-', '--')}-{lv.replace('-', '--')}"
    return f"/dev/{vg}/{lv}", f"/dev/mapper/{dm}"
