"""Layout checks: disks and their partitions (see `validate`)."""

from __future__ import annotations

from agent.storage.checker import Checker
from agent.storage.checker import part_name as _part
from agent.storage.devices import DISK_PATH
from agent.storage.model import Disk, Flag, LabelType, Partition, PartType, is_bios_boot
from agent.storage.selectors import selector_problems
from agent.storage.units import Unit

GPT_MAX_PARTITIONS = 128  # the default (and near-universal) GPT entry array
GPT_NAME_MAX = 36  # UTF-16 code units in a GPT entry


def check(c: Checker) -> None:
    seen: set[str] = set()
    for d in c.layout.disks:
        if d.dev in seen:
            c.add(d.src_line, f'<disk dev="{d.dev}"> is listed twice')
        seen.add(d.dev)
        if not DISK_PATH.fullmatch(d.dev):
            c.add(d.src_line, f'<disk dev="{d.dev}"> is not a local disk',
                  "disks are named by their /dev path, e.g. /dev/sda")
        if d.label is LabelType.CONVERT:
            c.add(d.src_line, f'<disk dev="{d.dev}">: label_type="convert" (msdos to gpt in '
                              "place) is not supported",
                  'use "gpt" to write a new table, or "none" to keep the existing one')
        if d.select is not None:
            for message, hint in selector_problems(d.select):
                c.add(d.src_line, f'<disk dev="{d.dev}"> select: {message}', hint)
        numbers: set[int] = set()
        for p in d.partitions:
            if p.number in numbers:
                c.add(p.src_line, f"{_part(d, p)}: partition number {p.number} is used twice")
            numbers.add(p.number)
            partition(c, d, p)
        if d.label is LabelType.MSDOS:
            msdos(c, d)
        elif d.label is LabelType.GPT:
            gpt(c, d)
        if d.label.creates_table:
            sizes(c, d)


def partition(c: Checker, d: Disk, p: Partition) -> None:
    """Rules that hold whatever the table type."""
    path = d.partition_path(p.number)
    if p.raid_dev and p.lvm_group:
        c.add(p.src_line, f"{_part(d, p)} has both raid_dev and lvm_group",
              "put the RAID array in the volume group instead: "
              '<raid_disk ... lvm_group="...">')
    if p.raid_dev:
        if c.layout.raid(p.raid_dev) is None:
            c.add(p.src_line, f"{_part(d, p)}: raid_dev {p.raid_dev} has no "
                              f'<raid_disk name="{p.raid_dev}">')
        c.use(p.src_line, path, f"a member of {p.raid_dev}")
    if p.lvm_group:
        if c.layout.volume_group(p.lvm_group) is None:
            c.add(p.src_line, f"{_part(d, p)}: lvm_group {p.lvm_group!r} has no "
                              f'<lvm_group name="{p.lvm_group}">')
        if not p.has(Flag.LVM):
            # SystemImager's installer stops on this too.
            c.add(p.src_line, f"{_part(d, p)} is in lvm_group {p.lvm_group!r} but lacks the "
                              "lvm flag", 'add flags="lvm"')
        c.use(p.src_line, path, f"a physical volume of {p.lvm_group}")
    if p.kind is PartType.EXTENDED:
        extra = [f.value for f in p.flags if f is not Flag.LBA]
        if extra or p.raid_dev or p.lvm_group:
            c.add(p.src_line, f"{_part(d, p)} is the extended partition: it only holds "
                              "logical partitions",
                  "move flags, raid_dev and lvm_group to a logical partition")
        c.use(p.src_line, path, "the extended partition")
    if is_bios_boot(p):
        c.use(p.src_line, path, "the BIOS boot partition")
    if p.size.amount is not None and p.size.amount <= 0:
        c.add(p.src_line, f"{_part(d, p)} has size 0", 'use size="*" for "the rest"')
    if d.unit is Unit.PERCENT and p.size.amount is not None and p.size.amount > 100:
        c.add(p.src_line, f"{_part(d, p)} is {p.size}% of the disk, over 100%")


def msdos(c: Checker, d: Disk) -> None:
    extended = [p for p in d.partitions if p.kind is PartType.EXTENDED]
    for p in extended[1:]:
        c.add(p.src_line, f"{_part(d, p)} is a second extended partition",
              "an msdos table has at most one")
    for p in d.partitions:
        if p.kind is not PartType.LOGICAL and p.number > 4:
            c.add(p.src_line, f"{_part(d, p)}: a {p.kind.value} partition on msdos must be "
                              "numbered 1-4",
                  "numbers 5 and up are logical partitions inside the extended one")
        if p.kind is PartType.LOGICAL:
            if p.number < 5:
                c.add(p.src_line, f"{_part(d, p)}: logical partitions are numbered from 5")
            if not extended:
                c.add(p.src_line, f"{_part(d, p)} is logical but {d.dev} has no extended "
                                  "partition", 'add <part p_type="extended" size="*" .../>')
        if p.name is not None:
            c.add(p.src_line, f"{_part(d, p)}: p_name {p.name!r} needs a gpt table",
                  "msdos partitions have no names")
        if p.part_id is not None and len(p.part_id) > 2:
            c.add(p.src_line, f"{_part(d, p)}: id {p.part_id!r} is a gpt type; msdos types "
                              "are 1-2 hex digits (83, 8e, ef)")
        if p.has(Flag.BIOS_GRUB):
            c.add(p.src_line, f"{_part(d, p)}: bios_grub is for gpt disks",
                  "on msdos grub lives in the gap after the MBR; drop the flag")
    logical = sorted(p.number for p in d.logicals)
    expected = list(range(5, 5 + len(logical)))
    if logical and logical != expected and all(n >= 5 for n in logical):
        # The kernel numbers logical partitions by their place in the chain
        # of extended boot records: there cannot be gaps.
        c.add(d.logicals[0].src_line,
              f"logical partitions of {d.dev} are numbered {', '.join(map(str, logical))}; "
              f"they must be {', '.join(map(str, expected))}",
              "the kernel numbers logical partitions 5, 6, 7... without gaps")


def gpt(c: Checker, d: Disk) -> None:
    for p in d.partitions:
        if p.kind is not PartType.PRIMARY:
            c.add(p.src_line, f"{_part(d, p)} is {p.kind.value}: gpt has no extended or "
                              "logical partitions",
                  f'use p_type="primary"; gpt allows {GPT_MAX_PARTITIONS} of them')
        if p.number > GPT_MAX_PARTITIONS:
            c.add(p.src_line, f"{_part(d, p)}: gpt partitions are numbered "
                              f"1-{GPT_MAX_PARTITIONS}")
        if p.has(Flag.LBA):
            c.add(p.src_line, f"{_part(d, p)}: the lba flag exists only on msdos")
        if p.part_id is not None and len(p.part_id) <= 2:
            c.add(p.src_line, f"{_part(d, p)}: id {p.part_id!r} is an msdos type; gpt types "
                              "are 4 hex digits (8300, 8e00, ef00) or a GUID")
        if p.name is not None and len(p.name.encode("utf-16-le")) > 2 * GPT_NAME_MAX:
            c.add(p.src_line, f"{_part(d, p)}: p_name is longer than {GPT_NAME_MAX} "
                              "characters")


def sizes(c: Checker, d: Disk) -> None:
    """`*` and percentages, per level: the table itself, and the inside of
    the extended partition."""
    ext = d.extended
    levels = ((f"on {d.dev}", d.top_level, 100),
              (f"inside the extended partition of {d.dev}", d.logicals,
               ext.size.amount if ext is not None and ext.size.amount is not None else 100))
    for level, parts, room in levels:
        rest = [p for p in parts if p.size.is_rest]
        for p in rest[1:]:
            c.add(p.src_line, f'{_part(d, p)}: a second size="*" {level}',
                  'only one partition per level can take "the rest"')
        if d.unit is Unit.PERCENT and parts:
            amounts = [p.size.amount for p in parts if p.size.amount is not None]
            total = sum(amounts)
            if total > room and all(a <= 100 for a in amounts):  # else reported above
                c.add(parts[0].src_line, f"partitions {level} add up to {total}%, over "
                                         f"{room}%")
    if ext is not None and ext.size.amount is not None and d.unit.bytes_per_unit:
        per = d.unit.bytes_per_unit
        inside = sum(p.size.amount * per for p in d.logicals if p.size.amount is not None)
        if inside > ext.size.amount * per:
            c.add(ext.src_line, f"{_part(d, ext)} is {ext.size} {d.unit.value} but its logical "
                                f"partitions add up to {inside / per} {d.unit.value}",
                  "each logical partition also needs 1 MiB before it for its boot record")
