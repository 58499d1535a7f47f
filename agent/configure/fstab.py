"""/etc/fstab for the installed system, as the layout's fsinfo lines say.

Every filesystem the install made or kept is named by what the layout's
mount_dev says (LABEL=..., UUID=..., a device), else by the UUID the plan
gave it; its options, dump and pass are the layout's.  The layout's other
lines (pseudo and network filesystems, removable media) and its comments
are written as they are, in the layout's order; then the image's own lines
for things sysclone does not manage.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.plan import FsPlan
    from agent.storage.model import FsEntry, Layout

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


# SUSE's long-gone automounter: no kernel has it, and a line for it would
# make the installed system's boot fail.  Written commented out.
OBSOLETE_FS = frozenset({"subfs"})


def render(entries: list[FstabEntry | str], keep: list[str] | None = None) -> str:
    """fstab text (a str entry is a line as it is); `keep` are lines of the
    image's own fstab that name things sysclone does not manage (NFS, tmpfs,
    bind mounts) and are carried over."""
    body = "\n".join(e if isinstance(e, str) else e.line() for e in entries)
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


def _entry(f: FsPlan) -> FstabEntry:
    e = f.entry
    if f.fs == "swap":
        return FstabEntry(f.fstab_spec, "none", "swap", e.options or "sw", e.dump or 0,
                          e.passno or 0)
    passno = e.passno if e.passno is not None else (1 if f.mountpoint == "/" else 2)
    return FstabEntry(f.fstab_spec, f.mountpoint or "", "vfat" if f.fs in FAT else f.fs,
                      e.mount_options, e.dump or 0, passno)


def _as_written(e: FsEntry) -> FstabEntry | str | None:
    """A layout line sysclone neither makes nor keeps, as the layout has it."""
    if e.is_comment:
        text = (e.comment or "").strip()
        return None if not text else (text if text.startswith("#") else f"# {text}")
    if not (e.fstab_device and e.mountpoint and e.fs):
        return None
    mp = "none" if e.mountpoint == "swap" else e.mountpoint
    line = FstabEntry(e.fstab_device, mp, e.fs, e.mount_options, e.dump or 0, e.passno or 0)
    if e.fs in OBSOLETE_FS:
        return f"# {e.fs} no longer exists: {line.line()}"
    return line


def entries(filesystems: Iterable[FsPlan], layout: Layout | None = None
            ) -> list[FstabEntry | str]:
    """One fstab line per planned filesystem and, with the layout, per other
    fsinfo line, in the layout's fstab order."""
    plans = list(filesystems)
    if layout is None:
        return [_entry(f) for f in plans]
    out: list[FstabEntry | str] = []
    for e in layout.fstab():
        f = next((p for p in plans if p.entry is e), None) or \
            next((p for p in plans if p.entry == e), None)
        line = _entry(f) if f is not None else _as_written(e)
        if line is not None:
            out.append(line)
    return out


def write_fstab(filesystems: Iterable[FsPlan], root: Path,
                layout: Layout | None = None) -> list[str]:
    """Write the installed system's /etc/fstab; returns the paths written."""
    fs = list(filesystems)
    lines = entries(fs, layout)
    managed = {f.mountpoint or "" for f in fs} | \
        {e.mountpoint for e in (layout.fsinfo if layout else ()) if e.mountpoint}
    old = root / "etc/fstab"
    keep = foreign_lines(old.read_text(), managed) if old.is_file() else []
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_text(render(lines, keep))
    return ["/etc/fstab"]
