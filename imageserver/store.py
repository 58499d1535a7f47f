"""The image store: images, their versions, and what is known about them.

Each image is a plain, chroot-able tree, as SystemImager kept them in
/var/lib/systemimager/images/<name>: `ROOT/images/<name>` is the current
version (a symlink into `.versions/`, see imageserver/versions.py, or a
plain directory for an image stored before versions existed, whose
metadata is then ROOT/images/<name>.json).

Usage figures (the client's fit check) are measured from the tree when
asked, never taken from a record that a tree edited in place would make
stale; the API server memoizes them for a few seconds.
"""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imageserver.names import NAME_HINT, ImageRef, check_name, is_name
from imageserver.versions import VersionInfo, Versions, damaged
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

__all__ = ["NAME_HINT", "ImageInfo", "ImageStore", "ImageUsage", "UsageCache", "UsageCounter",
           "check_name", "measure"]

# Usage is summed per directory down to this depth: deep enough to cover any
# sane mount layout (/, /usr, /var/lib, /srv/data) for the client's fit check.
USAGE_DEPTH = 3


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
    origin: str  # bootstrap | capture | chroot | copy | adopted | unknown
    details: dict[str, Any] = field(default_factory=dict)
    usage: ImageUsage | None = None
    version: int | None = None  # None: an image stored before versions existed
    source: str | None = None  # the golden client or directory it was captured from

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ImageInfo:
        d = json.loads(text)
        u = d.get("usage")
        return cls(d["name"], d["created"], d["origin"], d.get("details", {}),
                   ImageUsage(**u) if u else None, d.get("version"), d.get("source"))


class UsageCounter:
    """What measure() reports, summed one lstat at a time (the manifest's
    walk feeds it, so storing a version walks the tree once)."""

    def __init__(self, depth: int = USAGE_DEPTH, seen: set[tuple[int, int]] | None = None
                 ) -> None:
        self.depth = depth
        self.seen = set() if seen is None else seen
        # Bytes by the directory holding them; result() adds each to the
        # keys of its first `depth` levels (a sum per path took a fifth of
        # a capture's manifest walk).
        self.in_dir: dict[str, int] = {}
        self.total = self.files = self.transfer = 0

    def add(self, rel: str, st: os.stat_result) -> None:
        """`rel`: "/usr/bin/ls" below the tree; the tree itself is not counted."""
        if rel == "/":
            return
        mode = st.st_mode
        if not stat.S_ISDIR(mode):
            self.files += 1
            if st.st_nlink > 1:
                if (st.st_dev, st.st_ino) in self.seen:
                    return
                self.seen.add((st.st_dev, st.st_ino))
            if stat.S_ISREG(mode):
                self.transfer += st.st_size
        size = st.st_blocks * 512
        self.total += size
        parent = rel[:rel.rfind("/")]  # "" for a path right below the tree
        self.in_dir[parent] = self.in_dir.get(parent, 0) + size

    def result(self) -> ImageUsage:
        by_dir: dict[str, int] = {}
        for parent, size in self.in_dir.items():
            parts = parent.strip("/").split("/") if parent else []
            for i in range(min(len(parts), self.depth) + 1):
                k = "/" + "/".join(parts[:i])
                by_dir[k] = by_dir.get(k, 0) + size
        return ImageUsage(self.total, self.files, dict(sorted(by_dir.items())), self.transfer)


def measure(tree: Path, depth: int = USAGE_DEPTH, seen: set[tuple[int, int]] | None = None
            ) -> ImageUsage:
    """Allocated size of a tree, and its split by directory.  `seen` (inodes
    already counted) lets several trees sharing hard links be summed."""
    counter = UsageCounter(depth, seen)
    for dirpath, dirnames, filenames in os.walk(tree):
        rel = os.path.relpath(dirpath, tree)
        base = "" if rel == "." else "/" + rel
        for name in filenames + dirnames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue
            counter.add(f"{base}/{name}", st)
    return counter.result()


class UsageCache:
    """measure() results for `ttl` seconds, per tree: the API answers many
    clients booting at once without walking the image for each."""

    def __init__(self, ttl: float = 30.0) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._memo: dict[str, tuple[float, ImageUsage]] = {}

    def usage(self, tree: Path) -> ImageUsage:
        key = os.path.realpath(tree)
        now = time.monotonic()
        with self._lock:
            hit = self._memo.get(key)
            if hit and now - hit[0] < self.ttl:
                return hit[1]
        u = measure(Path(key))
        with self._lock:
            self._memo[key] = (now, u)
        return u


@dataclass(frozen=True)
class ImageStore:
    state: StateRoot
    cache: UsageCache | None = field(default=None, compare=False)

    @property
    def top(self) -> Path:
        return self.state.images

    @property
    def versions(self) -> Versions:
        return Versions(self.state)

    def path(self, name: str) -> Path:
        """The image's current tree (a stable path: it follows rollbacks)."""
        return self.top / check_name(name)

    def tree(self, ref: ImageRef) -> Path:
        """The tree of one version (the current one if none is named)."""
        if not self.exists(ref.name):
            raise self.versions.unknown(ref.name)
        return self.versions.resolve(ref)[1]

    def exists(self, name: str) -> bool:
        return self.path(name).is_dir()

    def names(self) -> list[str]:
        if not self.top.is_dir():
            return []
        # lost+found: the images directory may be a filesystem of its own.
        return sorted(p.name for p in self.top.iterdir()
                      if p.is_dir() and is_name(p.name) and p.name != "lost+found")

    def usage(self, tree: Path) -> ImageUsage:
        return self.cache.usage(tree) if self.cache else measure(tree)

    def info(self, name: str | ImageRef) -> ImageInfo:
        ref = name if isinstance(name, ImageRef) else ImageRef.parse(name)
        if not self.exists(ref.name):
            raise self.versions.unknown(ref.name)
        v = self.versions
        n, tree = v.resolve(ref)
        if n is None:
            return self._legacy_info(ref.name, tree)
        vi = v.info(ref.name, n)
        return ImageInfo(ref.name, vi.created, vi.origin, vi.details, self.usage(tree), n,
                         vi.source)

    def _legacy_info(self, name: str, tree: Path) -> ImageInfo:
        """An image from before versions, as its NAME.json says, or as its
        directory shows when it has none.  Only read: `image list` and
        friends never write into the store."""
        meta = self.top / f"{name}.json"
        if not meta.is_file():
            return ImageInfo(name, tree.stat().st_mtime, "unknown", {}, self.usage(tree))
        try:
            old = ImageInfo.from_json(meta.read_text())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            raise damaged(meta, e) from None
        return ImageInfo(old.name, old.created, old.origin, old.details, self.usage(tree))

    def describe(self, name: str | ImageRef) -> dict[str, Any]:
        """Everything known about an image or version, for `image show`."""
        info = self.info(name)
        d: dict[str, Any] = json.loads(info.to_json())
        if info.version is not None:
            v = self.versions
            vi = v.info(info.name, info.version)
            d.update({k: val for k, val in asdict(vi).items()
                      if k in ("parent", "entries", "manifest_sha256", "entries_sha256",
                               "added_bytes", "excludes", "warnings", "storage")})
            d["current"] = v.current(info.name)
            d["versions"] = v.numbers(info.name)
            vdir = v.version_dir(info.name, info.version)
            d["records"] = sorted(p.name for p in vdir.iterdir() if p.name != "tree")
        return d

    def storage(self, name: str) -> str:
        """How the current version shares files with the others (an image
        from before versions: a plain directory)."""
        n = self.versions.current(name)
        return "plain" if n is None else self.versions.info(name, n).storage

    def version_infos(self, name: str) -> list[VersionInfo]:
        check_name(name)
        if not self.exists(name):
            raise self.versions.unknown(name)
        return [self.versions.info(name, n) for n in self.versions.numbers(name)]

    def record(self, name: str, origin: str, details: dict[str, Any] | None = None) -> ImageInfo:
        """(Re)measure an image stored as a plain directory and write down
        what is known about it.  Versioned images are recorded when stored."""
        if not self.versions.is_legacy(name):
            return self.info(name)
        info = ImageInfo(name, time.time(), origin, details or {}, measure(self.path(name)))
        tmp = self.top / f".{name}.json.tmp"
        tmp.write_text(info.to_json())
        tmp.replace(self.top / f"{name}.json")
        return info

    def delete(self, name: str | ImageRef) -> None:
        ref = name if isinstance(name, ImageRef) else ImageRef.parse(name)
        v = self.versions
        if not v.exists(ref.name):
            raise ConfigError(f"unknown image {ref.name!r}")
        with v.lock(ref.name):
            if ref.version is None:
                v.remove_image(ref.name)
            else:
                v.resolve(ref)  # says which versions exist when it does not
                v.remove_version(ref.name, ref.version)

    def rollback(self, name: str, version: int) -> None:
        check_name(name)
        if not self.versions.exists(name):
            raise self.versions.unknown(name)
        with self.versions.lock(name):
            self.versions.set_current(name, version)

    def prune(self, name: str, keep: int) -> list[int]:
        """Delete all but the `keep` newest versions (and the current one)."""
        if keep < 1:
            raise ConfigError(f"--keep {keep}: keep at least one version")
        v = self.versions
        check_name(name)
        with v.lock(name):
            numbers = v.numbers(name)
            if not numbers:
                raise v.unknown(name) if not self.exists(name) else ConfigError(
                    f"image {name} has no versions to prune (it predates versions)")
            current = v.current(name)
            keep_set = set(numbers[-keep:]) | {current}
            gone = [n for n in numbers if n not in keep_set]
            for n in gone:
                v.remove_version(name, n)
        return gone

    def rename(self, old: str, new: str) -> None:
        check_name(old)
        check_name(new)
        v = self.versions
        if old == new:  # else: its own lock, taken twice, reads as another sysclone's
            raise ConfigError(f"image rename: {old!r} to the same name",
                              hint="give another NEW name")
        if not self.exists(old):
            raise v.unknown(old)
        with v.lock(old), v.lock(new):
            v.rename_image(old, new)
