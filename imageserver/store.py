"""The image store: one plain, chroot-able directory tree per image.

Images live in ROOT/images/<name>/ exactly as SystemImager kept them in
/var/lib/systemimager/images/<name>; what sysclone knows about an image
(its origin, size, per-directory usage for the client's fit check) is kept
beside it in ROOT/images/<name>.json, outside the tree clients receive.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}\Z")  # \Z: no trailing newline

# Usage is summed per directory down to this depth: deep enough to cover any
# sane mount layout (/, /usr, /var/lib, /srv/data) for the client's fit check.
USAGE_DEPTH = 3


def check_name(name: str) -> str:
    if not _NAME.match(name) or name in (".", ".."):
        raise ConfigError(f"image name {name!r} is not valid",
                          hint="use letters, digits, '.', '_', '+' or '-', at most 64")
    return name


@dataclass(frozen=True)
class ImageUsage:
    bytes: int  # allocated bytes, hard links counted once
    files: int
    by_dir: dict[str, int]  # "/usr" -> bytes below it (depth <= USAGE_DEPTH)
    # What rsync counts while transferring: file sizes (sparse files at full
    # length), hard links once.  Progress percentages are of this.
    transfer: int = 0


@dataclass(frozen=True)
class ImageInfo:
    name: str
    created: float
    origin: str  # bootstrap | capture
    details: dict[str, Any] = field(default_factory=dict)
    usage: ImageUsage | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageInfo:
        d = json.loads(text)
        u = d.get("usage")
        return cls(d["name"], d["created"], d["origin"], d.get("details", {}),
                   ImageUsage(**u) if u else None)


def measure(tree: Path, depth: int = USAGE_DEPTH) -> ImageUsage:
    """Allocated size of a tree, and its split by directory."""
    seen: set[tuple[int, int]] = set()
    by_dir: dict[str, int] = {}
    total = files = transfer = 0
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        parts = [] if rel == "." else rel.split("/")
        keys = ["/" + "/".join(parts[:i]) for i in range(0, min(len(parts), depth) + 1)]
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                size = st.st_blocks * 512
            else:
                files += 1
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                size = st.st_blocks * 512
                if stat.S_ISREG(st.st_mode):
                    transfer += st.st_size
            total += size
            for k in keys:
                by_dir[k] = by_dir.get(k, 0) + size
    return ImageUsage(total, files, dict(sorted(by_dir.items())), transfer)


@dataclass(frozen=True)
class ImageStore:
    state: StateRoot

    @property
    def top(self) -> Path:
        return self.state.images

    def path(self, name: str) -> Path:
        return self.top / check_name(name)

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    def names(self) -> list[str]:
        if not self.top.is_dir():
            return []
        # lost+found: the images directory may be a filesystem of its own.
        return sorted(p.name for p in self.top.iterdir()
                      if p.is_dir() and _NAME.match(p.name) and p.name != "lost+found")

    def info(self, name: str) -> ImageInfo:
        meta = self.top / f"{check_name(name)}.json"
        if not self.exists(name):
            raise ConfigError(f"unknown image {name!r}",
                              hint="known images: " + (", ".join(self.names()) or "none"))
        if meta.is_file():
            return ImageInfo.from_json(meta.read_text())
        return self.record(name, origin="unknown")

    def record(self, name: str, origin: str, details: dict[str, Any] | None = None) -> ImageInfo:
        """(Re)measure an image and store what is known about it."""
        info = ImageInfo(name, time.time(), origin, details or {}, measure(self.path(name)))
        tmp = self.top / f".{name}.json.tmp"
        tmp.write_text(info.to_json())
        tmp.replace(self.top / f"{name}.json")
        return info

    def delete(self, name: str) -> None:
        p = self.path(name)
        if not p.is_dir():
            raise SyscloneError(f"unknown image {name!r}")
        shutil.rmtree(p)
        (self.top / f"{name}.json").unlink(missing_ok=True)
