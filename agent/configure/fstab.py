"""/etc/fstab for the installed system, every filesystem named by UUID."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.plan import FsPlan

FAT = ("vfat", "fat", "fat16", "fat32", "msdos")


@dataclass(frozen=True)
class FstabEntry:
    spec: str  # UUID=...
    mountpoint: str  # "none" for swap
    fstype: str
    options: str = "defaults"
    dump: int = 0
    passno: int = 0

    def line(self) -> str:
        return (f"{self.spec}\t{self.mountpoint}\t{self.fstype}\t{self.options}"
                f"\t{self.dump}\t{self.passno}")


HEADER = """# /etc/fstab: static file system information, written by sysclone.
# Filesystems are named by UUID so that disk order does not matter.
#
# <file system>\t<mount point>\t<type>\t<options>\t<dump>\t<pass>
"""


def render(entries: list[FstabEntry], keep: list[str] | None = None) -> str:
    """fstab text; `keep` are lines of the image's own fstab that name things
    sysclone does not manage (NFS, tmpfs, bind mounts) and are carried over."""
    body = "\n".join(e.line() for e in entries)
    extra = ""
    if keep:
        extra = "\n# kept from the image's fstab\n" + "\n".join(keep) + "\n"
    return HEADER + body + "\n" + extra


def foreign_lines(text: str, managed_mountpoints: set[str]) -> list[str]:
    """Lines of an existing fstab to keep: network/virtual filesystems that
    sysclone does not create, and that do not clash with its mountpoints."""
    keep = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        f = line.split()
        if len(f) < 3:
            continue
        spec, mp, fstype = f[0], f[1], f[2]
        if mp in managed_mountpoints or fstype == "swap":
            continue
        if spec.startswith(("UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/")):
            continue
        keep.append(line)
    return keep


def entries(filesystems: Iterable[FsPlan]) -> list[FstabEntry]:
    """One fstab line per planned filesystem, in the layout's fstab order."""
    out = []
    for f in filesystems:
        e = f.entry
        if f.fs == "swap":
            out.append(FstabEntry(f.fstab_spec, "none", "swap", "sw", 0, 0))
            continue
        passno = e.passno if e.passno is not None else (1 if f.mountpoint == "/" else 2)
        out.append(FstabEntry(f.fstab_spec, f.mountpoint or "", "vfat" if f.fs in FAT else f.fs,
                              e.mount_options, e.dump or 0, passno))
    return out


def write_fstab(filesystems: Iterable[FsPlan], root: Path) -> list[str]:
    """Write the installed system's /etc/fstab; returns the paths written."""
    fs = list(filesystems)
    old = root / "etc/fstab"
    keep = foreign_lines(old.read_text(), {f.mountpoint or "" for f in fs}) \
        if old.is_file() else []
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(render(entries(fs), keep))
    return ["/etc/fstab"]
