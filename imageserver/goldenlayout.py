"""The golden client's disk layout, rebuilt from its facts as SystemImager
disks-layout XML (what si_prepareclient wrote to autoinstallscript.conf).

What is described: every disk holding something the capture took (a
mounted filesystem or active swap, directly, through md RAID or through
LVM), with all of its partitions -- unmounted ones too, such as the BIOS
boot partition or an ESP -- and the arrays and volume groups on the way.
Mount options come from the client's own fstab.

Sizes: every partition keeps its size in MiB, except that by default the
largest data partition of each disk (and the largest logical volume of a
group on it) takes the space left (`*`), so the layout fits a clone's disk
whether it is larger or a little smaller: the relative part scales, the
boot, ESP and swap partitions do not.  `exact=True` keeps every size
(SystemImager's --explicit-geometry).

Anything that cannot be described (a filesystem on a whole disk, LUKS, a
root that is not on a disk at all) is a warning, and the capture records no
layout: installs then use the server's layout files or the default.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from agent.storage.devices import lv_paths, partition_number, partition_path
from agent.storage.model import (
    BootFlavor,
    Bootloader,
    BootTarget,
    Disk,
    Flag,
    FsEntry,
    InstallType,
    LabelType,
    Layout,
    LogicalVolume,
    Partition,
    PartType,
    RaidArray,
    RaidLevel,
    VolumeGroup,
)
from agent.storage.units import KiB, LvmSize, MiB, Size, Unit
from agent.storage.validate import check
from imageserver import goldenfacts as gf

GPT_BIOS_BOOT = "21686148-6449-6e6f-744e-656564454649"
GPT_ESP = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"
GPT_SWAP = "0657fd6d-a4ab-43c4-84e5-0933c84b4f4f"
GPT_LVM = "e6d6d379-f507-44c2-a23c-238f2a3df928"
GPT_RAID = "a19d880f-05fc-4d3b-a006-743f0f84911e"
DOS_EXTENDED = frozenset({"5", "f", "85"})
_LABEL_OPT = {"ext2": "-L", "ext3": "-L", "ext4": "-L", "xfs": "-L", "btrfs": "-L",
              "swap": "-L", "vfat": "-n"}
SOURCE = "<golden client>"


@dataclass(frozen=True)
class GoldenLayout:
    layout: Layout | None
    warnings: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()  # validate() says the layout is not usable

    @property
    def usable(self) -> bool:
        return self.layout is not None and not self.problems


def _mib(nbytes: int) -> Size:
    return Size(Decimal(nbytes) / MiB)


def _norm_type(t: str | None) -> str | None:
    if not t:
        return None
    t = t.lower()
    return t[2:].lstrip("0") or "0" if t.startswith("0x") else t


class _Builder:
    def __init__(self, facts: dict[str, Any], exact: bool) -> None:
        self.exact = exact
        self.devs = gf.block_devices(facts)
        self.by_majmin = {d.majmin: d for d in self.devs.values() if d.majmin}
        self.by_path: dict[str, gf.BlockDev] = {}
        for d in self.devs.values():
            self.by_path.setdefault(d.path, d)
            self.by_path.setdefault(f"/dev/{d.name}", d)
        self.tables = gf.part_tables(facts)
        self.blkid = gf.blkid(facts)
        self.md = gf.md_arrays(facts)
        self.chunks = gf.mdstat_chunks(facts)
        self.lvm = gf.lvm(facts)
        self.fstab = gf.fstab(facts)
        self.firmware = gf.firmware(facts)
        self.mounts = gf.captured_mounts(gf.mounts(facts))
        self.swaps = gf.swaps(facts)
        self.warnings: list[str] = []
        self.disks: list[str] = []  # knames, in lsblk order
        self.arrays: list[str] = []
        self.groups: list[str] = []

    # -- what backs a used device --------------------------------------------
    def disk_of(self, d: gf.BlockDev) -> gf.BlockDev | None:
        for p in d.parents:
            if self.devs[p].type in ("disk", "loop"):
                return self.devs[p]
        return None

    def lv_of(self, d: gf.BlockDev) -> tuple[str, str] | None:
        for vg, lv, _size, _seg in self.lvm.lvs:
            if d.path in lv_paths(vg, lv) or f"/dev/mapper/{d.name}" in lv_paths(vg, lv):
                return vg, lv
        return None

    def layout_path(self, d: gf.BlockDev) -> str | None:
        """The device as the layout names it, noting the disks, arrays and
        groups it needs; None (and a warning) if it cannot be described."""
        if d.type == "part":
            disk = self.disk_of(d)
            n = partition_number(d.path, disk.path) if disk else None
            if disk is None or n is None:
                self.warnings.append(f"{d.path}: cannot tell which disk it is on")
                return None
            if disk.name not in self.disks:
                self.disks.append(disk.name)
            return partition_path(disk.path, n)
        if d.type.startswith("raid") or d.type == "linear":
            if d.path not in self.arrays:
                self.arrays.append(d.path)
                for p in d.parents:
                    if self.layout_path(self.devs[p]) is None:
                        return None
            return d.path
        if d.type == "lvm":
            hit = self.lv_of(d)
            if hit is None:
                self.warnings.append(f"{d.path}: a device-mapper device LVM does not report")
                return None
            vg, lv = hit
            if vg not in self.groups:
                self.groups.append(vg)
                for pv, g in self.lvm.pvs.items():
                    pvd = self.by_path.get(pv) if g == vg else None
                    if pvd is not None and self.layout_path(pvd) is None:
                        return None
            return f"/dev/{vg}/{lv}"
        what = {"disk": "a filesystem on a whole disk", "crypt": "an encrypted (LUKS) volume",
                "loop": "a loop device"}.get(d.type, f"a {d.type or 'unknown'} device")
        self.warnings.append(f"{d.path} is {what}; disk layouts cannot describe it")
        return None

    # -- the layout ----------------------------------------------------------------
    def build(self) -> GoldenLayout:
        entries: list[tuple[str, gf.BlockDev, gf.Mount | None]] = []
        used: set[str] = set()
        for m in self.mounts:
            d = self.by_majmin.get(m.majmin) or self.by_path.get(m.source)
            if d is None:
                self.warnings.append(f"{m.target} ({m.source}) is not on a block device "
                                     "lsblk reports; it is not in the layout")
                continue
            if d.name in used:
                self.warnings.append(f"{m.target} is another mount of {d.path} (a btrfs "
                                     "subvolume?); it is captured but not in the layout")
                continue
            path = self.layout_path(d)
            if path is not None:
                used.add(d.name)
                entries.append((path, d, m))
        for s in self.swaps:
            d = self.by_path.get(s)
            path = self.layout_path(d) if d else None
            if d is not None and path is not None:
                used.add(d.name)
                entries.append((path, d, None))
        if self.disks:
            entries += self.idle_swap(used)
        if not any(m is not None and m.target == "/" for _, _, m in entries):
            return GoldenLayout(None, (*self.warnings,
                                       "the root filesystem is not on a partition, md array "
                                       "or LVM volume lsblk reports: no disk layout"))
        disks = [self.disk(self.devs[k]) for k in self.disks]
        if any(d is None for d in disks):
            return GoldenLayout(None, tuple(self.warnings))
        layout = Layout(disks=tuple(d for d in disks if d is not None),
                        raids=tuple(self.raid(a) for a in sorted(self.arrays)),
                        volume_groups=tuple(self.group(g) for g in self.groups),
                        lvm_version=2 if self.groups else None,
                        fsinfo=self.fsinfo(entries), source=SOURCE)
        layout = replace(layout, bootloader=self.bootloader(layout))
        problems = tuple(p.message for p in check(layout))
        return GoldenLayout(layout, tuple(self.warnings), problems)

    def idle_swap(self, used: set[str]) -> list[tuple[str, gf.BlockDev, gf.Mount | None]]:
        """Swap partitions of the described disks that are not switched on
        right now: still the golden client's swap."""
        out: list[tuple[str, gf.BlockDev, gf.Mount | None]] = []
        for d in self.devs.values():
            fstype = d.fstype or self.blkid.get(d.path, {}).get("TYPE")
            disk = self.disk_of(d) if d.type == "part" else None
            if fstype == "swap" and disk and disk.name in self.disks and d.name not in used:
                path = self.layout_path(d)
                if path:
                    out.append((path, d, None))
        return out

    def disk(self, dev: gf.BlockDev) -> Disk | None:
        table = self.tables.get(dev.path)
        label = table.label if table else (dev.pttype or "")
        if label not in ("gpt", "dos"):
            self.warnings.append(f"{dev.path}: partition table type {label or 'unknown'!r} "
                                 "(sfdisk -J and lsblk PTTYPE unreadable?)")
            return None
        gpt = label == "gpt"
        # (number, bytes, type, name, bootable)
        rows: list[tuple[int, int, str | None, str | None, bool]] = []
        if table:
            for e in table.partitions:
                n = partition_number(e.node, dev.path)
                if n is not None:
                    rows.append((n, e.size * table.sector_size, _norm_type(e.type), e.name,
                                 e.bootable))
        else:
            for d in self.devs.values():
                n = partition_number(d.path, dev.path) if d.type == "part" else None
                if n is not None and dev.name in d.parents:
                    rows.append((n, d.size, _norm_type(d.parttype), d.partlabel, False))
        parts = [self.partition(dev, gpt, *row) for row in sorted(rows)]
        if not self.exact:
            parts = self.grow(parts)
        return Disk(dev=dev.path, label=LabelType.GPT if gpt else LabelType.MSDOS,
                    unit=Unit.MIB, partitions=tuple(parts))

    def partition(self, disk: gf.BlockDev, gpt: bool, n: int, size: int, ptype: str | None,
                  name: str | None, bootable: bool) -> Partition:
        path = partition_path(disk.path, n)
        kind = PartType.PRIMARY
        if not gpt and ptype in DOS_EXTENDED:
            kind = PartType.EXTENDED
        elif not gpt and n >= 5:
            kind = PartType.LOGICAL
        raid = next((a for a in self.arrays
                     if path in self.members(a)), None)
        vg = self.lvm.pvs.get(path) if self.lvm.pvs.get(path) in self.groups else None
        flags: list[Flag] = []
        if kind is not PartType.EXTENDED:
            for flag, hit in ((Flag.BIOS_GRUB, gpt and ptype in (GPT_BIOS_BOOT, "ef02")),
                              (Flag.ESP, ptype in (GPT_ESP, "ef", "ef00")),
                              (Flag.BOOT, bootable),
                              (Flag.RAID, raid is not None or ptype in (GPT_RAID, "fd")),
                              (Flag.LVM, vg is not None or ptype in (GPT_LVM, "8e")),
                              (Flag.SWAP, path in self.swap_paths() or ptype in (GPT_SWAP,
                                                                                 "82"))):
                if hit:
                    flags.append(flag)
        return Partition(number=n, size=_mib(size), kind=kind, part_id=ptype,
                         name=(name or None) if gpt else None, flags=tuple(flags),
                         raid_dev=raid, lvm_group=vg)

    def swap_paths(self) -> set[str]:
        out = set()
        for s in self.swaps:
            d = self.by_path.get(s)
            if d is not None:
                out.add(d.path)
        return out

    def members(self, array: str) -> list[str]:
        d = self.by_path.get(array)
        return [self.devs[p].path for p in d.parents] if d else []

    def grow(self, parts: list[Partition]) -> list[Partition]:
        """The largest data partition takes the rest of the disk."""
        fixed = (Flag.ESP, Flag.BIOS_GRUB, Flag.SWAP)
        data = [p for p in parts if p.kind is not PartType.EXTENDED
                and not any(p.has(f) for f in fixed)]
        if not data:
            return parts
        big = max(data, key=lambda p: (p.size.amount or 0, -p.number))
        out = []
        for p in parts:
            if p.number == big.number or (big.kind is PartType.LOGICAL
                                          and p.kind is PartType.EXTENDED):
                p = replace(p, size=Size(None))
            out.append(p)
        return out

    def raid(self, path: str) -> RaidArray:
        d = self.by_path[path]
        members = self.members(path)
        rec = self.md.get(path) or next(
            (r for r in self.md.values() if set(r.devices) == set(members)), None)
        level = RaidLevel.parse(d.type if d.type.startswith("raid") else
                                (rec.level if rec else "linear"))
        spares = rec.spares if rec and rec.spares else None
        metadata = rec.metadata if rec and rec.metadata in ("0.90", "1.0", "1.1", "1.2") \
            else None
        striped = level in (RaidLevel.RAID0, RaidLevel.RAID4, RaidLevel.RAID5, RaidLevel.RAID6,
                            RaidLevel.RAID10)
        return RaidArray(name=path, level=level,
                         raid_devices=len(members) - (spares or 0), spare_devices=spares,
                         chunk_size=self.chunks.get(path) if striped else None,
                         lvm_group=self.lvm.pvs.get(path), metadata=metadata)

    def group(self, vg: str) -> VolumeGroup:
        ext = self.lvm.vg_extent.get(vg, 4 << 20)
        max_lv, max_pv = self.lvm.vg_max.get(vg, (0, 0))
        lvs = [(lv, size, seg) for g, lv, size, seg in self.lvm.lvs if g == vg]
        for lv, _size, seg in lvs:
            if seg not in ("linear", "striped"):
                self.warnings.append(f"/dev/{vg}/{lv} is a {seg} volume; the layout makes "
                                     "it linear")
        grow = None
        if not self.exact and lvs:
            swaps = self.swap_paths()
            data = [x for x in lvs if not swaps & set(lv_paths(vg, x[0]))]
            grow = max(data, key=lambda x: x[1])[0] if data else None
        volumes = [LogicalVolume(lv, LvmSize(None) if lv == grow else
                                 LvmSize(Decimal(size) / MiB, "M"))
                   for lv, size, _seg in lvs]
        volumes.sort(key=lambda v: v.size.is_rest)  # `*` must come last
        return VolumeGroup(vg, max_log_vols=max_lv, max_phys_vols=max_pv,
                           phys_extent_size=LvmSize(Decimal(ext) / KiB, "K"),
                           volumes=tuple(volumes))

    def fstab_line(self, d: gf.BlockDev, mountpoint: str | None) -> gf.FstabLine | None:
        for line in self.fstab:
            if mountpoint is not None and line.file == mountpoint:
                return line
            spec = line.spec
            key, eq, value = spec.partition("=")
            dev = next((k for k, v in self.blkid.items() if v.get(key) == value), None) \
                if eq else spec
            if mountpoint is None and line.vfstype == "swap" and dev in (d.path,
                                                                         f"/dev/{d.name}"):
                return line
        return None

    def fsinfo(self, entries: list[tuple[str, gf.BlockDev, gf.Mount | None]]
               ) -> tuple[FsEntry, ...]:
        def order(e: tuple[str, gf.BlockDev, gf.Mount | None]) -> tuple[int, int, str]:
            m = e[2]
            if m is None:
                return (2, 0, e[0])
            return (0 if m.target == "/" else 1, m.target.count("/"), m.target)

        out = []
        for i, (path, d, m) in enumerate(sorted(entries, key=order), 1):
            fs = "swap" if m is None else ("vfat" if m.fstype in ("msdos", "fat") else m.fstype)
            line = self.fstab_line(d, m.target if m else None)
            label = self.blkid.get(d.path, {}).get("LABEL") or d.label
            opt = _LABEL_OPT.get(fs)
            out.append(FsEntry(
                line=10 * i, real_dev=path, mountpoint=m.target if m else "swap", fs=fs,
                mkfs_opts=f"{opt} {shlex.quote(label)}" if label and opt else None,
                options=line.options if line else ("sw" if m is None else "defaults"),
                dump=line.freq if line else 0,
                passno=line.passno if line else (0 if m is None else
                                                 1 if m.target == "/" else 2)))
        return tuple(out)

    def bootloader(self, layout: Layout) -> Bootloader | None:
        efi = self.firmware == "uefi"
        targets: list[str] = []
        if efi:
            esp = next((e.real_dev for e in layout.fsinfo if e.fs == "vfat"
                        and e.mountpoint in ("/boot/efi", "/efi", "/boot")), None)
            esp = esp or next((d.partition_path(p.number) for d, p in layout.partitions()
                               if p.has(Flag.ESP)), None)
            targets = [esp] if esp else []
        else:
            boot = layout.mount("/boot") or layout.mount("/")
            targets = self.disks_under(layout, boot.real_dev if boot and boot.real_dev else "")
        if not targets:
            self.warnings.append("no place to install the bootloader was found "
                                 + ("(no EFI system partition)" if efi else ""))
            return None
        return Bootloader(flavor=BootFlavor.GRUB2,
                          install_type=InstallType.EFI if efi else InstallType.LEGACY,
                          targets=tuple(BootTarget(dev=t) for t in targets))

    def disks_under(self, layout: Layout, dev: str) -> list[str]:
        """The disks a device lives on (through arrays and volume groups)."""
        hit = layout.find_partition(dev)
        if hit:
            return [hit[0].dev]
        if layout.raid(dev):
            return [d for m in layout.raid_members(dev) for d in self.disks_under(layout, m)]
        lv = layout.find_logical_volume(dev)
        if lv:
            out: list[str] = []
            for pv in layout.physical_volumes(lv[0].name):
                out += [d for d in self.disks_under(layout, pv) if d not in out]
            return out
        return []


def golden_layout(facts: dict[str, Any], *, exact: bool = False) -> GoldenLayout:
    return _Builder(facts, exact).build()
