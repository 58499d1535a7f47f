"""Does a layout make sense?  Checked before anything touches a disk.

The reader (`sixml`) already enforced the schema; this checks what a schema
cannot: partition numbering rules of each table type, `*` and percentages,
that every device referenced exists and is used for one thing only, RAID
member counts, LVM groups, the mount table, and that the bootloader can
boot (an ESP for EFI, a BIOS boot partition for grub on GPT).

Every problem is one line naming the file, the line of the offending element
and the element; `validate` raises the first as ConfigError, `check`
returns them all (for a lint command).  Disk sizes are not known here:
`geometry` checks that the partitions fit.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from agent.storage.devices import DISK_PATH, lv_paths, split_partition_path
from agent.storage.model import (
    ESP_MOUNTPOINTS,
    FAT_FS,
    FORMATTABLE_FS,
    MOUNT_ONLY_FS,
    ROOT_FS,
    SWAP_MOUNTPOINTS,
    BootFlavor,
    Disk,
    Flag,
    FsEntry,
    InstallType,
    LabelType,
    Layout,
    Partition,
    PartType,
    RaidLevel,
    is_bios_boot,
    is_esp,
)
from agent.storage.units import Unit
from sysclone.errors import ConfigError

GPT_MAX_PARTITIONS = 128  # the default (and near-universal) GPT entry array
GPT_NAME_MAX = 36  # UTF-16 code units in a GPT entry
# Names LVM reserves for its own sub-volumes (lvm(8) VALID NAMES).
_LV_RESERVED = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage",
                "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata")
_EFI_ONLY = (BootFlavor.SYSTEMD, BootFlavor.REFIND)
_ROOT_OK = ROOT_FS | {"nfs", "nfs4"}


@dataclass(frozen=True)
class Problem:
    message: str
    hint: str | None = None


def check(layout: Layout) -> list[Problem]:
    """Every problem found, in file order within each kind of check."""
    c = _Checker(layout)
    c.disks()
    c.raids()
    c.lvm()
    c.fsinfo()
    c.bootloader()
    return c.problems


def validate(layout: Layout) -> None:
    """Raise ConfigError for the first problem (the others ride along in
    its `problems` field and are counted in the hint)."""
    problems = check(layout)
    if not problems:
        return
    first = problems[0]
    hint = first.hint
    if len(problems) > 1:
        more = f"{len(problems) - 1} more problem(s) in this layout"
        hint = f"{hint}; {more}" if hint else more
    raise ConfigError(first.message, hint=hint, problems=[p.message for p in problems])


def _part(disk: Disk, p: Partition) -> str:
    return f'<part num="{p.number}"> of {disk.dev}'


def _fsinfo(e: FsEntry) -> str:
    return f'<fsinfo line="{e.line}">' if e.line is not None else "<fsinfo>"


class _Checker:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.problems: list[Problem] = []
        # device path -> what it is already used for ("member of /dev/md0")
        self.uses: dict[str, str] = {}

    def add(self, line: int | None, message: str, hint: str | None = None) -> None:
        where = f"{self.layout.source}:{line}" if line else self.layout.source
        self.problems.append(Problem(f"{where}: {message}", hint))

    def use(self, line: int | None, dev: str, what: str) -> None:
        """Record that `dev` serves as `what`; a device serves one purpose."""
        if dev == "missing":
            return
        if dev in self.uses:
            self.add(line, f"{dev} is used twice: {self.uses[dev]} and {what}",
                     "a partition or array is either formatted, a RAID member or an LVM "
                     "physical volume, once")
        else:
            self.uses[dev] = what

    # -- disks and partitions --
    def disks(self) -> None:
        seen: set[str] = set()
        for d in self.layout.disks:
            if d.dev in seen:
                self.add(d.src_line, f'<disk dev="{d.dev}"> is listed twice')
            seen.add(d.dev)
            if not DISK_PATH.fullmatch(d.dev):
                self.add(d.src_line, f'<disk dev="{d.dev}"> is not a local disk',
                         "disks are named by their /dev path, e.g. /dev/sda")
            numbers: set[int] = set()
            for p in d.partitions:
                if p.number in numbers:
                    self.add(p.src_line, f"{_part(d, p)}: partition number {p.number} is "
                                         "used twice")
                numbers.add(p.number)
                self.partition(d, p)
            if d.label is LabelType.MSDOS:
                self.msdos(d)
            elif d.label is LabelType.GPT:
                self.gpt(d)
            if d.label.creates_table:
                self.sizes(d)

    def partition(self, d: Disk, p: Partition) -> None:
        """Rules that hold whatever the table type."""
        path = d.partition_path(p.number)
        if p.raid_dev and p.lvm_group:
            self.add(p.src_line, f"{_part(d, p)} has both raid_dev and lvm_group",
                     "put the RAID array in the volume group instead: "
                     '<raid_disk ... lvm_group="...">')
        if p.raid_dev:
            if self.layout.raid(p.raid_dev) is None:
                self.add(p.src_line, f"{_part(d, p)}: raid_dev {p.raid_dev} has no "
                                     f'<raid_disk name="{p.raid_dev}">')
            self.use(p.src_line, path, f"a member of {p.raid_dev}")
        if p.lvm_group:
            if self.layout.volume_group(p.lvm_group) is None:
                self.add(p.src_line, f"{_part(d, p)}: lvm_group {p.lvm_group!r} has no "
                                     f'<lvm_group name="{p.lvm_group}">')
            if not p.has(Flag.LVM):
                # SystemImager's installer stops on this too.
                self.add(p.src_line, f"{_part(d, p)} is in lvm_group {p.lvm_group!r} but "
                                     "lacks the lvm flag", 'add flags="lvm"')
            self.use(p.src_line, path, f"a physical volume of {p.lvm_group}")
        if p.kind is PartType.EXTENDED:
            extra = [f.value for f in p.flags if f is not Flag.LBA]
            if extra or p.raid_dev or p.lvm_group:
                self.add(p.src_line, f"{_part(d, p)} is the extended partition: it only "
                                     "holds logical partitions",
                         "move flags, raid_dev and lvm_group to a logical partition")
            self.use(p.src_line, path, "the extended partition")
        if is_bios_boot(p):
            self.use(p.src_line, path, "the BIOS boot partition")
        if p.size.amount is not None and p.size.amount <= 0:
            self.add(p.src_line, f"{_part(d, p)} has size 0", 'use size="*" for "the rest"')
        if d.unit is Unit.PERCENT and p.size.amount is not None and p.size.amount > 100:
            self.add(p.src_line, f"{_part(d, p)} is {p.size}% of the disk, over 100%")

    def msdos(self, d: Disk) -> None:
        extended = [p for p in d.partitions if p.kind is PartType.EXTENDED]
        for p in extended[1:]:
            self.add(p.src_line, f"{_part(d, p)} is a second extended partition",
                     "an msdos table has at most one")
        for p in d.partitions:
            if p.kind is not PartType.LOGICAL and p.number > 4:
                self.add(p.src_line, f"{_part(d, p)}: a {p.kind.value} partition on msdos "
                                     "must be numbered 1-4",
                         "numbers 5 and up are logical partitions inside the extended one")
            if p.kind is PartType.LOGICAL:
                if p.number < 5:
                    self.add(p.src_line, f"{_part(d, p)}: logical partitions are numbered "
                                         "from 5")
                if not extended:
                    self.add(p.src_line, f"{_part(d, p)} is logical but {d.dev} has no "
                                         "extended partition",
                             'add <part p_type="extended" size="*" .../>')
            if p.name is not None:
                self.add(p.src_line, f"{_part(d, p)}: p_name {p.name!r} needs a gpt table",
                         "msdos partitions have no names")
            if p.part_id is not None and len(p.part_id) > 2:
                self.add(p.src_line, f"{_part(d, p)}: id {p.part_id!r} is a gpt type; msdos "
                                     "types are 1-2 hex digits (83, 8e, ef)")
            if p.has(Flag.BIOS_GRUB):
                self.add(p.src_line, f"{_part(d, p)}: bios_grub is for gpt disks",
                         "on msdos grub lives in the gap after the MBR; drop the flag")
        logical = sorted(p.number for p in d.logicals)
        expected = list(range(5, 5 + len(logical)))
        if logical and logical != expected and all(n >= 5 for n in logical):
            # The kernel numbers logical partitions by their place in the
            # chain of extended boot records: there cannot be gaps.
            self.add(d.logicals[0].src_line,
                     f"logical partitions of {d.dev} are numbered "
                     f"{', '.join(map(str, logical))}; they must be "
                     f"{', '.join(map(str, expected))}",
                     "the kernel numbers logical partitions 5, 6, 7... without gaps")

    def gpt(self, d: Disk) -> None:
        for p in d.partitions:
            if p.kind is not PartType.PRIMARY:
                self.add(p.src_line, f"{_part(d, p)} is {p.kind.value}: gpt has no "
                                     "extended or logical partitions",
                         f'use p_type="primary"; gpt allows {GPT_MAX_PARTITIONS} of them')
            if p.number > GPT_MAX_PARTITIONS:
                self.add(p.src_line, f"{_part(d, p)}: gpt partitions are numbered "
                                     f"1-{GPT_MAX_PARTITIONS}")
            if p.has(Flag.LBA):
                self.add(p.src_line, f"{_part(d, p)}: the lba flag exists only on msdos")
            if p.part_id is not None and len(p.part_id) <= 2:
                self.add(p.src_line, f"{_part(d, p)}: id {p.part_id!r} is an msdos type; "
                                     "gpt types are 4 hex digits (8300, 8e00, ef00) or a GUID")
            if p.name is not None and len(p.name.encode("utf-16-le")) > 2 * GPT_NAME_MAX:
                self.add(p.src_line, f"{_part(d, p)}: p_name is longer than "
                                     f"{GPT_NAME_MAX} characters")

    def sizes(self, d: Disk) -> None:
        """`*` and percentages, per level: the table itself, and the inside
        of the extended partition."""
        ext = d.extended
        levels = ((f"on {d.dev}", d.top_level, 100),
                  (f"inside the extended partition of {d.dev}", d.logicals,
                   ext.size.amount if ext is not None and ext.size.amount is not None else 100))
        for level, parts, room in levels:
            rest = [p for p in parts if p.size.is_rest]
            for p in rest[1:]:
                self.add(p.src_line, f'{_part(d, p)}: a second size="*" {level}',
                         'only one partition per level can take "the rest"')
            if d.unit is Unit.PERCENT and parts:
                amounts = [p.size.amount for p in parts if p.size.amount is not None]
                total = sum(amounts)
                if total > room and all(a <= 100 for a in amounts):  # else reported above
                    self.add(parts[0].src_line, f"partitions {level} add up to {total}%, "
                                                f"over {room}%")
        if ext is not None and ext.size.amount is not None and d.unit.bytes_per_unit:
            per = d.unit.bytes_per_unit
            inside = sum(p.size.amount * per for p in d.logicals if p.size.amount is not None)
            if inside > ext.size.amount * per:
                self.add(ext.src_line, f"{_part(d, ext)} is {ext.size} {d.unit.value} but its "
                                       f"logical partitions add up to {inside / per} "
                                       f"{d.unit.value}",
                         "each logical partition also needs 1 MiB before it for its boot record")

    # -- RAID --
    def raids(self) -> None:
        seen: set[str] = set()
        for r in self.layout.raids:
            where = f'<raid_disk name="{r.name}">'
            if r.name in seen:
                self.add(r.src_line, f"{where} is defined twice")
            seen.add(r.name)
            for dev in r.devices:
                self.raid_device(r.src_line, where, dev)
                self.use(r.src_line, dev, f"a member of {r.name}")
            members = self.layout.raid_members(r.name)
            spares = r.spare_devices or 0
            if not members:
                self.add(r.src_line, f"{where} has no members",
                         f'set raid_dev="{r.name}" on partitions, or devices="..."')
                continue
            if r.raid_devices is not None and r.raid_devices + spares != len(members):
                self.add(r.src_line, f"{where} has {len(members)} member(s) "
                                     f"({' '.join(members)}) but raid_devices + spare_devices "
                                     f"= {r.raid_devices + spares}")
            active = r.raid_devices if r.raid_devices is not None else len(members) - spares
            if active < r.level.min_devices:
                self.add(r.src_line, f"{where}: {r.level.value} needs at least "
                                     f"{r.level.min_devices} active devices, it has {active}",
                         'a degraded array can list "missing" in devices')
            if r.rounding is not None and r.level is not RaidLevel.RAID1:
                self.add(r.src_line, f"{where}: rounding applies to raid1 only")
            if r.layout is not None and r.level not in (RaidLevel.RAID5, RaidLevel.RAID6):
                self.add(r.src_line, f"{where}: layout applies to raid5 and raid6 only")
            if r.lvm_group is not None:
                if self.layout.volume_group(r.lvm_group) is None:
                    self.add(r.src_line, f"{where}: lvm_group {r.lvm_group!r} has no "
                                         f'<lvm_group name="{r.lvm_group}">')
                self.use(r.src_line, r.name, f"a physical volume of {r.lvm_group}")

    def raid_device(self, line: int | None, where: str, dev: str) -> None:
        """A `devices` entry: "missing", a partition of the layout, or a disk
        the layout does not partition."""
        if dev == "missing":
            return
        if self.layout.disk(dev) is not None:
            self.add(line, f"{where}: member {dev} is a disk whose partitions this layout "
                           "lists", "use one of its partitions (raid_dev on the <part>)")
            return
        if self.device_kind(dev) is None and self.claims(dev):
            self.add(line, f"{where}: member {dev} is not a partition of this layout")

    # -- LVM --
    def lvm(self) -> None:
        seen: set[str] = set()
        for g in self.layout.volume_groups:
            where = f'<lvm_group name="{g.name}">'
            if g.name in seen:
                self.add(g.src_line, f"{where} is defined twice")
            seen.add(g.name)
            if not self.layout.physical_volumes(g.name):
                self.add(g.src_line, f"{where} has no physical volumes",
                         f'set lvm_group="{g.name}" on a partition or a raid_disk')
            pe = g.phys_extent_size.bytes if g.phys_extent_size else None
            if pe is not None and (pe < 1024 or pe & (pe - 1)):
                self.add(g.src_line, f"{where}: phys_extent_size {g.phys_extent_size} is not a "
                                     "power of two of at least 1K")
            names: set[str] = set()
            for i, lv in enumerate(g.volumes):
                lw = f'<lv name="{lv.name}"> in {g.name}'
                if lv.name in names:
                    self.add(lv.src_line, f"{lw} is defined twice")
                names.add(lv.name)
                if lv.name in ("snapshot", "pvmove") or any(s in lv.name for s in _LV_RESERVED):
                    self.add(lv.src_line, f"{lw}: the name is reserved by LVM")
                if lv.size.is_rest and i != len(g.volumes) - 1:
                    self.add(lv.src_line, f'{lw}: size="*" takes all the free space, so it '
                                          "must be the last volume of its group")
                if lv.size.amount is not None and lv.size.amount <= 0:
                    self.add(lv.src_line, f"{lw} has size 0")

    # -- what a device path is --
    def device_kind(self, dev: str) -> str | None:
        """'partition', 'extended', 'md' or 'lv' for devices this layout
        creates, else None."""
        hit = self.layout.find_partition(dev)
        if hit is not None:
            return "extended" if hit[1].kind is PartType.EXTENDED else "partition"
        if self.layout.raid(dev) is not None:
            return "md"
        if self.layout.find_logical_volume(dev) is not None:
            return "lv"
        return None

    def claims(self, dev: str) -> bool:
        """Is `dev` named like something this layout would create (a
        partition of one of its disks, an md array, an LV of its groups)?"""
        if split_partition_path(dev, (d.dev for d in self.layout.disks)):
            return True
        if dev.startswith("/dev/md"):
            return True
        return any(dev.startswith(f"/dev/{g.name}/") or dev.startswith(lv_paths(g.name, "")[1])
                   for g in self.layout.volume_groups)

    # -- fstab --
    def fsinfo(self) -> None:
        lines: set[int] = set()
        mounts: dict[str, FsEntry] = {}
        for e in self.layout.fsinfo:
            where = _fsinfo(e)
            if e.line is not None:
                if e.line in lines:
                    self.add(e.src_line, f"{where}: line {e.line} is used twice",
                             "line numbers order /etc/fstab; make them unique")
                lines.add(e.line)
            if e.is_comment:
                if any(v is not None for v in (e.mkfs_opts, e.options, e.dump, e.passno,
                                               e.format)):
                    self.add(e.src_line, f"{where} has mount fields but no device, mount "
                                         "point or filesystem",
                             "a line with only comment= is an fstab comment")
                continue
            missing = [n for n, v in (("real_dev", e.fstab_device), ("mp", e.mountpoint),
                                      ("fs", e.fs)) if v is None]
            if missing:
                self.add(e.src_line, f"{where} lacks {', '.join(missing)}")
                continue
            assert e.mountpoint is not None and e.fs is not None
            self.filesystem(e, where)
            mp = e.mountpoint
            if mp in SWAP_MOUNTPOINTS:
                if not e.is_swap and mp == "swap":
                    self.add(e.src_line, f'{where}: mp="swap" but fs="{e.fs}"',
                             'swap space needs fs="swap"')
            elif not mp.startswith("/"):
                self.add(e.src_line, f"{where}: mount point {mp!r} is not an absolute path",
                         'use a path, or "swap" for swap space')
            elif mp in mounts:
                self.add(e.src_line, f"{where}: {mp} is mounted twice (also line "
                                     f"{mounts[mp].line})")
            else:
                mounts[mp] = e
            if e.is_swap and mp not in SWAP_MOUNTPOINTS:
                self.add(e.src_line, f'{where}: swap space mounted on {mp}', 'use mp="swap"')
            if e.options is not None and len(e.options.split()) != 1:
                self.add(e.src_line, f"{where}: mount options {e.options!r} contain spaces",
                         "fstab options are one comma-separated word")
            if e.mkfs_opts is not None:
                try:
                    shlex.split(e.mkfs_opts)
                except ValueError as exc:
                    self.add(e.src_line, f"{where}: mkfs_opts {e.mkfs_opts!r}: {exc}")
        root = mounts.get("/")
        if root is None:
            self.add(None, "no <fsinfo> mounts /", 'add <fsinfo mp="/" .../> for the root '
                                                   "filesystem")
        elif root.fs in (FORMATTABLE_FS | MOUNT_ONLY_FS) - _ROOT_OK:
            # (an unknown fs is reported above, or allowed by format="no")
            self.add(root.src_line, f"{_fsinfo(root)}: / cannot be {root.fs}",
                     "use " + ", ".join(sorted(ROOT_FS)))

    def filesystem(self, e: FsEntry, where: str) -> None:
        """Is the fs known, and is what gets formatted a device we create?"""
        fs = e.fs
        assert fs is not None
        if fs not in FORMATTABLE_FS and fs not in MOUNT_ONLY_FS and e.format is not False:
            self.add(e.src_line, f"{where}: unknown filesystem {fs!r}",
                     "known: " + ", ".join(sorted(FORMATTABLE_FS)) + '; add format="no" to '
                     "only write the fstab line")
            return
        if fs in MOUNT_ONLY_FS and e.format is True:
            self.add(e.src_line, f'{where}: {fs} cannot be formatted', 'drop format="yes"')
            return
        if not e.formats:
            return
        if e.real_dev is None:
            self.add(e.src_line, f"{where}: formatting needs real_dev (mount_dev only names "
                                 "the filesystem in fstab)",
                     'add real_dev, or format="no" to mount an existing filesystem')
            return
        kind = self.device_kind(e.real_dev)
        if kind is None or kind == "extended":
            what = ("the extended partition" if kind else
                    "not a partition, md array or logical volume of this layout")
            self.add(e.src_line, f"{where}: {e.real_dev} is {what}",
                     'format="no" mounts an existing filesystem without formatting it')
            return
        self.use(e.src_line, e.real_dev, f"formatted as {fs} (line {e.line})")

    # -- bootloader --
    def bootloader(self) -> None:
        b = self.layout.bootloader
        if b is None:
            return
        where = f'<bootloader flavor="{b.flavor.value}" install_type="{b.install_type.value}">'
        if b.install_type is InstallType.LEGACY and b.flavor in _EFI_ONLY:
            self.add(b.src_line, f"{where}: {b.flavor.value} boots only on EFI firmware",
                     'use install_type="efi", or flavor="grub2" for BIOS')
        if b.install_type is InstallType.EFI and b.flavor is BootFlavor.GRUB:
            self.add(b.src_line, f"{where}: grub (legacy grub 0.9x) cannot boot EFI",
                     'use flavor="grub2"')
        for t in b.targets:
            if (self.layout.disk(t.dev) is None and self.device_kind(t.dev) is None):
                self.add(t.src_line, f'<target dev="{t.dev}"> is not a disk, partition or md '
                                     "array of this layout")
        if b.install_type is InstallType.EFI:
            self.esp(where, b.src_line)
        elif b.flavor in (BootFlavor.GRUB, BootFlavor.GRUB2):
            self.bios_boot_partitions(where, b.src_line)

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

    def esp(self, where: str, line: int | None) -> None:
        """EFI boot needs a FAT filesystem on an EFI system partition, mounted
        where the image's bootloader files live (SystemImager: /boot/efi)."""
        candidates = [e for e in self.layout.fsinfo
                      if e.fs in FAT_FS and e.mountpoint in ESP_MOUNTPOINTS and e.real_dev]
        for e in candidates:
            assert e.real_dev is not None
            parts = self.partitions_of(e.real_dev)
            if parts and all(is_esp(d.label, p) for d, p in parts):
                return
        if candidates:
            e = candidates[0]
            self.add(e.src_line, f"{where}: {e.real_dev} on {e.mountpoint} is not flagged as "
                                 "an EFI system partition",
                     'add flags="esp" to its <part> so the firmware finds it')
            return
        esps = [(d, p) for d, p in self.layout.partitions() if is_esp(d.label, p)]
        if esps:
            d, p = esps[0]
            self.add(p.src_line, f"{where}: the EFI system partition {d.partition_path(p.number)} "
                                 "has no FAT <fsinfo> on /boot/efi",
                     f'add <fsinfo real_dev="{d.partition_path(p.number)}" mp="/boot/efi" '
                     'fs="vfat" .../>')
            return
        self.add(line, f"{where} needs an EFI system partition",
                 'a <part flags="esp"> (e.g. 512 MiB) with <fsinfo fs="vfat" mp="/boot/efi">')

    def bios_boot_partitions(self, where: str, line: int | None) -> None:
        """grub on a GPT disk from BIOS embeds its core image in a BIOS boot
        partition; without one grub-install fails (or, forced, relies on
        fragile block lists).  Not added automatically: that would change
        partition numbers the fsinfo lines refer to."""
        b = self.layout.bootloader
        assert b is not None
        disks: list[tuple[Disk, int | None]] = []
        for t in b.targets:
            d = self.layout.disk(t.dev)
            if d is not None:
                disks.append((d, t.src_line))
            elif self.layout.raid(t.dev) is not None:  # grub on each member's disk
                disks.extend((m[0], t.src_line) for m in self.partitions_of(t.dev) or [])
        for d, tline in disks:
            if d.label not in (LabelType.GPT, LabelType.CONVERT):
                continue
            if not any(is_bios_boot(p) for p in d.partitions):
                self.add(tline or line, f"{where}: {b.flavor.value} on {d.dev} needs a BIOS "
                                        f"boot partition: {d.dev} is gpt",
                         'add <part num="N" size="1" p_type="primary" flags="bios_grub"/> '
                         '(1 MiB), or use label_type="msdos", or install_type="efi"')
