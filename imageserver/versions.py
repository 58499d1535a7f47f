"""Versions of an image on disk, and the only code that changes them.

    ROOT/images/NAME -> .versions/NAME/3/tree    the current version (a symlink)
    ROOT/images/.versions/NAME/1/                 one stored version:
        tree/                the image, a plain chroot-able tree
        version.json         origin, time, source, excludes, usage, manifest hash
        manifest.jsonl.gz    every path with its attributes and sha256 (or
                             manifest.delta.jsonl.gz: what changed since an
                             older version, see imageserver/manifestchain.py)
        layout.xml, facts.json, modules, modaliases   (captures)
    ROOT/images/.versions/NAME/.new-XXXX/        a version being made
    ROOT/images/.versions/.numbers/NAME          the highest version number NAME
                                                 was ever given

`ROOT/images/NAME` stays a chroot-able tree of the current version for
everything that only reads it (rsyncd, the demo, tests).  A new version is
built in a staging directory on the same filesystem and only then renamed
into place, and the current-version symlink is swapped with one rename: a
failed or interrupted change leaves the store as it was.  Stored versions
are never written again.  How unchanged files are shared depends on the
filesystem (imageserver/snapshots.py): hard links between versions (rsync
--link-dest or `dedupe`), so a shared inode must never be modified in
place; or, on btrfs, each `tree` is a subvolume snapshotted from the one
it derives from and made read-only when committed.  An image made before
versions existed (a plain directory) is adopted as version 1 when its
first new version is committed.

`NAME@N` names one content for good (install instructions, updateclient,
the rsync modules refer to it): a number is never given twice, even once
its version is deleted or pruned, or the whole image deleted.  The highest
one given is kept apart from the versions (.numbers/NAME); a store from
before it has none, and its highest stored version stands for it.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from imageserver import manifestchain, snapshots
from imageserver.names import ImageRef, check_name, is_name
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot

VERSIONS = ".versions"
STAGING_PREFIX = ".new-"
NUMBERS = ".numbers"  # in .versions: no image name starts with '.'
_POINTER = re.compile(rf"^{re.escape(VERSIONS)}/([^/]+)/([1-9][0-9]*)/tree\Z")


class StoreDamage(SyscloneError):
    """A record of the store that cannot be read (a disk error, a crash
    that predates the atomic writes, a hand edit): named, never a traceback."""


DAMAGE_HINT = "restore it from a backup, or delete that version: sysclone image delete NAME@N"


def damaged(path: Path, e: BaseException) -> StoreDamage:
    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e) or type(e).__name__
    return StoreDamage(f"{path}: damaged, cannot be read ({why})", hint=DAMAGE_HINT)


@dataclass(frozen=True)
class VersionInfo:
    """What is known about one stored version (version.json)."""

    version: int
    created: float
    origin: str  # capture | bootstrap | chroot | copy | adopted
    source: str | None = None  # "root@host:22", "rsync://host/module", "/mnt/disk"
    details: dict[str, Any] = field(default_factory=dict)
    parent: int | None = None  # the version unchanged files are shared with
    usage: dict[str, Any] | None = None  # ImageUsage as a dict, when stored
    entries: int = 0  # paths in the manifest
    manifest_sha256: str | None = None  # of the manifest file
    entries_sha256: str | None = None  # of the whole list it describes (delta or not)
    added_bytes: int = 0  # allocated bytes not shared with the parent
    excludes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    storage: str = snapshots.HARDLINK  # how `tree` shares with other versions

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> VersionInfo:
        d = json.loads(text)
        known = {f for f in cls.__dataclass_fields__}
        d = {k: v for k, v in d.items() if k in known}
        d["excludes"] = tuple(d.get("excludes") or ())
        d["warnings"] = tuple(d.get("warnings") or ())
        return cls(**d)


@dataclass(frozen=True)
class Staging:
    """A version being made: fill `tree`, write the metadata files, commit."""

    name: str
    dir: Path
    parent: int | None  # the current version when staging began
    parent_tree: Path | None  # its tree (a legacy image's directory too)
    storage: str = snapshots.HARDLINK
    # The tree `tree` is a writable snapshot of (btrfs): it starts out as a
    # copy of it, sharing everything.  None: `tree` starts empty.
    seed: Path | None = None

    @property
    def tree(self) -> Path:
        return self.dir / "tree"


class Versions:
    def __init__(self, state: StateRoot) -> None:
        self.state = state
        self.top = state.images

    # -- where things are --------------------------------------------------
    def pointer(self, name: str) -> Path:
        return self.top / check_name(name)

    def vdir(self, name: str) -> Path:
        return self.top / VERSIONS / check_name(name)

    def version_dir(self, name: str, n: int) -> Path:
        return self.vdir(name) / str(n)

    def is_legacy(self, name: str) -> bool:
        p = self.pointer(name)
        return p.is_dir() and not p.is_symlink()

    def numbers(self, name: str) -> list[int]:
        d = self.vdir(name)
        if not d.is_dir():
            return []
        return sorted(int(p.name) for p in d.iterdir()
                      if p.name.isdigit() and not p.name.startswith("0")
                      and (p / "version.json").is_file())

    def current(self, name: str) -> int | None:
        """The current version, or None (no such image, or a legacy one)."""
        p = self.pointer(name)
        if not p.is_symlink():
            return None
        m = _POINTER.match(os.readlink(p))
        if not m or m.group(1) != name:
            raise SyscloneError(f"image {name}: {p} points somewhere unexpected "
                                f"({os.readlink(p)!r})", hint="fix it with `image rollback`")
        return int(m.group(2))

    def resolve(self, ref: ImageRef) -> tuple[int | None, Path]:
        """(version, tree) of a reference; version None for a legacy image."""
        if ref.version is None:
            if self.is_legacy(ref.name):
                return None, self.pointer(ref.name)
            n = self.current(ref.name)
            if n is None:
                raise self.unknown(ref.name)
            return n, self.version_dir(ref.name, n) / "tree"
        if ref.version not in self.numbers(ref.name):
            known = ", ".join(map(str, self.numbers(ref.name))) or "none"
            raise ConfigError(f"image {ref.name} has no version {ref.version}",
                              hint=f"its versions: {known}")
        return ref.version, self.version_dir(ref.name, ref.version) / "tree"

    def unknown(self, name: str) -> ConfigError:
        names = sorted(p.name for p in self.top.iterdir() if p.is_dir()) \
            if self.top.is_dir() else []
        known = [n for n in names if is_name(n) and n != "lost+found"]
        return ConfigError(f"unknown image {name!r}",
                           hint="known images: " + (", ".join(known) or "none"))

    def info(self, name: str, n: int) -> VersionInfo:
        path = self.version_dir(name, n) / "version.json"
        try:
            return VersionInfo.from_json(path.read_text())
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            # ValueError: bad JSON or UTF-8; TypeError/AttributeError: JSON of another shape.
            raise damaged(path, e) from None

    def last_number(self, name: str) -> int:
        """The highest version number `name` was ever given (0: none)."""
        mark = self.top / VERSIONS / NUMBERS / check_name(name)
        try:
            given = int(mark.read_text().strip())
        except FileNotFoundError:
            given = 0  # a store from before the mark, or a new image
        except (OSError, ValueError) as e:
            raise damaged(mark, e) from None
        return max(given, *self.numbers(name), 0)

    def _mark(self, name: str, n: int) -> None:
        """Write down that `name` was given n, before any version holds it:
        a crash in between skips a number, never reuses one."""
        marks = self.top / VERSIONS / NUMBERS
        marks.mkdir(mode=0o755, exist_ok=True)
        _write_atomic(marks / name, f"{n}\n")

    # -- changing ------------------------------------------------------------
    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """One change to an image at a time (a capture, a prune, a rename)."""
        locks = self.state.run / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"image-{check_name(name)}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                raise SyscloneError(f"image {name} is being changed by another sysclone "
                                    f"(pid {holder})", hint="wait for it to finish") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
            yield
        finally:
            os.close(fd)

    @contextmanager
    def stage(self, name: str, *, clean: bool = True, seed: Path | None = None,
              from_parent: bool = False) -> Iterator[Staging]:
        """A staging directory for a new version of `name`.  Unless it is
        committed, it is removed with any directory created for it, and the
        times of the directories that held it are put back: the store is
        left as it was, to the byte.  Hold lock(name).

        On btrfs the tree starts as a writable snapshot of `seed` (or of the
        current version, `from_parent`), else empty; elsewhere it always
        starts empty and the caller fills it (Staging.seed says which)."""
        chain = (self.top, self.top / VERSIONS, self.vdir(name))
        created = [d for d in chain if not d.exists()]
        times = {d: (st.st_atime_ns, st.st_mtime_ns) for d in chain if d.exists()
                 for st in (d.stat(),)}
        for d in created:
            d.mkdir(mode=0o755)
        if clean:
            for old in self.vdir(name).glob(STAGING_PREFIX + "*"):
                # Left by a capture that was killed: we hold the lock, nobody uses it.
                _discard(old)
        parent: int | None = None
        parent_tree: Path | None = None
        if self.is_legacy(name):
            parent_tree = self.pointer(name)
        elif self.pointer(name).is_symlink():
            parent = self.current(name)
            parent_tree = self.version_dir(name, parent) / "tree" if parent else None
        d = self.vdir(name) / f"{STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
        storage = snapshots.mode_for(self.vdir(name))
        base = parent_tree if from_parent else seed
        try:
            d.mkdir(mode=0o755)
            if storage == snapshots.SNAPSHOT and base is not None:
                snapshots.snapshot(base, d / "tree")
                snapshots.without_atime(d / "tree")
            elif storage == snapshots.SNAPSHOT:
                snapshots.create(d / "tree")
            else:
                (d / "tree").mkdir(mode=0o755)
            s = Staging(name, d, parent, parent_tree, storage,
                        base if storage == snapshots.SNAPSHOT else None)
            yield s
        finally:
            if d.exists():  # not committed
                _discard(d)
                for c in reversed(created):
                    with suppress(OSError):
                        c.rmdir()
                for t, (atime, mtime) in times.items():
                    with suppress(OSError):
                        os.utime(t, ns=(atime, mtime))

    def commit(self, s: Staging, info: VersionInfo, adopt: Staging | None = None) -> int:
        """Store a filled staging directory as the image's new current version.
        `adopt`: metadata for a legacy image, which becomes version 1."""
        vdir = self.vdir(s.name)
        base = self.last_number(s.name)
        if adopt is not None:
            if self.numbers(s.name) or not self.is_legacy(s.name):
                raise SyscloneError(f"image {s.name}: cannot adopt a legacy tree twice")
            adopt.tree.rmdir()
            os.rename(self.pointer(s.name), adopt.tree)
            os.rename(adopt.dir, vdir / "1")
            base = max(base, 1)
        elif self.is_legacy(s.name):
            raise SyscloneError(f"image {s.name} is a plain directory; adopt it first")
        n = base + 1
        self._mark(s.name, n)
        info = replace(info, version=n, storage=s.storage)
        if s.storage == snapshots.SNAPSHOT:
            snapshots.release(s.tree)
            snapshots.freeze(s.tree)  # from here on the kernel refuses changes
        _write_atomic(s.dir / "version.json", info.to_json())
        os.rename(s.dir, vdir / str(n))
        self.set_current(s.name, n)
        (self.top / f"{s.name}.json").unlink(missing_ok=True)  # legacy metadata
        return n

    def set_current(self, name: str, n: int) -> None:
        """Point NAME at version n with one rename (clients see old or new)."""
        if not self.exists(name):
            raise self.unknown(name)
        if n not in self.numbers(name):
            raise ConfigError(f"image {name} has no version {n}",
                              hint="its versions: "
                                   + (", ".join(map(str, self.numbers(name))) or "none"))
        tmp = self.top / f".{name}.pointer.tmp"
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(f"{VERSIONS}/{name}/{n}/tree")
        os.replace(tmp, self.pointer(name))

    def remove_version(self, name: str, n: int) -> None:
        if n == self.current(name):
            raise ConfigError(f"version {n} is the current version of {name}",
                              hint="roll back to another version first")
        d = self.version_dir(name, n)
        for other in self.numbers(name):  # manifests stored as deltas against n
            od = self.version_dir(name, other)
            if manifestchain.base_of(od) == n:
                digest = manifestchain.materialize(od)
                _write_atomic(od / "version.json",
                              replace(self.info(name, other), manifest_sha256=digest).to_json())
                manifestchain.drop_delta(od)  # only once version.json names the whole one
        # Renamed away first so a half-deleted version never looks like a version.
        trash = self.vdir(name) / f"{STAGING_PREFIX}deleted-{n}-{time.time_ns()}"
        os.rename(d, trash)
        snapshots.remove_tree(trash)

    def remove_image(self, name: str) -> None:
        p = self.pointer(name)
        if p.is_symlink():
            p.unlink()  # clients stop seeing it first
        elif p.is_dir():
            snapshots.remove_tree(p)
        if self.vdir(name).exists():
            trash = self.top / VERSIONS / f"{STAGING_PREFIX}deleted-{name}-{time.time_ns()}"
            os.rename(self.vdir(name), trash)
            snapshots.remove_tree(trash)
        (self.top / f"{name}.json").unlink(missing_ok=True)

    def exists(self, name: str) -> bool:
        p = self.pointer(name)
        return p.is_dir() or self.vdir(name).is_dir()

    def rename_image(self, old: str, new: str) -> None:
        if self.exists(new):
            raise ConfigError(f"image {new!r} already exists", hint="pick another name")
        if self.is_legacy(old):
            os.rename(self.pointer(old), self.pointer(new))
            meta = self.top / f"{old}.json"
            if meta.exists():
                os.rename(meta, self.top / f"{new}.json")
            return
        n = self.current(old)
        if n is None:
            raise self.unknown(old)
        # NEW carries on from OLD's numbers (an image of that name deleted
        # before may have given higher ones); OLD's mark stays: an image
        # made under the old name later does not reuse them either.
        last = max(self.last_number(old), self.last_number(new))
        self._mark(old, self.last_number(old))
        os.rename(self.vdir(old), self.vdir(new))
        self._mark(new, last)
        self.set_current(new, n)
        self.pointer(old).unlink()


def _discard(d: Path) -> None:
    """Remove a staging directory, snapshot and all, come what may: it is
    called on the way out of a failed or interrupted change."""
    try:
        snapshots.release(d / "tree")
        snapshots.remove_tree(d)
    except (OSError, SyscloneError):
        shutil.rmtree(d, ignore_errors=True)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
