"""Which disks the machine has, and which of them the install may use.

The listing comes from blkinfo (lsblk underneath).  Read-only, removable,
empty and in-use disks are left out unless named explicitly with si.disk:
a USB stick the machine booted from must not become its system disk.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)


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

    @property
    def path(self) -> str:
        return f"/dev/{self.name}"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "size": self.size, "model": self.model,
                "serial": self.serial, "transport": self.transport}


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


def install_targets(disks: list[Disk], wanted: Iterable[str] = ()) -> list[Disk]:
    """The disks the layout's disks map onto, in order."""
    wanted = [w.removeprefix("/dev/") for w in wanted]
    if wanted:
        by_name = {d.name: d for d in disks}
        missing = [w for w in wanted if w not in by_name]
        if missing:
            raise DiskError(f"si.disk: no disk named {', '.join(missing)}",
                            hint="found " + (", ".join(by_name) or "no disks"))
        chosen = [by_name[w] for w in wanted]
        ro = [d.name for d in chosen if d.readonly]
        if ro:
            raise DiskError(f"si.disk: {', '.join(ro)} is read-only")
        return chosen
    usable = [d for d in disks
              if d.size > 0 and not d.readonly and not d.removable and not d.in_use]
    for d in disks:
        if d not in usable:
            log.info("skipping disk %s (size=%d ro=%s removable=%s in use=%s)",
                     d.name, d.size, d.readonly, d.removable, d.in_use)
    if not usable:
        raise DiskError("no disk to install on",
                        hint="found " + (", ".join(d.name for d in disks) or "none")
                        + "; name one with si.disk=")
    return usable
