"""FAT filesystems made and filled without mounting anything: mkfs.vfat
writes them (into a file of their own, or at an offset inside a disk
image) and mtools copies files in and reads them back.  The host kernel
need not know vfat, and nothing here needs root.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import ConfigError
from sysclone.run import output, run

# mtools refuses images whose geometry is not a floppy's unless told not to.
MTOOLS_ENV = {"MTOOLS_SKIP_CHECK": "1"}
_LABEL = re.compile(r"[A-Z0-9_-]{1,11}\Z")
_VOLID = re.compile(r"[0-9A-F]{8}\Z")


@dataclass(frozen=True)
class Fat:
    """A FAT filesystem in `image`, starting `offset` bytes in."""

    image: Path
    offset: int = 0

    @property
    def spec(self) -> str:
        """How mtools names it: FILE or FILE@@OFFSET."""
        return f"{self.image}@@{self.offset}" if self.offset else str(self.image)

    def make(self, size: int, label: str, volume_id: str) -> Fat:
        """mkfs.vfat over `size` bytes (in a new file when offset is 0)."""
        if not _LABEL.match(label):
            raise ConfigError(f"FAT label {label!r}: at most 11 of A-Z, 0-9, '_' and '-'")
        if not _VOLID.match(volume_id):
            raise ConfigError(f"FAT volume id {volume_id!r}: 8 upper-case hex digits")
        if size % 1024:
            raise ValueError("a FAT size is a whole number of KiB")
        argv = ["mkfs.vfat", "-n", label, "-i", volume_id]
        if self.offset:
            if self.offset % 512:
                raise ValueError("a partition starts on a sector")
            argv += [f"--offset={self.offset // 512}", str(self.image), str(size // 1024)]
        else:
            self.image.unlink(missing_ok=True)
            argv += ["-C", str(self.image), str(size // 1024)]
        run(argv)
        return self

    def mkdir(self, *paths: str) -> None:
        run(["mmd", "-D", "s", "-i", self.spec, *(f"::{p}" for p in paths)], env=MTOOLS_ENV)

    def put(self, src: Path, dest: str) -> None:
        run(["mcopy", "-o", "-i", self.spec, str(src), f"::{dest}"], env=MTOOLS_ENV)

    def put_bytes(self, data: bytes, dest: str) -> None:
        with tempfile.NamedTemporaryFile(prefix="sysclone-fat.") as f:
            f.write(data)
            f.flush()
            self.put(Path(f.name), dest)

    def read(self, path: str) -> bytes:
        with tempfile.TemporaryDirectory(prefix="sysclone-fat.") as d:
            out = Path(d) / "file"
            run(["mcopy", "-n", "-i", self.spec, f"::{path}", str(out)], env=MTOOLS_ENV)
            return out.read_bytes()

    def listing(self, path: str = "/") -> list[str]:
        """Every file below `path` (hidden ones too), as /EFI/BOOT/BOOTX64.EFI."""
        text = output(["mdir", "-/", "-b", "-a", "-i", self.spec, f"::{path}"], env=MTOOLS_ENV)
        return sorted(line.strip().removeprefix("::") for line in text.splitlines()
                      if line.strip() and not line.strip().endswith("/"))


def fat_size(payload: int, slack: int = 8 << 20) -> int:
    """A FAT size for `payload` bytes of files: room for the filesystem's
    own tables and some slack, rounded up to a MiB."""
    raw = int(payload * 1.05) + slack
    return -(-raw // (1 << 20)) * (1 << 20)
