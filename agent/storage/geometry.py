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
  * Scaling (when the caller gives `minimums`, as the install plan does): a
    layout written for a bigger disk whose absolute sizes do not fit is
    shrunk to fit.  Every partition with an absolute size shrinks by the
    same factor, except the BIOS boot partition and the ESP (firmware-sized)
    and none below its minimum (what its filesystem needs for the image, at
    least 1 MiB); partitions held at their minimum leave the factor to the
    others.  `*` still takes what is left, at least its minimum.  If even
    the minimums do not fit, the layout is refused.  Each scaled partition
    records the size the layout asked for.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agent.storage.model import Disk, LabelType, Partition, PartType, is_bios_boot, is_esp
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
    asked: int | None = None  # bytes the layout asked for, when scaled down

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
                    alignment: int = MiB,
                    minimums: Mapping[int, int] | None = None) -> list[PlannedPartition]:
    """The partitions of `disk` as byte ranges on a disk of `disk_size_bytes`,
    in on-disk order (an extended partition comes before its logical ones).

    With `minimums` ({partition number: bytes}, possibly empty) a layout too
    big for the disk is scaled down to fit, see above.  Empty for
    label_type convert/none: their partitions exist already.  Raises
    ConfigError when the layout does not fit, naming the disk, what the
    layout needs and what the disk has.  Expects a validated layout."""
    if not disk.label.creates_table:
        return []
    if sector_size < 512 or sector_size & (sector_size - 1):
        raise ValueError(f"sector size {sector_size} is not a power of two >= 512")
    if alignment % sector_size:
        raise ValueError(f"alignment {alignment} is not a multiple of the sector size")
    return _Planner(disk, disk_size_bytes, sector_size, alignment, minimums).plan()


@dataclass
class _Item:
    """One partition of a level while sizes are decided."""

    p: Partition
    wanted: int | None  # None: `*`
    minimum: int
    scalable: bool
    size: int = 0


class _Planner:
    def __init__(self, disk: Disk, disk_size: int, sector_size: int, alignment: int,
                 minimums: Mapping[int, int] | None) -> None:
        self.disk = disk
        self.disk_size = disk_size
        self.sector_size = sector_size
        self.alignment = alignment
        self.scale = minimums is not None
        self.minimums = dict(minimums or {})
        self.first, self.end = usable_area(disk.label, disk_size, sector_size, alignment)
        self.usable = max(0, self.end - self.first)

    def minimum(self, p: Partition) -> int:
        return max(self.alignment, align_up(self.minimums.get(p.number, 0), self.alignment))

    def item(self, p: Partition, wanted: int | None, minimum: int | None = None) -> _Item:
        # Firmware-defined partitions keep their size; percentages fit already.
        scalable = self.scale and wanted is not None and self.disk.unit is not Unit.PERCENT \
            and not is_bios_boot(p) and not is_esp(self.disk.label, p)
        return _Item(p, wanted, self.minimum(p) if minimum is None else minimum, scalable)

    def fit(self, items: list[_Item], room: int) -> bool:
        """Sizes for one level in `room` bytes; False when they cannot fit.
        Without scaling, fixed sizes are kept or the level does not fit."""
        rest = next((i for i in items if i.wanted is None), None)
        fixed = sum(i.wanted for i in items if i.wanted is not None)
        need_rest = rest.minimum if rest is not None else 0
        if fixed + need_rest <= room:
            for i in items:
                i.size = i.wanted if i.wanted is not None else room - fixed
            return True
        shrink = [i for i in items if i.scalable]
        if not shrink:
            return False
        budget = room - need_rest - sum(i.wanted for i in items
                                        if i.wanted is not None and not i.scalable)
        # Water-filling: one factor for all, those it would push below their
        # minimum are held there and the factor is worked out again.
        while shrink:
            total = sum(i.wanted for i in shrink if i.wanted is not None)
            factor = budget / total if total else 0.0
            low = [i for i in shrink if (i.wanted or 0) * factor < i.minimum]
            if not low:
                break
            for i in low:
                i.size = i.minimum
                budget -= i.minimum
                shrink.remove(i)
        if budget < 0:
            return False
        for i in shrink:
            i.size = max(i.minimum, align_down(int((i.wanted or 0) * factor), self.alignment))
        for i in items:
            if i.wanted is not None and not i.scalable:
                i.size = i.wanted
        if rest is not None:
            rest.size = room - sum(i.size for i in items if i is not rest)
        return sum(i.size for i in items) <= room

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
        logicals = [self.item(p, self.wanted(p)) for p in sorted(d.logicals,
                                                                 key=lambda p: p.number)]
        logical_fixed = sum(i.wanted for i in logicals if i.wanted is not None) \
            + gap * len(logicals)
        logical_rest = any(i.wanted is None for i in logicals)
        extended_min = max(logical_fixed + (self.alignment if logical_rest else 0),
                           self.alignment)
        # What the extended partition can shrink to: its logicals' minimums.
        extended_least = max(sum(i.minimum for i in logicals) + gap * len(logicals),
                             self.alignment) if self.scale else extended_min

        top = []
        for p in sorted(d.top_level, key=lambda p: p.number):
            wanted = self.wanted(p)
            if p.kind is PartType.EXTENDED:
                if wanted is not None and wanted < extended_min and not self.scale:
                    raise ConfigError(
                        f"extended partition {p.number} of {d.dev} is {human(wanted)} but its "
                        f"logical partitions need {human(extended_min)}",
                        hint="each logical partition also needs 1 MiB for its boot record")
                top.append(self.item(p, wanted, extended_least))
            else:
                top.append(self.item(p, wanted))
        if not self.fit(top, self.usable):
            fixed = sum(i.wanted for i in top if i.wanted is not None)
            rest = next((i for i in top if i.wanted is None), None)
            if self.scale and any(i.scalable for i in top):
                least = sum(i.minimum if i.scalable or i.wanted is None else i.wanted or 0
                            for i in top)
                big = sorted((i for i in top + logicals if i.minimum >= 32 * MiB
                              and i.p.kind is not PartType.EXTENDED),
                             key=lambda i: -i.minimum)[:3]
                what = "its partitions even scaled down"
                if big:
                    what += " (" + ", ".join(f"partition {i.p.number} at least "
                                             f"{i.minimum // MiB:,} MiB" for i in big) + \
                        ": the image data and the smallest filesystem each holds)"
                raise self.too_small(least, what)
            if rest is None:
                raise self.too_small(fixed, "its partitions")
            raise self.too_small(fixed + rest.minimum,
                                 f'its partitions (partition {rest.p.number}, size "*", needs '
                                 f"at least {human(rest.minimum)})")

        planned: list[PlannedPartition] = []
        pos = self.first
        for i in top:
            planned.append(self.placed(i.p, pos, i.size, i.wanted))
            if i.p.kind is PartType.EXTENDED:
                if not self.fit(logicals, i.size - gap * len(logicals)):
                    raise ConfigError(
                        f"extended partition {i.p.number} of {d.dev} is {human(i.size)} but "
                        f"its logical partitions need {human(extended_min)}",
                        hint="each logical partition also needs 1 MiB for its boot record")
                lpos = pos
                for lp in logicals:
                    lpos += gap
                    planned.append(self.placed(lp.p, lpos, lp.size, lp.wanted))
                    lpos += lp.size
            pos += i.size
        return planned

    def placed(self, p: Partition, start: int, size: int,
               wanted: int | None) -> PlannedPartition:
        asked = wanted if wanted is not None and size < wanted else None
        return PlannedPartition(number=p.number, kind=p.kind, start=start, size=size,
                                device=self.disk.partition_path(p.number), partition=p,
                                sector_size=self.sector_size, asked=asked)
