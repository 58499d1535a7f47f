"""Which disks the machine has, and which of them the install may use.

The listing comes from blkinfo (lsblk underneath); which of the disks the
install may use is agent.targets' choice.

`Probe` reads the rest of what a plan may need, only when it needs it:
each disk's WWN and /dev/disk/by-path names (for TOML disk selectors), and
what an existing partition holds (for filesystems a layout keeps), read
with `blkid -p` straight off the device, not from a cache.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sysclone.errors import SyscloneError
from sysclone.run import run


class DiskError(SyscloneError):
    pass


@dataclass(frozen=True)
class Disk:
    name: str  # vda
    size: int  # bytes
    model: str = ""
    serial: str = ""
    transport: str = ""
    rotational: bool = False
    removable: bool = False
    readonly: bool = False
    in_use: bool = False  # has a mounted filesystem
    wwn: str = ""  # filled in by Probe.identify
    by_path: tuple[str, ...] = field(default=())  # /dev/disk/by-path names

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    @property
    def bus(self) -> str:
        """lsblk's transport, else what the kernel's name says (virtio
        disks have no transport)."""
        if self.transport:
            return self.transport
        for prefix, bus in (("vd", "virtio"), ("xvd", "xen"), ("nvme", "nvme"),
                            ("mmcblk", "mmc"), ("hd", "ata")):
            if self.name.startswith(prefix):
                return bus
        return ""

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "size": self.size, "model": self.model,
                                  "serial": self.serial, "transport": self.transport}
        if self.wwn:
            out["wwn"] = self.wwn
        return out


def _natural(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _mounted(node: Mapping[str, Any]) -> bool:
    if node.get("mountpoint"):
        return True
    return any(_mounted(c) for c in node.get("children", ()))


def from_blkinfo(entries: Iterable[Mapping[str, Any]]) -> list[Disk]:
    disks = []
    for e in entries:
        if e.get("type") != "disk":
            continue
        disks.append(Disk(
            name=e["name"], size=int(e.get("size") or 0),
            model=str(e.get("model") or "").strip(), serial=str(e.get("serial") or ""),
            transport=str(e.get("tran") or ""), rotational=e.get("rota") == "1",
            removable=e.get("rm") == "1", readonly=e.get("ro") == "1", in_use=_mounted(e),
        ))
    return sorted(disks, key=lambda d: _natural(d.name))


def list_disks() -> list[Disk]:
    from blkinfo import BlkDiskInfo  # runs lsblk; imported when disks are needed

    return from_blkinfo(BlkDiskInfo().get_disks({"type": "disk"}))


BY_PATH = Path("/dev/disk/by-path")


@dataclass(frozen=True)
class Signature:
    """What `blkid -p` finds on a device: its filesystem and partition entry."""

    fstype: str = ""
    uuid: str = ""
    label: str = ""
    part_number: int | None = None
    part_start: int | None = None  # bytes from the start of the disk
    part_size: int | None = None  # bytes

    @classmethod
    def parse(cls, text: str) -> Signature:
        v = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        def number(key: str, scale: int = 1) -> int | None:
            value = v.get(key, "")
            return int(value) * scale if value.isdigit() else None

        # blkid counts partition offsets and sizes in 512-byte sectors.
        return cls(fstype=v.get("TYPE", ""), uuid=v.get("UUID", "").lower(),
                   label=v.get("LABEL", ""), part_number=number("PART_ENTRY_NUMBER"),
                   part_start=number("PART_ENTRY_OFFSET", 512),
                   part_size=number("PART_ENTRY_SIZE", 512))


class Probe:
    """Reads devices for the plan; never writes.  A test or `sysclone layout
    plan` passes its own (see NoProbe)."""

    def signature(self, device: str) -> Signature | None:
        """None when the device does not exist; an empty Signature when it
        holds nothing blkid knows."""
        if not os.path.exists(device):
            return None
        res = run(["blkid", "-p", "-o", "export", device], check=False)
        if res.returncode not in (0, 2):  # 2: nothing found
            raise DiskError(f"blkid cannot read {device}: "
                            + (res.stderr.strip() or f"exit code {res.returncode}"))
        return Signature.parse(res.stdout)

    def identify(self, disks: list[Disk]) -> list[Disk]:
        """The disks with their WWN and by-path names."""
        if not disks:
            return disks
        res = run(["lsblk", "-J", "-d", "-o", "NAME,WWN", *(d.path for d in disks)],
                  check=False)
        wwns = {}
        if res.returncode == 0:
            for e in json.loads(res.stdout or "{}").get("blockdevices", []):
                wwns[e.get("name")] = str(e.get("wwn") or "").lower().removeprefix("0x")
        paths: dict[str, list[str]] = {}
        if BY_PATH.is_dir():
            for link in sorted(BY_PATH.iterdir()):
                if "-part" not in link.name:
                    paths.setdefault(os.path.basename(os.path.realpath(link)), []).append(
                        link.name)
        return [replace(d, wwn=wwns.get(d.name, d.wwn), by_path=tuple(paths.get(d.name, ())))
                for d in disks]


class NoProbe(Probe):
    """For plans against imagined disks: nothing exists yet on them."""

    def signature(self, device: str) -> Signature | None:
        return None

    def identify(self, disks: list[Disk]) -> list[Disk]:
        return disks
