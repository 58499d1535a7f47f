"""`image verify` and `image diff`: what a stored version holds, proven.

verify walks a version's tree again, re-hashing every file, and compares it
with the manifest written when the version was stored (whose own sha256 is
in version.json, so an edited manifest is caught too).  diff compares two
manifests and reads no tree at all (an image from before versions has no
manifest: it is described on the fly).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imageserver import manifest
from imageserver.names import ImageRef
from imageserver.seal import MANIFEST, load_manifest
from imageserver.store import measure
from imageserver.versions import Versions
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot


@dataclass(frozen=True)
class Verified:
    ref: ImageRef  # with the version that was checked
    entries: int
    changes: tuple[manifest.Change, ...]
    manifest_ok: bool

    @property
    def ok(self) -> bool:
        return self.manifest_ok and not self.changes


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
    info = v.info(ref.name, n)
    mfile = vdir / MANIFEST
    manifest_ok = mfile.is_file() and manifest.sha256_file(mfile) == info.manifest_sha256
    expected = manifest.load(mfile) if mfile.is_file() else []
    if progress:
        progress(f"re-hashing {ref.name}@{n} ({len(expected)} paths)")
    actual = manifest.build(tree).entries
    return Verified(ImageRef(ref.name, n), len(expected),
                    tuple(manifest.compare(expected, actual)), manifest_ok)


def entries_of(state: StateRoot, ref: ImageRef) -> tuple[ImageRef, list[manifest.Entry]]:
    v = Versions(state)
    if not v.exists(ref.name):
        raise v.unknown(ref.name)
    n, tree = v.resolve(ref)
    if n is None:
        return ref, manifest.build(tree).entries
    entries = load_manifest(v.version_dir(ref.name, n))
    return ImageRef(ref.name, n), entries if entries is not None else \
        manifest.build(tree).entries


def diff(state: StateRoot, a: ImageRef, b: ImageRef, *, ignore: frozenset[str] = frozenset()
         ) -> tuple[ImageRef, ImageRef, list[manifest.Change]]:
    ra, ea = entries_of(state, a)
    rb, eb = entries_of(state, b)
    return ra, rb, manifest.compare(ea, eb, ignore=ignore)


def disk_use(state: StateRoot, name: str) -> int:
    """Allocated bytes of every version of an image, shared files once."""
    v = Versions(state)
    seen: set[tuple[int, int]] = set()
    trees: list[Path] = [v.version_dir(name, n) / "tree" for n in v.numbers(name)]
    if v.is_legacy(name):
        trees = [v.pointer(name)]
    return sum(measure(t, depth=0, seen=seen).bytes for t in trees)
