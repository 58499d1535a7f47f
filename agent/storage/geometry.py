"""Where each partition goes: sizes turned into aligned byte ranges.

A pure function of the layout's <disk> and the real disk's size, so the
numbers can be tested without a disk and shown before anything is written.

The rules (and why):
  * Everything starts and ends on 1 MiB boundaries: right for 512-byte and
    4K-sector disks, SSD erase blocks and RAID stripes, and what fdisk and
    parted do.  The first MiB holds the MBR / GPT header and grub's gap.
  * GPT keeps a backup header and entry array in the last sectors
    (16 KiB + 1 sector); they are left free.  msdos can only address 2^32
    sectors (2 TiB with 512-byte sectors): space beyond is not usable.
  * Partitions are laid out in partition-number order: primary and
    extended by number, logical partitions by number inside the extended
    one.  The kernel numbers logical partitions by their place in the chain,
    so this is the only order that keeps /dev/sda5 the partition the layout
    calls 5.  (SystemImager 4.9 creates them in file order, which mislabels
    them when the file lists 7 before 5, as disk-layout-complex.xml does.)
  * Absolute sizes are rounded up to whole MiB: you get at least what you
    asked for (500 MB = 476.8 MiB -> 477 MiB).  Percentages are of the usable
    area (disk minus table and alignment), rounded down, so shares adding up
    to 100 % fit; for a logical partition too, percent is of the disk.
  * `*` takes what is left on its level: of the disk for a primary or
    the extended partition, of the extended partition for a logical one.
  * Each logical partition is preceded by 1 MiB holding its extended boot
    record (only one sector is needed, but the next partition must start
    aligned).
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.storage.model import Disk, LabelType, Partition, PartType
from agent.storage.units import MiB, Unit, align_down, align_up, human, size_to_bytes
from sysclone.errors import ConfigError

GPT_ENTRIES_BYTES = 128 * 128  # the entry array: 128 entries of 128 bytes
MSDOS_MAX_SECTORS = 2**32


@dataclass(frozen=True)
class PlannedPartition:
    number: int
    kind: PartType
    start: int  # bytes from the start of the disk
    size: int  # bytes
    device: str  # /dev/sda6, /dev/nvme0n1p6
    partition: Partition  # the layout's entry: flags, name, type id
    sector_size: int = 512

    @property
    def end(self) -> int:
        """First byte after the partition."""
        return self.start + self.size

    @property
    def start_sector(self) -> int:
        return self.start // self.sector_size

    @property
    def size_sectors(self) -> int:
        return self.size // self.sector_size

    @property
    def last_sector(self) -> int:
        """Inclusive, as sfdisk, sgdisk and parted's "s" unit count."""
        return self.end // self.sector_size - 1


def usable_area(label: LabelType, disk_size: int, sector_size: int,
                alignment: int) -> tuple[int, int]:
    """(first, end) bytes of the space partitions may use, both aligned."""
    if label is LabelType.GPT:
        head = 2 * sector_size + GPT_ENTRIES_BYTES  # protective MBR, header, entries
        tail = sector_size + GPT_ENTRIES_BYTES  # backup entries and header
        limit = disk_size - tail
    else:
        head = sector_size  # the MBR
        limit = min(disk_size, MSDOS_MAX_SECTORS * sector_size)
    return align_up(head, alignment), align_down(limit, alignment)


def plan_partitions(disk: Disk, disk_size_bytes: int, sector_size: int = 512, *,
                    alignment: int = MiB) -> list[PlannedPartition]:
    """The partitions of `disk` as byte ranges on a disk of `disk_size_bytes`,
    in on-disk order (an extended partition comes before its logical ones).

    Empty for label_type convert/none: their partitions exist already.
    Raises ConfigError when the layout does not fit, naming the disk, what
    the layout needs and what the disk has.  Expects a validated layout."""
    if not disk.label.creates_table:
        return []
    if sector_size < 512 or sector_size & (sector_size - 1):
        raise ValueError(f"sector size {sector_size} is not a power of two >= 512")
    if alignment % sector_size:
        raise ValueError(f"alignment {alignment} is not a multiple of the sector size")
    return _Planner(disk, disk_size_bytes, sector_size, alignment).plan()


class _Planner:
    def __init__(self, disk: Disk, disk_size: int, sector_size: int, alignment: int) -> None:
        self.disk = disk
        self.disk_size = disk_size
        self.sector_size = sector_size
        self.alignment = alignment
        self.first, self.end = usable_area(disk.label, disk_size, sector_size, alignment)
        self.usable = max(0, self.end - self.first)

    def wanted(self, p: Partition) -> int | None:
        """Bytes a fixed-size partition gets (aligned); None for `*`."""
        if p.size.amount is None:
            return None
        raw = size_to_bytes(p.size.amount, self.disk.unit, sector_size=self.sector_size,
                            percent_base=self.usable)
        if self.disk.unit is Unit.PERCENT:
            size = align_down(raw, self.alignment)
            if size == 0:
                raise ConfigError(
                    f"partition {p.number} of {self.disk.dev}: {p.size}% of "
                    f"{human(self.usable)} is less than {human(self.alignment)}",
                    hint="use a larger share or an absolute unit")
            return size
        return align_up(raw, self.alignment)

    def too_small(self, need: int, what: str) -> ConfigError:
        overhead = self.first + (self.disk_size - self.end)
        message = (f"disk {self.disk.dev} is too small for {what}: it needs "
                   f"{human(need + overhead)}, the disk has {human(self.disk_size)}")
        hint = "partitions are rounded up to whole MiB, and the partition table takes " \
               f"{human(overhead)} with alignment"
        if self.disk.label is LabelType.MSDOS and \
                self.disk_size > MSDOS_MAX_SECTORS * self.sector_size:
            hint = (f"an msdos table addresses only the first "
                    f"{human(MSDOS_MAX_SECTORS * self.sector_size)}: use label_type=\"gpt\"")
        return ConfigError(message, hint=hint)

    def plan(self) -> list[PlannedPartition]:
        d = self.disk
        if d.logicals and d.extended is None:  # validate() says so too, with lines
            raise ConfigError(f"{d.dev} has logical partitions but no extended partition")
        gap = self.alignment  # room for each logical partition's boot record
        logicals = sorted(d.logicals, key=lambda p: p.number)
        logical_sizes = {p.number: self.wanted(p) for p in logicals}
        logical_fixed = sum(s for s in logical_sizes.values() if s is not None) \
            + gap * len(logicals)
        logical_rest = any(s is None for s in logical_sizes.values())
        extended_min = max(logical_fixed + (self.alignment if logical_rest else 0),
                           self.alignment)

        top = sorted(d.top_level, key=lambda p: p.number)
        sizes = {p.number: self.wanted(p) for p in top}
        for p in top:
            size = sizes[p.number]
            if p.kind is PartType.EXTENDED and size is not None and size < extended_min:
                raise ConfigError(
                    f"extended partition {p.number} of {d.dev} is {human(size)} but its "
                    f"logical partitions need {human(extended_min)}",
                    hint="each logical partition also needs 1 MiB for its boot record")
        fixed = sum(s for s in sizes.values() if s is not None)
        rest = next((p for p in top if sizes[p.number] is None), None)
        if rest is None:
            if fixed > self.usable:
                raise self.too_small(fixed, "its partitions")
        else:
            least = extended_min if rest.kind is PartType.EXTENDED else self.alignment
            if fixed + least > self.usable:
                raise self.too_small(fixed + least, f'its partitions (partition {rest.number}, '
                                                    f'size "*", needs at least {human(least)})')
            sizes[rest.number] = self.usable - fixed

        planned: list[PlannedPartition] = []
        pos = self.first
        for p in top:
            size = sizes[p.number]
            assert size is not None
            planned.append(self.placed(p, pos, size))
            if p.kind is PartType.EXTENDED:
                inside = size - logical_fixed  # what a `*` logical partition gets
                lpos = pos
                for lp in logicals:
                    lsize = logical_sizes[lp.number]
                    lsize = inside if lsize is None else lsize
                    lpos += gap
                    planned.append(self.placed(lp, lpos, lsize))
                    lpos += lsize
            pos += size
        return planned

    def placed(self, p: Partition, start: int, size: int) -> PlannedPartition:
        return PlannedPartition(number=p.number, kind=p.kind, start=start, size=size,
                                device=self.disk.partition_path(p.number), partition=p,
                                sector_size=self.sector_size)
