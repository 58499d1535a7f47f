"""`image verify` and `image diff`: what a stored version holds, proven.

verify walks a version's tree again, re-hashing every file, and compares it
with the manifest written when the version was stored (whose own sha256 is
in version.json, so an edited manifest is caught too).  A version kept as
a read-only btrfs snapshot must still be read-only: one made writable
again is reported even before anything in it differs.  diff compares two
manifests and reads no tree at all (an image from before versions has no
manifest: it is described on the fly).  A record that cannot be read
(version.json, a manifest) is named in one line: verify reports it as
damage, diff as an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from imageserver import manifest, manifestchain, snapshots
from imageserver.names import ImageRef
from imageserver.seal import load_manifest
from imageserver.store import measure
from imageserver.versions import DAMAGE_HINT, StoreDamage, VersionInfo, Versions
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot


@dataclass(frozen=True)
class Verified:
    ref: ImageRef  # with the version that was checked
    entries: int
    changes: tuple[manifest.Change, ...]
    manifest_ok: bool
    writable: bool = False  # a read-only snapshot that was made writable
    damage: tuple[str, ...] = ()  # records that cannot be read, each named

    @property
    def ok(self) -> bool:
        return self.manifest_ok and not self.changes and not self.writable \
            and not self.damage


def verify(state: StateRoot, ref: ImageRef,
           progress: Callable[[str], None] | None = None) -> Verified:
    v = Versions(state)
    if not v.exists(ref.name):
        raise v.unknown(ref.name)
    n, tree = v.resolve(ref)
    if n is None:
        raise ConfigError(f"image {ref.name} was stored before versions existed: it has no "
                          "manifest to verify against",
                          hint=f"make it a version: sysclone image copy {ref.name} NEWNAME")
    vdir = v.version_dir(ref.name, n)
    damage: list[str] = []
    info: VersionInfo | None = None
    try:
        info = v.info(ref.name, n)
    except StoreDamage as e:
        damage.append(e.message)
    mfile = manifestchain.file_of(vdir)
    manifest_ok = info is not None and mfile is not None and \
        manifest.sha256_file(mfile) == info.manifest_sha256
    try:
        expected = manifestchain.load(vdir)
    except (OSError, ValueError, KeyError) as e:  # a delta whose base is gone or damaged
        damage.append(str(e))
        expected = None
    if expected is None:
        # Nothing to compare the tree with: every path would read as added.
        return Verified(ImageRef(ref.name, n), 0, (), False,
                        damage=tuple(damage) or (f"{vdir}: no manifest",))
    if info is not None and info.entries_sha256 is not None:  # deltas applied
        manifest_ok = manifest_ok and manifestchain.entries_digest(expected) == \
            info.entries_sha256
    writable = info is not None and info.storage == snapshots.SNAPSHOT and not (
        snapshots.is_subvolume(tree) and snapshots.is_frozen(tree))
    if progress:
        progress(f"re-hashing {ref.name}@{n} ({len(expected)} paths)")
    actual = manifest.build(tree).entries
    return Verified(ImageRef(ref.name, n), len(expected),
                    tuple(manifest.compare(expected, actual)), manifest_ok, writable,
                    tuple(damage))


def entries_of(state: StateRoot, ref: ImageRef) -> tuple[ImageRef, list[manifest.Entry]]:
    v = Versions(state)
    if not v.exists(ref.name):
        raise v.unknown(ref.name)
    n, tree = v.resolve(ref)
    if n is None:
        return ref, manifest.build(tree).entries
    vdir = v.version_dir(ref.name, n)
    try:
        entries = load_manifest(vdir)
    except (manifestchain.Unreadable, FileNotFoundError) as e:  # FNF: a delta's base
        raise StoreDamage(str(e), hint=DAMAGE_HINT) from None
    return ImageRef(ref.name, n), entries if entries is not None else \
        manifest.build(tree).entries


def diff(state: StateRoot, a: ImageRef, b: ImageRef, *, ignore: frozenset[str] = frozenset()
         ) -> tuple[ImageRef, ImageRef, list[manifest.Change]]:
    ra, ea = entries_of(state, a)
    rb, eb = entries_of(state, b)
    return ra, rb, manifest.compare(ea, eb, ignore=ignore)


def disk_use(state: StateRoot, name: str) -> int:
    """Allocated bytes of every version of an image, shared files once, and
    what each version keeps beside its tree (manifest, facts, layout).  On
    btrfs, `btrfs filesystem du` of them all: data extents shared between
    snapshots once; the metadata they share is not in it (a whole
    filesystem's figure comes from `btrfs filesystem usage`)."""
    v = Versions(state)
    if v.is_legacy(name):
        return measure(v.pointer(name), depth=0).bytes
    numbers = v.numbers(name)
    if any(v.info(name, n).storage == snapshots.SNAPSHOT for n in numbers):
        return snapshots.data_use(v.vdir(name))
    seen: set[tuple[int, int]] = set()
    total = 0
    for n in numbers:
        vdir = v.version_dir(name, n)
        for p in vdir.iterdir():
            total += measure(p, depth=0, seen=seen).bytes + p.lstat().st_blocks * 512 \
                if p.is_dir() and not p.is_symlink() else p.lstat().st_blocks * 512
    return total
