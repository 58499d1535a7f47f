"""Reading an installed system's initramfs: what it holds, and the text of
the few configuration files that decide whether it still fits.

A Linux initramfs is one or more cpio "newc" archives, one after another,
each optionally compressed (Debian puts an uncompressed microcode archive
first, then a zstd one).  The archives are read as a stream: nothing is
unpacked to disk or held in RAM beyond the wanted files, so a 128 MiB
client can inspect a 40 MiB image.  Compressed segments are piped through a
decompressor command (the image's own zstd/xz/lz4, chrooted), except gzip,
which Python reads itself.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

NEWC = (b"070701", b"070702")
TRAILER = "TRAILER!!!"
HEADER = 110
# Magic numbers of the compressors the kernel can unpack.
MAGICS: dict[str, bytes] = {
    "gzip": b"\x1f\x8b",
    "zstd": b"\x28\xb5\x2f\xfd",
    "xz": b"\xfd7zXZ\x00",
    "lz4": b"\x02\x21\x4c\x18",
    "lzma": b"\x5d\x00\x00",
    "bzip2": b"BZh",
    "lzo": b"\x89LZO",
}

# How to decompress a segment to stdout, reading stdin.
DECOMPRESSORS: dict[str, tuple[str, ...]] = {
    "zstd": ("zstd", "-q", "-d", "-c"),
    "xz": ("xz", "-d", "-c"),
    "lzma": ("xz", "--format=lzma", "-d", "-c"),
    "lz4": ("lz4", "-d", "-c"),
    "bzip2": ("bzip2", "-d", "-c"),
    "lzo": ("lzop", "-d", "-c"),
}


class InitramfsError(SyscloneError):
    pass


@dataclass
class Listing:
    """What an initramfs holds: path -> st_mode, plus the wanted files' data."""

    files: dict[str, int] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)  # compression of each archive

    def has(self, path: str) -> bool:
        return path.lstrip("/") in self.files

    def text(self, path: str) -> str | None:
        data = self.contents.get(path.lstrip("/"))
        return None if data is None else data.decode(errors="replace")

    def to_dict(self) -> dict[str, Any]:
        """For JSON (the image server lists initrds for its clients:
        imageserver.initrdlisting); contents as hex, they are a few small
        configuration files."""
        return {"files": self.files, "segments": self.segments,
                "contents": {p: d.hex() for p, d in self.contents.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Listing:
        """The inverse of to_dict(); ValueError/TypeError/KeyError on a
        malformed one."""
        files = {str(p): int(m) for p, m in dict(d["files"]).items()}
        contents = {str(p): bytes.fromhex(h) for p, h in dict(d["contents"]).items()}
        return cls(files, contents, [str(x) for x in d["segments"]])

    def module_names(self) -> set[str]:
        """Kernel modules present (any compression), by canonical name."""
        out = set()
        for p in self.files:
            name = p.rsplit("/", 1)[-1]
            if ".ko" in name and "/modules/" in f"/{p}":
                out.add(module_name(name))
        return out


def module_name(filename: str) -> str:
    """ext4.ko.zst -> ext4, kernel/drivers/md/dm-crypt.ko -> dm_crypt, dm-mod
    -> dm_mod (kmod's canonical form)."""
    return filename.rsplit("/", 1)[-1].split(".ko", 1)[0].replace("-", "_")


Decompress = Callable[[str], list[str]]
"""compression name -> argv of a command decompressing stdin to stdout."""


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


class _Stream:
    """Bytes from a file object with a count of what was consumed."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.pos = 0

    def read(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.f.read(n - len(out))
            if not chunk:
                break
            out += chunk
        self.pos += len(out)
        return out

    def skip(self, n: int) -> None:
        left = n
        while left > 0:
            got = len(self.read(min(left, 1 << 20)))
            if got == 0:
                raise InitramfsError("truncated cpio archive")
            left -= got


def _entries(s: _Stream, first: bytes, wanted: Callable[[str], bool]
             ) -> Iterator[tuple[str, int, bytes | None]]:
    """(path, mode, data-if-wanted) for one newc archive, up to its trailer.
    `first` is the 6 magic bytes already read."""
    magic = first
    while True:
        if magic not in NEWC:
            raise InitramfsError(f"bad cpio header magic {magic!r} at offset {s.pos - 6}")
        rest = s.read(HEADER - 6)
        if len(rest) != HEADER - 6:
            raise InitramfsError("truncated cpio header")
        fields = [int(rest[i:i + 8], 16) for i in range(0, len(rest), 8)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        raw = s.read(namesize)
        s.skip(_pad4(HEADER + namesize))
        name = raw.rstrip(b"\0").decode(errors="replace")
        if name == TRAILER:
            return
        path = name.removeprefix("./").lstrip("/")
        data = None
        if filesize and wanted(path):
            data = s.read(filesize)
        else:
            s.skip(filesize)
        s.skip(_pad4(filesize))
        if path and path != ".":
            yield path, mode, data
        magic = s.read(6)


def _detect(head: bytes) -> str | None:
    for name, magic in MAGICS.items():
        if head.startswith(magic):
            return name
    return None


def read_listing(path: Path, decompress: Decompress,
                 wanted: Callable[[str], bool] = lambda p: False) -> Listing:
    """List an initramfs and keep the contents of the `wanted` paths."""
    listing = Listing()
    with path.open("rb") as f:
        _read_segments(_Stream(f), f, listing, decompress, wanted)
    return listing


def _next_head(s: _Stream) -> bytes:
    """The first 6 bytes of the next archive; archives are padded with zeros
    to a block boundary, which are skipped.  b"" at the end."""
    b = s.read(1)
    while b == b"\0":
        b = s.read(1)
    return b + s.read(5) if b else b""


def _read_segments(s: _Stream, f: IO[bytes], listing: Listing, decompress: Decompress,
                   wanted: Callable[[str], bool]) -> None:
    while True:
        head = _next_head(s)
        if not head:
            return
        if head in NEWC:
            listing.segments.append("none")
            for p, mode, data in _entries(s, head, wanted):
                listing.files[p] = mode
                if data is not None:
                    listing.contents[p] = data
            continue
        kind = _detect(head)
        if kind is None:
            raise InitramfsError(f"unknown data at offset {s.pos - 6} (not cpio, no known "
                                 "compression)")
        listing.segments.append(kind)
        # The rest of the file is the compressed stream (compressors read
        # concatenated frames; anything after it is rare and not needed).
        _read_compressed(head, f, kind, listing, decompress, wanted)
        return


def _read_compressed(head: bytes, f: IO[bytes], kind: str, listing: Listing,
                     decompress: Decompress, wanted: Callable[[str], bool]) -> None:
    if kind == "gzip":
        _read_gzip(head, f, listing, wanted)
        return
    from sysclone.run import filtered

    argv = decompress(kind)
    try:
        with filtered(argv, f, head) as out:
            _read_segments(_Stream(out), out, listing, decompress, wanted)
    except SyscloneError as e:
        raise InitramfsError(f"cannot read a {kind}-compressed initramfs with {argv[0]}: "
                             f"{e.message}") from None


class _GzipReader:
    """A file-like view of a gzip stream, decompressed as it is read."""

    def __init__(self, head: bytes, f: IO[bytes]) -> None:
        self.f = f
        self.d = zlib.decompressobj(wbits=31)
        self.buf = self.d.decompress(head)

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.f.read(1 << 16)
            if not chunk:
                self.buf += self.d.flush()
                break
            if self.d.eof:
                # A second gzip member (concatenated): start a new stream.
                rest = self.d.unused_data + chunk
                self.d = zlib.decompressobj(wbits=31)
                chunk = rest
            self.buf += self.d.decompress(chunk)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def _read_gzip(head: bytes, f: IO[bytes], listing: Listing,
               wanted: Callable[[str], bool]) -> None:
    g = _GzipReader(head, f)
    _read_segments(_Stream(g), g, listing, lambda k: [], wanted)  # type: ignore[arg-type]
