"""A reproducible writer for the cpio "newc" format the kernel unpacks.

The same staging tree always gives the same bytes: entries are sorted by
path, inode numbers are assigned in that order, owners are root, and every
mtime is one fixed value (SOURCE_DATE_EPOCH).  Permission bits are kept, but
normalized to 0755/0644 so the builder's umask cannot leak into the image.
Hard links are stored as separate files: simpler, and the kernel does not
care.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

MAGIC = b"070701"
TRAILER = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    """One archive member.  `source` is a file to copy; `data` literal bytes."""

    path: str  # relative, no leading slash
    mode: int  # full st_mode (type + permissions)
    data: bytes = b""
    source: Path | None = None
    rdev: tuple[int, int] = (0, 0)

    @property
    def size(self) -> int:
        if self.source is not None:
            return self.source.stat().st_size
        return len(self.data)


def _normal_mode(st_mode: int) -> int:
    kind = stat.S_IFMT(st_mode)
    if kind == stat.S_IFDIR:
        return kind | 0o755
    if kind == stat.S_IFLNK:
        return kind | 0o777
    perm = 0o755 if st_mode & 0o111 else 0o644
    return kind | perm


def scan_tree(top: Path) -> Iterator[Entry]:
    """Entries for every file, directory and symlink below `top`."""
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(dirnames + filenames):
            p = base / name
            st = p.lstat()
            rel = p.relative_to(top).as_posix()
            if stat.S_ISLNK(st.st_mode):
                yield Entry(rel, _normal_mode(st.st_mode), data=os.readlink(p).encode())
            elif stat.S_ISDIR(st.st_mode):
                yield Entry(rel, _normal_mode(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                yield Entry(rel, _normal_mode(st.st_mode), source=p)
            else:
                raise ValueError(f"unsupported file type in initramfs staging tree: {p}")


def char_device(path: str, major: int, minor: int, perm: int = 0o600) -> Entry:
    return Entry(path, stat.S_IFCHR | perm, rdev=(major, minor))


def _header(ino: int, e: Entry, size: int, mtime: int, namesize: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, mtime, size, 0, 0, e.rdev[0], e.rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def write_archive(out: BinaryIO, entries: Iterable[Entry], mtime: int = 0) -> int:
    """Write a newc archive of `entries` (sorted here) and return its size."""
    written = 0
    ordered = sorted(entries, key=lambda e: e.path)
    seen: set[str] = set()
    for ino, e in enumerate(ordered, start=1):
        if e.path in seen:
            raise ValueError(f"duplicate initramfs entry: {e.path}")
        seen.add(e.path)
        name = e.path.encode() + b"\0"
        data = e.data
        if e.source is not None:
            data = e.source.read_bytes()
        hdr = _header(ino, e, len(data), mtime, len(name))
        chunk = hdr + name + _pad(len(hdr) + len(name)) + data + _pad(len(data))
        out.write(chunk)
        written += len(chunk)
    trailer_name = TRAILER.encode() + b"\0"
    hdr = MAGIC + b"".join(
        b"%08X" % f for f in (0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, len(trailer_name), 0)
    )
    chunk = hdr + trailer_name + _pad(len(hdr) + len(trailer_name))
    out.write(chunk)
    written += len(chunk)
    # The kernel reads archives in 512-byte blocks; pad like cpio(1) does.
    tail = (512 - written % 512) % 512
    out.write(b"\0" * tail)
    return written + tail


def read_archive(data: bytes) -> Iterator[tuple[str, int, bytes]]:
    """Parse a newc archive: (path, mode, data) per member.  Used by tests and
    the manifest check; it is the inverse of write_archive."""
    pos = 0
    while pos < len(data):
        if data[pos : pos + 6] != MAGIC:
            raise ValueError(f"bad cpio magic at offset {pos}")
        f = [int(data[pos + 6 + 8 * i : pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = f[1], f[6], f[11]
        name_start = pos + 110
        name = data[name_start : name_start + namesize - 1].decode()
        body = name_start + namesize
        body += (4 - body % 4) % 4
        if name == TRAILER:
            return
        yield name, mode, data[body : body + size]
        pos = body + size
        pos += (4 - pos % 4) % 4
