"""What the layout checks share (agent.storage.validate and its
validate_* modules): the layout, the problems found so far, and what each
device is used for."""

from __future__ import annotations

from dataclasses import dataclass

from agent.storage.devices import lv_paths, split_partition_path
from agent.storage.model import Disk, FsEntry, Layout, Partition, PartType


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str | None = None


def part_name(disk: Disk, p: Partition) -> str:
    return f'<part num="{p.number}"> of {disk.dev}'


def fsinfo_name(e: FsEntry) -> str:
    return f'<fsinfo line="{e.line}">' if e.line is not None else "<fsinfo>"


class Checker:
    """The layout, the problems found so far, and what each device is used
    for: a device serves one purpose."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.problems: list[Problem] = []
        # device path -> what it is already used for ("member of /dev/md0")
        self.uses: dict[str, str] = {}

    def add(self, line: int | None, message: str, hint: str | None = None) -> None:
        where = f"{self.layout.source}:{line}" if line else self.layout.source
        self.problems.append(Problem(f"{where}: {message}", hint))

    def use(self, line: int | None, dev: str, what: str) -> None:
        """Record that `dev` serves as `what`."""
        if dev == "missing":
            return
        if dev in self.uses:
            self.add(line, f"{dev} is used twice: {self.uses[dev]} and {what}",
                     "a partition or array is either formatted, a RAID member, encrypted or "
                     "an LVM physical volume, once")
        else:
            self.uses[dev] = what

    # -- what a device path is --
    def device_kind(self, dev: str) -> str | None:
        """'partition', 'extended', 'md', 'luks' or 'lv' for devices this
        layout creates (or, on a label_type="none" disk, keeps), else None."""
        hit = self.layout.find_partition(dev)
        if hit is not None:
            return "extended" if hit[1].kind is PartType.EXTENDED else "partition"
        if self.layout.raid(dev) is not None:
            return "md"
        if self.layout.crypt(dev) is not None:
            return "luks"
        if self.layout.find_logical_volume(dev) is not None:
            return "lv"
        return None

    def claims(self, dev: str) -> bool:
        """Is `dev` named like something this layout would create (a
        partition of one of its disks, an md array, an LV of its groups)?"""
        if split_partition_path(dev, (d.dev for d in self.layout.disks)):
            return True
        if dev.startswith(("/dev/md", "/dev/mapper/")):
            return True
        return any(dev.startswith(f"/dev/{g.name}/") or dev.startswith(lv_paths(g.name, "")[1])
                   for g in self.layout.volume_groups)

    def stack(self, dev: str, depth: int = 0) -> set[str]:
        """Every kind of device under `dev`, itself included: what the
        bootloader and the initrd must be able to read through."""
        kind = self.device_kind(dev)
        if kind is None or depth > 8:  # the layout's own loops are reported elsewhere
            return set()
        out = {kind}
        if kind == "md":
            for m in self.layout.raid_members(dev):
                out |= self.stack(m, depth + 1)
        elif kind == "luks":
            c = self.layout.crypt(dev)
            assert c is not None
            out |= self.stack(c.device, depth + 1)
        elif kind == "lv":
            hit = self.layout.find_logical_volume(dev)
            assert hit is not None
            for pv in self.layout.physical_volumes(hit[0].name):
                out |= self.stack(pv, depth + 1)
        return out

    def partitions_of(self, dev: str) -> list[tuple[Disk, Partition]] | None:
        """The partitions under a device: itself, or an md array's members
        (None if any of those is not a partition of the layout)."""
        hit = self.layout.find_partition(dev)
        if hit is not None:
            return [hit]
        if self.layout.raid(dev) is None:
            return None
        out = []
        for m in self.layout.raid_members(dev):
            if m == "missing":
                continue
            hit = self.layout.find_partition(m)
            if hit is None:
                return None
            out.append(hit)
        return out
