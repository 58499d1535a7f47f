"""The install plan: everything decided, checked, and shown before any disk
is touched.

A plan combines the instructions from the server (image, layout), the
machine (its disks, its firmware) and the install parameters.  `make_plan`
(agent.planner) raises a ConfigError naming what is wrong when the plan
cannot work: an unknown layout feature, too few or too small disks, a
selector that matches no disk, a layout for the other firmware, volumes
that do not fit their group, an image that does not fit its filesystems, a
kept filesystem that is not the one the layout records, a tool the boot
environment lacks.

What is decided here is what the later phases do, nothing more: partition
(DiskPlan), assemble (ArrayPlan, CryptPlan, GroupPlan), format and mount
(FsPlan), configure (fstab, crypttab, mdadm.conf), and what the bootloader
and the initrd policy are told (boot_disks, esp_mountpoint, features).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.disks import Disk
from agent.fetch import rsync_url
from agent.storage.geometry import PlannedPartition
from agent.storage.model import FsEntry, Layout
from agent.targets import DiskChoice

MiB = 1 << 20

# What the boot environment can create, and the tool each needs.
MKFS_TOOLS = {"ext2": "mke2fs", "ext3": "mke2fs", "ext4": "mke2fs", "xfs": "mkfs.xfs",
              "btrfs": "mkfs.btrfs", "vfat": "mkfs.fat", "fat": "mkfs.fat",
              "fat16": "mkfs.fat", "fat32": "mkfs.fat", "msdos": "mkfs.fat",
              "swap": "mkswap"}

# Conservative share of a filesystem's size that file data can use (journal,
# inode tables, allocation groups), and the image's growth once written
# (directories and block rounding on the new filesystem).
FS_USABLE = {"ext2": 0.95, "ext3": 0.94, "ext4": 0.94, "xfs": 0.95, "btrfs": 0.90}
FS_FIXED_OVERHEAD = 64 * MiB
IMAGE_GROWTH = 1.03
# The smallest device each mkfs accepts (mkfs.xfs refuses under 300 MB).
FS_MIN = {"xfs": 300 * 10**6, "btrfs": 114 * MiB, "ext2": 2 * MiB, "ext3": 8 * MiB,
          "ext4": 8 * MiB, "vfat": MiB, "fat": MiB, "fat16": 9 * MiB, "fat32": 33 * MiB,
          "msdos": MiB, "swap": 40 * 1024}


# image.deferred (imageserver.fetchorder): directories of the image, each
# component a plain name; never under what the install needs before the
# rest (fetched while /dev, /proc, /sys are bound into the target and the
# bootloader writes /boot).
NOT_DEFERRED = frozenset({"dev", "proc", "sys", "run", "tmp", "boot", "efi", "etc"})
_DEFERRED_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*(/[A-Za-z0-9_][A-Za-z0-9_.+-]*)*")


# image.sparse (imageserver.sparsefiles): the image's sparse files, by the
# same rule, at most SPARSE_MAX of them; SPARSE_ALL (or no word, from an
# older server) means every file is fetched with rsync -S.
SPARSE_MAX = 1000
SPARSE_ALL = "all"


def deferred_path_ok(path: str) -> bool:
    """A relative path of plain names: no `.`/`..`, no leading `-`, nothing
    rsync's filter rules or a shell would read as more than a path."""
    return bool(_DEFERRED_PATH.fullmatch(path)) \
        and not any(part in (".", "..") for part in path.split("/"))


@dataclass(frozen=True)
class ImageRef:
    name: str
    module: str
    server: str
    rsync_port: int
    bytes: int | None
    files: int | None
    usage: dict[str, int]
    transfer_bytes: int | None = None  # what rsync will count as it goes
    version: int | None = None  # the image store's version this install gets
    # Directories the server lets the install fetch last (imageserver.fetchorder).
    deferred: tuple[str, ...] = ()
    # The image's sparse files (imageserver.sparsefiles), the only ones
    # fetched with rsync -S; None: not known, every file is.
    sparse: tuple[str, ...] | None = None

    @property
    def url(self) -> str:
        return rsync_url(self.server, self.rsync_port, self.module)


@dataclass(frozen=True)
class DiskPlan:
    disk: Disk
    label: str  # gpt | msdos | none (the existing table is kept)
    partitions: tuple[PlannedPartition, ...]

    @property
    def keeps_table(self) -> bool:
        return self.label == "none"


@dataclass(frozen=True)
class FsPlan:
    """One fstab line the install creates or keeps a filesystem for."""

    entry: FsEntry
    device: str
    fs: str
    uuid: str
    mountpoint: str | None  # None for swap
    size: int  # bytes of the device
    needs: int  # bytes of the image that land here
    label: str | None = None
    creates: bool = True  # mkfs runs (not for a kept one, nor a further btrfs subvolume)
    kept: bool = False  # format="no": checked on the disk, never written nor mounted now
    subvolume: str | None = None  # btrfs subvolume this line mounts
    spec: str = ""  # what fstab names it by; default UUID=<uuid>

    @property
    def fstab_spec(self) -> str:
        return self.spec or f"UUID={self.uuid}"

    @property
    def mount_options(self) -> str | None:
        """Options for mounting during the install: only what selects the
        right tree; the layout's own options are for the installed system."""
        return f"subvol={self.subvolume}" if self.subvolume else None


@dataclass(frozen=True)
class ArrayPlan:
    """An md array mdadm creates, with the UUID chosen here so that
    mdadm.conf and the initrd policy know it before it exists."""

    name: str  # /dev/md0 or /dev/md/NAME
    level: str  # raid1
    members: tuple[str, ...]  # device paths, "missing" for an absent one
    raid_devices: int
    spares: int
    metadata: str  # 1.2
    uuid: str  # mdadm's form: 8:8:8:8 hex
    homehost: str
    size: int
    chunk: str | None = None
    layout: str | None = None
    rounding: int | None = None

    @property
    def md_name(self) -> str:
        """mdadm's array name: 0 for /dev/md0, root for /dev/md/root."""
        return self.name.removeprefix("/dev/md/").removeprefix("/dev/md")


@dataclass(frozen=True)
class CryptPlan:
    name: str  # opened as /dev/mapper/<name>
    device: str
    uuid: str  # the LUKS header's, chosen here
    size: int  # bytes of the opened volume
    cipher: str | None = None
    key_size: int | None = None
    options: str | None = None  # extra crypttab options

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"


@dataclass(frozen=True)
class LvPlan:
    name: str
    path: str  # /dev/vg/lv
    size: int  # bytes
    extents: int | None  # None: all the free extents left
    options: str | None = None


@dataclass(frozen=True)
class GroupPlan:
    name: str
    pvs: tuple[str, ...]
    extent: int  # bytes
    size: int  # bytes usable for volumes
    volumes: tuple[LvPlan, ...]
    max_lv: int | None = None
    max_pv: int | None = None


@dataclass(frozen=True)
class InstallPlan:
    hostname: str
    image: ImageRef
    layout: Layout
    layout_name: str
    disks: tuple[DiskPlan, ...]
    filesystems: tuple[FsPlan, ...]
    firmware: str  # bios | uefi
    boot_disks: tuple[str, ...]
    overrides: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    # Why each of the machine's disks is used or not (agent.targets); empty
    # for a plan against imagined disks.
    disk_choice: tuple[DiskChoice, ...] = ()
    arrays: tuple[ArrayPlan, ...] = ()
    crypts: tuple[CryptPlan, ...] = ()
    groups: tuple[GroupPlan, ...] = ()
    # For the bootloader: where the ESP is mounted (UEFI), the disks under
    # a RAID1 /boot (grub goes on each), kernel arguments a generic dracut
    # initrd needs to assemble root (rd.md.uuid, rd.luks.uuid, rd.lvm.lv).
    esp_mountpoint: str | None = None
    boot_raid_disks: tuple[str, ...] = ()
    kernel_args: tuple[str, ...] = ()
    # What the root filesystem is built on (md, lvm, luks): what the
    # installed system's initrd must assemble before it can mount root.
    root_stack: frozenset[str] = frozenset()
    # LUKS keys by volume name: fetched in the plan phase, never shown.
    keys: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

    @property
    def mounts(self) -> list[FsPlan]:
        """Filesystems to mount during the install, parents before children
        (kept ones are left alone: the image's files for them stay under
        their parent, hidden once the installed system mounts them)."""
        return sorted((f for f in self.filesystems if f.mountpoint and not f.kept),
                      key=lambda f: (f.mountpoint or "").count("/") if f.mountpoint != "/"
                      else 0)

    @property
    def features(self) -> set[str]:
        """What the storage stack uses, as the initrd policy names it."""
        return ({"md"} if self.arrays else set()) | ({"lvm"} if self.groups else set()) | \
            ({"luks"} if self.crypts else set())

    @property
    def raid_levels(self) -> set[str]:
        return {a.level for a in self.arrays}

    def describe(self) -> str:
        version = f" version {self.image.version}" if self.image.version is not None else ""
        lines = [f"install image {self.image.name}{version} from {self.image.url} as "
                 f"{self.hostname}",
                 f"  firmware {self.firmware}, layout {self.layout_name}"]
        if self.disk_choice:
            lines.append("  disks of this machine:")
            lines += [f"    {c.describe()}" for c in self.disk_choice]
        for d in self.disks:
            kept = ", table kept" if d.keeps_table else ""
            lines.append(f"  disk {d.disk.path} ({d.disk.size / 2**30:.1f} GiB, "
                         f"{d.label}{kept})")
            for p in d.partitions:
                flags = ",".join(f.value for f in p.partition.flags)
                asked = f" (asked {p.asked / MiB:,.0f})" if p.asked else ""
                lines.append(f"    {p.device:<16} {p.size / MiB:>10,.0f} MiB "
                             f"{p.kind.value:<8} {flags}{asked}".rstrip())
        for a in self.arrays:
            lines.append(f"  md {a.name:<13} {a.level:<6} {a.size / MiB:>10,.0f} MiB  "
                         f"{' '.join(a.members)}  metadata {a.metadata} UUID={a.uuid}")
        for c in self.crypts:
            lines.append(f"  luks2 {c.path} on {c.device}  {c.size / MiB:,.0f} MiB  "
                         f"UUID={c.uuid}")
        for g in self.groups:
            lines.append(f"  vg {g.name} on {' '.join(g.pvs)}: {g.size / MiB:,.0f} MiB, "
                         f"extents of {g.extent / MiB:g} MiB")
            for lv in g.volumes:
                rest = " (the rest)" if lv.extents is None else ""
                lines.append(f"    lv {lv.path:<20} {lv.size / MiB:>10,.0f} MiB{rest}")
        for f in self.filesystems:
            need = f"  image {f.needs / MiB:,.0f} MiB" if f.needs else ""
            extra = "".join((f" label={f.label}" if f.label else "",
                             f" subvol={f.subvolume}" if f.subvolume else "",
                             " kept" if f.kept else ""))
            lines.append(f"  {f.device:<16} {f.fs:<6} {f.mountpoint or 'swap':<12} "
                         f"UUID={f.uuid}{extra}{need}")
        lines.append(f"  bootloader: {'UEFI' if self.firmware == 'uefi' else 'BIOS'} on "
                     + ", ".join(self.boot_disks))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname, "image": self.image.name,
            "image_version": self.image.version, "layout": self.layout_name,
            "firmware": self.firmware, "boot_disks": list(self.boot_disks),
            "disk_choice": [c.to_dict() for c in self.disk_choice],
            "disks": [{"disk": d.disk.path, "size": d.disk.size, "label": d.label,
                       "partitions": [{"device": p.device, "start": p.start, "size": p.size}
                                      for p in d.partitions]} for d in self.disks],
            "arrays": [{"name": a.name, "level": a.level, "members": list(a.members),
                        "uuid": a.uuid, "size": a.size} for a in self.arrays],
            "crypts": [{"name": c.name, "device": c.device, "uuid": c.uuid}
                       for c in self.crypts],
            "groups": [{"name": g.name, "pvs": list(g.pvs), "size": g.size,
                        "volumes": [{"name": v.name, "size": v.size} for v in g.volumes]}
                       for g in self.groups],
            "filesystems": [{"device": f.device, "fs": f.fs, "mountpoint": f.mountpoint,
                             "uuid": f.uuid, "needs": f.needs, "kept": f.kept}
                            for f in self.filesystems],
            "notes": list(self.notes),
        }


def firmware() -> str:
    return "uefi" if Path("/sys/firmware/efi").is_dir() else "bios"


def default_swap_mib(disk_bytes: int, ram_bytes: int) -> int:
    """Swap as big as RAM, between 256 MiB and 2 GiB, at most 1/8 of the disk."""
    want = min(max(ram_bytes // MiB, 256), 2048)
    return int(min(want, disk_bytes // MiB // 8))


__all__ = ["FS_FIXED_OVERHEAD", "FS_MIN", "FS_USABLE", "IMAGE_GROWTH", "MKFS_TOOLS",
           "ArrayPlan", "CryptPlan", "DiskPlan", "FsPlan", "GroupPlan", "ImageRef",
           "InstallPlan", "LvPlan", "default_swap_mib", "firmware"]
