"""The install plan: everything decided, checked, and shown before any disk
is touched.

A plan combines the instructions from the server (image, layout), the
machine (its disks, its firmware) and the install parameters.  `make_plan`
raises a ConfigError naming what is wrong when the plan cannot work: an
unknown layout feature, too few or too small disks, an image that does not
fit its filesystems, a filesystem the boot environment cannot create.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.disks import Disk
from agent.fetch import rsync_url
from agent.storage.defaults import default_layout
from agent.storage.geometry import PlannedPartition, plan_partitions
from agent.storage.mapping import map_disks
from agent.storage.model import MOUNT_ONLY_FS, FsEntry, InstallType, Layout
from agent.storage.sixml import parse_layout
from agent.storage.validate import validate
from sysclone.errors import ConfigError
from sysclone.run import which

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

    @property
    def url(self) -> str:
        return rsync_url(self.server, self.rsync_port, self.module)


@dataclass(frozen=True)
class DiskPlan:
    disk: Disk
    label: str  # gpt | msdos
    partitions: tuple[PlannedPartition, ...]


@dataclass(frozen=True)
class FsPlan:
    entry: FsEntry
    device: str
    fs: str
    uuid: str
    mountpoint: str | None  # None for swap
    size: int  # bytes of the device
    needs: int  # bytes of the image that land here

    @property
    def fstab_spec(self) -> str:
        return f"UUID={self.uuid}"


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

    @property
    def mounts(self) -> list[FsPlan]:
        """Filesystems to mount, parents before children."""
        return sorted((f for f in self.filesystems if f.mountpoint),
                      key=lambda f: (f.mountpoint or "").count("/") if f.mountpoint != "/"
                      else 0)

    def describe(self) -> str:
        lines = [f"install image {self.image.name} from {self.image.url} as {self.hostname}",
                 f"  firmware {self.firmware}, layout {self.layout_name}"]
        for d in self.disks:
            lines.append(f"  disk {d.disk.path} ({d.disk.size / 2**30:.1f} GiB, {d.label})")
            for p in d.partitions:
                flags = ",".join(f.value for f in p.partition.flags)
                lines.append(f"    {p.device:<16} {p.size / MiB:>10,.0f} MiB "
                             f"{p.kind.value:<8} {flags}")
        for f in self.filesystems:
            need = f"  image {f.needs / MiB:,.0f} MiB" if f.needs else ""
            lines.append(f"  {f.device:<16} {f.fs:<6} {f.mountpoint or 'swap':<12} "
                         f"UUID={f.uuid}{need}")
        lines.append(f"  bootloader: {'UEFI' if self.firmware == 'uefi' else 'BIOS'} on "
                     + ", ".join(self.boot_disks))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "hostname": self.hostname, "image": self.image.name, "layout": self.layout_name,
            "firmware": self.firmware,
            "disks": [{"disk": d.disk.path, "size": d.disk.size, "label": d.label,
                       "partitions": [{"device": p.device, "start": p.start, "size": p.size}
                                      for p in d.partitions]} for d in self.disks],
            "filesystems": [{"device": f.device, "fs": f.fs, "mountpoint": f.mountpoint,
                             "uuid": f.uuid, "needs": f.needs} for f in self.filesystems],
        }


def firmware() -> str:
    return "uefi" if Path("/sys/firmware/efi").is_dir() else "bios"


def default_swap_mib(disk_bytes: int, ram_bytes: int) -> int:
    """Swap as big as RAM, between 256 MiB and 2 GiB, at most 1/8 of the disk."""
    want = min(max(ram_bytes // MiB, 256), 2048)
    return int(min(want, disk_bytes // MiB // 8))


def load_layout(instr_layout: dict[str, Any] | None, first_disk: Disk, fw: str,
                ram_bytes: int) -> tuple[Layout, str]:
    if instr_layout:
        if instr_layout.get("format") != "systemimager-xml":
            raise ConfigError(f"layout {instr_layout.get('name')}: unknown format "
                              f"{instr_layout.get('format')!r}")
        name = str(instr_layout.get("name") or "server layout")
        layout = parse_layout(instr_layout["text"], name)
    else:
        name = f"built-in default ({fw}, gpt)"
        layout = default_layout(first_disk.path, firmware=fw, label="gpt", root_fs="ext4",
                                swap_mib=default_swap_mib(first_disk.size, ram_bytes))
    validate(layout)
    return layout, name


def _exclusive_usage(usage: dict[str, int], mountpoints: list[str]) -> dict[str, int]:
    """Bytes of the image under each mountpoint, minus deeper mountpoints'."""
    out = {}
    for mp in mountpoints:
        total = usage.get(mp)
        if total is None:
            # Deeper than the server's usage map: its data is counted in its parent.
            out[mp] = 0
            continue
        inner = [m for m in mountpoints if m != mp and (mp == "/" or m.startswith(mp + "/"))]
        # Only the outermost of nested children is subtracted.
        outer = [m for m in inner if not any(o != m and m.startswith(o + "/") for o in inner)]
        out[mp] = max(0, total - sum(usage.get(m, 0) for m in outer))
    return out


def _fs_capacity(fs: str, size: int) -> int:
    return int(size * FS_USABLE.get(fs, 0.97)) - (FS_FIXED_OVERHEAD if fs in FS_USABLE else 0)


def _new_uuid(fs: str) -> str:
    if fs in ("vfat", "fat", "fat16", "fat32", "msdos"):
        v = uuid.uuid4().hex[:8].upper()
        return f"{v[:4]}-{v[4:]}"
    return str(uuid.uuid4())


def make_plan(*, instructions: dict[str, Any], server: str, hostname: str,
              targets: list[Disk], fw: str, ram_bytes: int,
              have_tool: Any = which) -> InstallPlan:
    img = instructions.get("image") or {}
    if not img.get("name"):
        raise ConfigError("the server's instructions name no image")
    image = ImageRef(name=img["name"], module=img.get("module") or img["name"], server=server,
                     rsync_port=int(img.get("rsync_port") or 873), bytes=img.get("bytes"),
                     files=img.get("files"), usage=dict(img.get("usage") or {}),
                     transfer_bytes=img.get("transfer_bytes"))
    layout, layout_name = load_layout(instructions.get("layout"), targets[0], fw, ram_bytes)
    if layout.raids or layout.volume_groups:
        raise ConfigError(f"layout {layout_name}: software RAID and LVM are not supported by "
                          "this agent yet", hint="use a layout with plain partitions")
    if len(targets) < len(layout.disks):
        raise ConfigError(f"layout {layout_name} needs {len(layout.disks)} disks, this machine "
                          f"has {len(targets)} usable: "
                          + ", ".join(d.path for d in targets))
    targets = targets[: len(layout.disks)]
    layout = map_disks(layout, [d.path for d in targets])
    disk_plans = []
    sizes: dict[str, int] = {}
    for ld, disk in zip(layout.disks, targets, strict=True):
        parts = tuple(plan_partitions(ld, disk.size))
        disk_plans.append(DiskPlan(disk, ld.label.value, parts))
        sizes.update({p.device: p.size for p in parts})

    # Pseudo, network and removable-media lines (proc, nfs, a DVD drive) are
    # mounted by the installed system, never created here.
    entries = [e for e in layout.fstab() if not e.is_comment and e.real_dev
               and (e.fs or "").lower() not in MOUNT_ONLY_FS]
    mps = [e.mountpoint for e in entries if e.mountpoint and e.mountpoint.startswith("/")]
    if "/" not in mps:
        raise ConfigError(f"layout {layout_name}: no filesystem is mounted on /")
    needs = _exclusive_usage(image.usage, mps)
    fs_plans = []
    for e in entries:
        fs = (e.fs or "").lower()
        if not e.formats:
            raise ConfigError(f"layout {layout_name}: {e.real_dev} ({fs}) would not be "
                              "formatted; keeping existing data is not supported yet")
        tool = MKFS_TOOLS.get(fs)
        if tool is None:
            raise ConfigError(f"layout {layout_name}: filesystem {fs!r} on {e.real_dev} is not "
                              "supported", hint="use one of " + ", ".join(sorted(MKFS_TOOLS)))
        if not have_tool(tool):
            raise ConfigError(f"this boot environment cannot create {fs} ({tool} is missing)",
                              hint="rebuild it with the tool group for " + fs)
        assert e.real_dev is not None
        size = sizes.get(e.real_dev)
        if size is None:
            raise ConfigError(f"layout {layout_name}: {e.real_dev} is not a partition the "
                              "layout creates")
        mp = e.mountpoint if e.mountpoint and e.mountpoint.startswith("/") else None
        need = int(needs.get(mp, 0) * IMAGE_GROWTH) if mp else 0
        if mp and fs in FS_USABLE and need > _fs_capacity(fs, size):
            raise ConfigError(
                f"the image does not fit: {mp} needs {need / MiB:,.0f} MiB of image data but "
                f"{e.real_dev} ({size / MiB:,.0f} MiB {fs}) holds about "
                f"{max(0, _fs_capacity(fs, size)) / MiB:,.0f} MiB",
                hint="use a bigger disk or a layout with more room for " + mp)
        fs_plans.append(FsPlan(e, e.real_dev, fs, _new_uuid(fs), mp, size, need))

    bl = layout.bootloader
    notes = []
    if bl and bl.install_type is InstallType.EFI and fw == "bios":
        notes.append("layout asks for an EFI bootloader but the machine booted BIOS: "
                     "installing for EFI anyway")
    boot_fw = fw
    if bl:
        boot_fw = "uefi" if bl.install_type is InstallType.EFI else "bios"
    boot_disks = tuple(t.dev for t in bl.targets) if bl and bl.targets else (targets[0].path,)
    if boot_fw == "bios":
        boot_disks = tuple(d for d in boot_disks if d in {t.path for t in targets}) or \
            (targets[0].path,)
    return InstallPlan(hostname=hostname, image=image, layout=layout, layout_name=layout_name,
                       disks=tuple(disk_plans), filesystems=tuple(fs_plans), firmware=boot_fw,
                       boot_disks=boot_disks,
                       overrides=tuple(instructions.get("overrides") or ()),
                       notes=tuple(notes))
