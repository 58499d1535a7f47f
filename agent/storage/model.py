"""The disk layout: what the client's disks must look like after install.

A faithful, typed copy of a SystemImager disks-layout file (see
systemimager.disks-layout(7), disk-layout.dtd, disks-layout.xsd): disks and
partitions, software RAID, LVM, the bootloader and the fstab lines; plus
sysclone's additions: LUKS volumes, filesystem labels and disk selectors.
Items are frozen dataclasses so a layout can be compared, hashed and safely
shared; rewriting one (e.g. renaming disks) makes a new one.

Nothing here reads files or checks cross-references: `sixml` (XML) and
`tomlform` (TOML) build a layout with schema-level checks, `validate`
checks that it makes sense.

`src_line` fields remember where an item was read, for error messages only:
they are left out of comparisons so that a layout equals its round trip.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum

from agent.storage.devices import lv_paths, partition_number, partition_path
from agent.storage.units import LvmSize, Size, Unit


def _src() -> int | None:
    # A plain default as far as type checkers go; dataclass sees the Field.
    return field(default=None, compare=False, repr=False)


class LabelType(Enum):
    MSDOS = "msdos"
    GPT = "gpt"
    CONVERT = "convert"  # turn the existing msdos table into gpt, keep partitions
    NONE = "none"  # leave the partition table as it is

    @property
    def creates_table(self) -> bool:
        """True when sysclone writes a new table and creates the partitions;
        for convert/none the listed partitions already exist."""
        return self in (LabelType.MSDOS, LabelType.GPT)


class PartType(Enum):
    PRIMARY = "primary"
    EXTENDED = "extended"
    LOGICAL = "logical"


class Flag(Enum):
    ROOT = "root"  # Mac partition tables only; a no-op on msdos/gpt
    BOOT = "boot"
    HIDDEN = "hidden"
    RAID = "raid"
    LVM = "lvm"
    LBA = "lba"
    SWAP = "swap"
    LEGACY_BOOT = "legacy_boot"
    ESP = "esp"
    BIOS_GRUB = "bios_grub"  # sysclone extension: GPT BIOS boot partition for grub


class RaidLevel(Enum):
    LINEAR = "linear"
    RAID0 = "raid0"
    RAID1 = "raid1"
    RAID4 = "raid4"
    RAID5 = "raid5"
    RAID6 = "raid6"
    RAID10 = "raid10"  # sysclone extension (mdadm supports it; the XSD does not)

    @classmethod
    def parse(cls, text: str) -> RaidLevel:
        return cls(_RAID_ALIASES.get(text, text))

    @classmethod
    def spellings(cls) -> list[str]:
        return [lv.value for lv in cls] + list(_RAID_ALIASES)

    @property
    def min_devices(self) -> int:
        """Active devices mdadm needs to create the array without --force."""
        return {RaidLevel.RAID5: 3, RaidLevel.RAID4: 3, RaidLevel.RAID6: 4}.get(self, 2)


_RAID_ALIASES = {
    "0": "raid0", "stripe": "raid0", "1": "raid1", "mirror": "raid1", "4": "raid4",
    "5": "raid5", "6": "raid6", "10": "raid10",
}


class RaidLayout(Enum):
    LEFT_ASYMMETRIC = "left-asymmetric"
    RIGHT_ASYMMETRIC = "right-asymmetric"
    LEFT_SYMMETRIC = "left-symmetric"
    RIGHT_SYMMETRIC = "right-symmetric"


class BootFlavor(Enum):
    SYSTEMD = "systemd"
    GRUB = "grub"
    GRUB2 = "grub2"
    REFIND = "rEFInd"
    CLOVER = "clover"


class InstallType(Enum):
    LEGACY = "legacy"
    EFI = "efi"


# --- filesystems -----------------------------------------------------------
FAT_FS = frozenset({"vfat", "msdos", "fat", "fat16", "fat32"})
# What the installer knows how to create (SystemImager's list plus nothing).
FORMATTABLE_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "reiserfs",
                            "ntfs", "swap"}) | FAT_FS
# Known filesystems that are only ever mounted, never created: pseudo and
# network filesystems, removable media.  (SystemImager's own example lists
# proc, sysfs, devpts and the old SUSE "subfs".)
MOUNT_ONLY_FS = frozenset({
    "proc", "sysfs", "devpts", "devtmpfs", "tmpfs", "ramfs", "securityfs", "efivarfs",
    "debugfs", "tracefs", "configfs", "cgroup", "cgroup2", "pstore", "hugetlbfs", "mqueue",
    "binfmt_misc", "usbfs", "subfs", "nfs", "nfs4", "cifs", "smb3", "iso9660", "udf",
    "auto", "none",
})
ROOT_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "jfs", "reiserfs"})
SWAP_MOUNTPOINTS = frozenset({"swap", "none"})
ESP_MOUNTPOINTS = ("/boot/efi", "/efi", "/boot")


# --- the layout ------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    number: int
    size: Size  # in the unit of its disk
    kind: PartType
    part_id: str | None = None  # msdos type byte ("8e") or gpt type code ("8300")
    name: str | None = None  # gpt partition name; SystemImager writes "-" for none
    flags: tuple[Flag, ...] = ()
    raid_dev: str | None = None  # the md array this partition is a member of
    lvm_group: str | None = None  # the volume group this partition is a PV of
    src_line: int | None = _src()

    def has(self, flag: Flag) -> bool:
        return flag in self.flags


# Partition type ids that mean the same as a flag.  On GPT, parted's `boot`
# flag *is* the ESP type, so SystemImager layouts may say boot for an ESP.
ESP_IDS = frozenset({"ef", "ef00", "c12a7328-f81f-11d2-ba4b-00a0c93ec93b"})
BIOS_BOOT_IDS = frozenset({"ef02", "21686148-6449-6e6f-744e-656564454649"})


def is_esp(label: LabelType, p: Partition) -> bool:
    return p.has(Flag.ESP) or p.part_id in ESP_IDS or (
        label is not LabelType.MSDOS and p.has(Flag.BOOT))


def is_bios_boot(p: Partition) -> bool:
    return p.has(Flag.BIOS_GRUB) or p.part_id in BIOS_BOOT_IDS


@dataclass(frozen=True)
class DiskSelector:
    """Which of the machine's disks a layout disk is (TOML layouts only;
    SystemImager XML maps disks in order).  Every field given must match;
    the plan refuses a selector that matches no disk or several."""

    size: str | None = None  # ">=100GiB", "<2T", "400G..520G" (agent.storage.selectors)
    model: str | None = None  # shell pattern, case-insensitive
    serial: str | None = None  # shell pattern
    wwn: str | None = None  # shell pattern, case-insensitive, without 0x
    bus: str | None = None  # nvme, sata, sas, scsi, usb, virtio, xen, mmc, ata
    by_path: str | None = None  # shell pattern on the /dev/disk/by-path name
    order: int | None = None  # the Nth usable disk, 1-based, in name order
    rotational: bool | None = None  # lsblk's ROTA: True for spinning disks

    FIELDS = ("size", "model", "serial", "wwn", "bus", "by_path", "order", "rotational")

    def items(self) -> list[tuple[str, str | int]]:
        return [(k, v) for k in self.FIELDS if (v := getattr(self, k)) is not None]

    def describe(self) -> str:
        # rotational as 1 or 0, as lsblk's ROTA column and si.disk write it
        return ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in self.items())


@dataclass(frozen=True)
class Disk:
    dev: str
    label: LabelType
    unit: Unit
    partitions: tuple[Partition, ...]
    select: DiskSelector | None = None
    src_line: int | None = _src()

    def partition(self, number: int) -> Partition | None:
        return next((p for p in self.partitions if p.number == number), None)

    def partition_path(self, number: int) -> str:
        return partition_path(self.dev, number)

    @property
    def extended(self) -> Partition | None:
        return next((p for p in self.partitions if p.kind is PartType.EXTENDED), None)

    @property
    def logicals(self) -> tuple[Partition, ...]:
        return tuple(p for p in self.partitions if p.kind is PartType.LOGICAL)

    @property
    def top_level(self) -> tuple[Partition, ...]:
        """Primary and extended partitions: the entries of the table itself."""
        return tuple(p for p in self.partitions if p.kind is not PartType.LOGICAL)


@dataclass(frozen=True)
class RaidArray:
    """<raid_disk>: one md array.  Its members are the partitions that name it
    in raid_dev, then the extra `devices` (whole disks, other paths, "missing")."""

    name: str  # /dev/md0
    level: RaidLevel
    raid_devices: int | None = None  # active members; default: members - spares
    spare_devices: int | None = None
    persistence: bool | None = None  # no: mdadm --build (no superblock)
    rounding: int | None = None  # KiB, raid1 only
    layout: RaidLayout | None = None  # raid5 parity algorithm
    chunk_size: str | None = None  # as mdadm --chunk takes it ("64", "64K")
    lvm_group: str | None = None  # the volume group this array is a PV of
    devices: tuple[str, ...] = ()
    metadata: str | None = None  # sysclone extension: mdadm --metadata
    src_line: int | None = _src()


@dataclass(frozen=True)
class CryptVolume:
    """A LUKS2 volume (sysclone extension): `device` encrypted, opened as
    /dev/mapper/<name>.  It may be a physical volume of an LVM group."""

    name: str
    device: str  # a partition, md array or logical volume of the layout
    lvm_group: str | None = None
    cipher: str | None = None  # cryptsetup --cipher; default cryptsetup's
    key_size: int | None = None  # bits, cryptsetup --key-size
    options: str | None = None  # extra crypttab options (discard, ...)
    src_line: int | None = _src()

    @property
    def path(self) -> str:
        return f"/dev/mapper/{self.name}"


@dataclass(frozen=True)
class LogicalVolume:
    name: str
    size: LvmSize  # `*` = all the space left in the group
    options: str | None = None  # extra lvcreate arguments, shell-quoted
    src_line: int | None = _src()


@dataclass(frozen=True)
class VolumeGroup:
    name: str
    max_log_vols: int | None = None  # 0 = no limit (vgcreate -l)
    max_phys_vols: int | None = None  # 0 = no limit (vgcreate -p)
    phys_extent_size: LvmSize | None = None  # vgcreate -s
    volumes: tuple[LogicalVolume, ...] = ()
    src_line: int | None = _src()


@dataclass(frozen=True)
class BootTarget:
    dev: str  # a disk (MBR install) or a partition
    path: str | None = None
    src_line: int | None = _src()


@dataclass(frozen=True)
class Bootloader:
    flavor: BootFlavor
    install_type: InstallType
    default_entry: str | None = None
    timeout: int | None = None
    targets: tuple[BootTarget, ...] = ()
    src_line: int | None = _src()


@dataclass(frozen=True)
class FsEntry:
    """<fsinfo>: one line of the client's fstab, and how to create its
    filesystem.  A line with only a comment is an fstab comment."""

    line: int | None = None  # fstab order (the XML attribute `line`)
    real_dev: str | None = None  # the device to format
    mount_dev: str | None = None  # what fstab names (LABEL=..., UUID=...); default real_dev
    mountpoint: str | None = None  # `mp`: a path, or "swap"
    fs: str | None = None
    mkfs_opts: str | None = None
    options: str | None = None  # mount options; None means "defaults"
    dump: int | None = None
    passno: int | None = None  # `pass`
    format: bool | None = None  # False: keep existing data; None: format if we can
    comment: str | None = None
    label: str | None = None  # sysclone extension: the filesystem label mkfs sets
    src_line: int | None = _src()

    @property
    def labels(self) -> list[str]:
        """Every label the line asks for: `label`, mount_dev's LABEL=
        (SystemImager labels the filesystems fstab names by label), and the
        label option in mkfs_opts (how SystemImager and captured layouts
        set one).  `validate` requires them to agree."""
        from agent.storage.mkfsopts import TOOL_OF_FS, split_label

        out = [self.label] if self.label is not None else []
        if self.mount_dev and self.mount_dev.startswith("LABEL="):
            out.append(self.mount_dev[len("LABEL="):])
        tool = TOOL_OF_FS.get(self.fs or "")
        if tool and self.mkfs_opts:
            try:
                opt = split_label(tool, self.mkfs_opts)[0]
            except ValueError:  # unbalanced quotes: reported by validate
                opt = None
            if opt is not None:
                out.append(opt)
        return out

    @property
    def fs_label(self) -> str | None:
        """The label the filesystem gets."""
        labels = self.labels
        return labels[0] if labels else None

    @property
    def fs_uuid(self) -> str | None:
        """The UUID fstab names it by (mount_dev UUID=...), lower-case."""
        if self.mount_dev and self.mount_dev.startswith("UUID="):
            return self.mount_dev[len("UUID="):].lower()
        return None

    @property
    def subvolume(self) -> str | None:
        """The btrfs subvolume this line mounts (options subvol=...)."""
        if self.fs != "btrfs" or not self.options:
            return None
        for opt in self.options.split(","):
            if opt.startswith("subvol="):
                return opt[len("subvol="):].strip("/") or None
        return None

    @property
    def is_comment(self) -> bool:
        return self.real_dev is None and self.mount_dev is None and self.mountpoint is None \
            and self.fs is None

    @property
    def formats(self) -> bool:
        """Will the installer create a filesystem (or swap) on real_dev?"""
        return self.fs in FORMATTABLE_FS and self.format is not False

    @property
    def fstab_device(self) -> str | None:
        return self.mount_dev or self.real_dev

    @property
    def mount_options(self) -> str:
        return self.options or "defaults"

    @property
    def is_swap(self) -> bool:
        return self.fs == "swap"


@dataclass(frozen=True)
class Layout:
    disks: tuple[Disk, ...]
    raids: tuple[RaidArray, ...] = ()
    volume_groups: tuple[VolumeGroup, ...] = ()
    lvm_version: int | None = None  # <lvm version=>; LVM metadata format, default 2
    bootloader: Bootloader | None = None
    fsinfo: tuple[FsEntry, ...] = ()
    crypts: tuple[CryptVolume, ...] = ()
    source: str = field(default="<layout>", compare=False)  # file name, for messages

    # -- queries (pure; used by validation, mapping and the installer) --
    def disk(self, dev: str) -> Disk | None:
        return next((d for d in self.disks if d.dev == dev), None)

    def partitions(self) -> Iterator[tuple[Disk, Partition]]:
        for d in self.disks:
            for p in d.partitions:
                yield d, p

    def find_partition(self, path: str) -> tuple[Disk, Partition] | None:
        for d in self.disks:
            number = partition_number(path, d.dev)
            if number is not None:
                p = d.partition(number)
                return (d, p) if p is not None else None
        return None

    def raid(self, name: str) -> RaidArray | None:
        return next((r for r in self.raids if r.name == name), None)

    def raid_members(self, name: str) -> tuple[str, ...]:
        """Member device paths: partitions naming the array, then `devices`."""
        parts = tuple(d.partition_path(p.number) for d, p in self.partitions()
                      if p.raid_dev == name)
        r = self.raid(name)
        return parts + (r.devices if r else ())

    def volume_group(self, name: str) -> VolumeGroup | None:
        return next((g for g in self.volume_groups if g.name == name), None)

    def physical_volumes(self, vg: str) -> tuple[str, ...]:
        parts = tuple(d.partition_path(p.number) for d, p in self.partitions()
                      if p.lvm_group == vg)
        return parts + tuple(r.name for r in self.raids if r.lvm_group == vg) + \
            tuple(c.path for c in self.crypts if c.lvm_group == vg)

    def crypt(self, path: str) -> CryptVolume | None:
        """The LUKS volume opened as `path` (/dev/mapper/<name>)."""
        return next((c for c in self.crypts if c.path == path), None)

    @property
    def uses_selectors(self) -> bool:
        return any(d.select is not None for d in self.disks)

    def find_logical_volume(self, path: str) -> tuple[VolumeGroup, LogicalVolume] | None:
        """By /dev/vg/lv or /dev/mapper/vg-lv."""
        for g in self.volume_groups:
            for lv in g.volumes:
                if path in lv_paths(g.name, lv.name):
                    return g, lv
        return None

    def fstab(self) -> tuple[FsEntry, ...]:
        """fsinfo in fstab order: by `line`, unnumbered ones last, else as written."""
        return tuple(sorted(self.fsinfo, key=lambda e: (e.line is None, e.line or 0)))

    def mount(self, mountpoint: str) -> FsEntry | None:
        return next((e for e in self.fsinfo if e.mountpoint == mountpoint), None)
