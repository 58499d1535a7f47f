"""How version trees share what did not change, by the store's filesystem.

    hardlink        (ext4, xfs, anything)  each version is a plain tree;
                    unchanged files are hard links into the previous version
                    (rsync --link-dest, or imageserver.dedupe afterwards).
                    Directories cannot be hard-linked: every version pays
                    for its own (about 4 KiB each on ext4; on xfs small
                    directories live inside their 512-byte inode).
    btrfs-snapshot  (btrfs)  each version is a subvolume: a new one starts
                    as a writable snapshot of the tree it derives from, is
                    brought up to date in place (only changed files are
                    rewritten; directories, inodes and data stay shared
                    copy-on-write), and is made read-only once recorded,
                    so "a stored version never changes" is enforced by the
                    kernel, not only checked by `image verify`.

xfs keeps hard links: its reflinks share data but not inodes, so a
reflinked copy of a tree costs more than a hard-linked one.

The filesystem is read with statfs(2) (its magic number): no command runs
to find out, so a store on a plain directory behaves exactly as before.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import output, run

HARDLINK = "hardlink"
SNAPSHOT = "btrfs-snapshot"
MODES = (HARDLINK, SNAPSHOT)

BTRFS_MAGIC = 0x9123683E
_FS_NAMES = {BTRFS_MAGIC: "btrfs", 0x58465342: "xfs", 0xEF53: "ext4", 0x01021994: "tmpfs",
             0x794C7630: "overlayfs", 0x2FC12FC1: "zfs", 0x6969: "nfs"}
SUBVOLUME_INO = 256  # a btrfs subvolume's top directory (BTRFS_FIRST_FREE_OBJECTID)
FICLONE = 0x40049409  # _IOW(0x94, 9, int): share a whole file's extents


class _Statfs(ctypes.Structure):
    # Only f_type is read; it comes first in struct statfs on every Linux
    # ABI, as a long.  The padding covers the rest of the structure.
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 248)]


_libc: ctypes.CDLL | None = None


def fs_magic(path: Path) -> int:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)  # the C library Python itself uses
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), os.fspath(path))
    return buf.f_type & 0xFFFFFFFF


def fs_name(path: Path) -> str:
    magic = fs_magic(path)
    return _FS_NAMES.get(magic, f"0x{magic:x}")


def mode_for(path: Path) -> str:
    """How new versions are stored below `path` (an existing directory)."""
    return SNAPSHOT if fs_magic(path) == BTRFS_MAGIC else HARDLINK


def is_subvolume(path: Path) -> bool:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    return st.st_ino == SUBVOLUME_INO and os.path.isdir(path) and not os.path.islink(path) \
        and fs_magic(path) == BTRFS_MAGIC


# -- btrfs subvolumes -----------------------------------------------------------
def create(path: Path) -> None:
    run(["btrfs", "subvolume", "create", str(path)])


def snapshot(source: Path, dest: Path) -> None:
    """A writable snapshot of `source` at `dest`.  A source that is no
    subvolume (a tree stored before snapshots) is copied into a new one with
    reflinks: data shared, the tree's own metadata paid once."""
    if is_subvolume(source):
        run(["btrfs", "subvolume", "snapshot", str(source), str(dest)])
        return
    create(dest)
    run(["cp", "-a", "--reflink=always", f"{source}/.", f"{dest}/"])


def without_atime(path: Path) -> None:
    """Mount `path` on itself with noatime, while it is being filled.  In a
    writable snapshot every inode is shared with the version it came from
    until written; with atime updates on, rsync's readlink of each unchanged
    symlink (and our own walk's) would rewrite its inode -- megabytes of
    metadata per version for nothing.  Undone by release()."""
    run(["mount", "--bind", str(path), str(path)])
    run(["mount", "-o", "remount,bind,noatime", str(path)])


def release(path: Path) -> None:
    """Undo without_atime(), if it is in place."""
    if _mounted(path) and run(["umount", str(path)], check=False).returncode != 0:
        run(["umount", "-l", str(path)], check=False)  # busy: detach it at least


def _mounted(path: Path) -> bool:
    """A mount point?  (os.path.ismount says yes to every subvolume: each
    has a device number of its own.)"""
    want = os.path.realpath(path)
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            if point == want:
                return True
    return False


def freeze(path: Path) -> None:
    run(["btrfs", "property", "set", "-ts", str(path), "ro", "true"])


def is_frozen(path: Path) -> bool:
    out = output(["btrfs", "property", "get", "-ts", str(path), "ro"]).strip()
    return out == "ro=true"


def delete(path: Path) -> None:
    # --commit-after: the space is accounted as free when this returns, so
    # a prune that was run to make room has made it.
    run(["btrfs", "subvolume", "delete", "--commit-after", str(path)])


def remove_tree(path: Path) -> None:
    """rm -rf that also deletes the subvolumes below `path` (version trees
    and half-made snapshots; deleting one needs no read-write flag)."""
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        path.unlink()
        return
    if fs_magic(path) == BTRFS_MAGIC:
        for sub in _subvolumes_below(path):
            delete(sub)
    if path.exists():
        shutil.rmtree(path)


def _subvolumes_below(path: Path) -> list[Path]:
    """Subvolumes at or below `path`, deepest first; a subvolume's own
    contents are not searched (deleting it takes them along)."""
    found: list[Path] = []
    for dirpath, dirnames, _ in os.walk(path):
        d = Path(dirpath)
        if os.lstat(d).st_ino == SUBVOLUME_INO:
            found.append(d)
            dirnames.clear()
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def clone(source: str, dest: str) -> bool:
    """Make `dest` share `source`'s data extents (same content already);
    False where the filesystem cannot (no reflinks, another filesystem).
    The inode, its owner, mode, xattrs and times stay dest's own."""
    st = os.lstat(dest)
    try:
        with open(source, "rb") as src, open(dest, "r+b") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY):
            return False
        raise
    os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
    return True


def data_use(path: Path) -> int:
    """Allocated data bytes below `path` on btrfs, extents shared between
    snapshots counted once (`btrfs filesystem du`: exclusive + set shared).
    Metadata is not in it; a filesystem-wide figure is `btrfs filesystem
    usage`."""
    run(["btrfs", "filesystem", "sync", str(path)])  # data still in memory has no extents
    out = output(["btrfs", "filesystem", "du", "-s", "--raw", str(path)])
    for line in out.splitlines()[1:]:
        fields = line.split(None, 3)
        if len(fields) == 4 and fields[0].isdigit():
            return int(fields[1]) + int(fields[2])
    raise SyscloneError(f"btrfs filesystem du {path}: unexpected output {out[:200]!r}")
