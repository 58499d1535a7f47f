"""Turn a filled staging directory into a stored version.

Every way of making a version ends here (capture, bootstrap, chroot, copy):
describe the tree (manifest), share what did not change with the previous
version, write down what is known, measure it, and commit.  A legacy image
(a plain directory from before versions) is described too and becomes
version 1 in the same commit.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from imageserver import manifest, manifestchain, snapshots
from imageserver.dedupe import dedupe
from imageserver.store import ImageInfo, UsageCounter, measure
from imageserver.versions import Staging, VersionInfo, Versions

MANIFEST = manifestchain.FULL


@dataclass(frozen=True)
class NewVersion:
    """What the caller knows about the version it made."""

    origin: str
    source: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    excludes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    files: dict[str, bytes] = field(default_factory=dict)  # layout.xml, facts.json...
    dedupe: bool = False  # share unchanged files after the fact (no --link-dest)
    # Another stored tree whose files this one hard-links (`image copy`):
    # their hashes are known, nothing needs reading.
    hashes_from: tuple[Path, list[manifest.Entry]] | None = None
    # New files already hashed while rsync copied them (imageserver.prehash).
    prehashed: manifest.Prehashed | None = None


@dataclass(frozen=True)
class Sealed:
    version: int
    info: VersionInfo
    hashed: int  # files read and hashed
    shared: int  # files shared with the previous version


def load_manifest(version_dir: Path) -> list[manifest.Entry] | None:
    return manifestchain.load(version_dir)


def _reuse(parent_tree: Path, entries: dict[str, manifest.Entry], *, snapshot: bool = False
           ) -> Callable[[str, os.stat_result], str | None]:
    """A file hard-linked from the previous version has its hash already.
    So has one the new tree holds untouched since it was snapshotted from
    `parent_tree` (btrfs): the same inode number, and a ctime no change to
    the file can leave as it was (rsync replaces a changed file by a new
    inode, and anything else it does to one sets its ctime)."""
    base = os.fspath(parent_tree)

    def known(rel: str, st: os.stat_result) -> str | None:
        e = entries.get(rel)
        if e is None or e.sha256 is None or (st.st_nlink < 2 and not snapshot):
            return None
        try:
            b = os.lstat(base + rel)
        except OSError:
            return None
        if (b.st_dev, b.st_ino) == (st.st_dev, st.st_ino):
            return e.sha256
        same = snapshot and b.st_ino == st.st_ino and b.st_ctime_ns == st.st_ctime_ns \
            and b.st_mtime_ns == st.st_mtime_ns and b.st_size == st.st_size
        return e.sha256 if same else None
    return known


def seal(v: Versions, s: Staging, new: NewVersion,
         progress: Callable[[str], None] | None = None) -> Sealed:
    say = progress or (lambda line: None)
    base_entries: list[manifest.Entry] | None = None
    adopt_entries: list[manifest.Entry] | None = None
    if s.parent is not None:
        base_entries = load_manifest(v.version_dir(s.name, s.parent))
    elif s.parent_tree is not None:  # a legacy image: described now, adopted at commit
        say(f"describing {s.parent_tree} (it becomes version 1)")
        adopt_entries = manifest.build(s.parent_tree).entries
        base_entries = adopt_entries
    say("hashing the new version")
    known = [_reuse(s.parent_tree, {e.path: e for e in base_entries},
                    snapshot=s.seed == s.parent_tree)] \
        if s.parent_tree is not None and base_entries is not None else []
    if new.hashes_from is not None:
        known.append(_reuse(new.hashes_from[0], {e.path: e for e in new.hashes_from[1]},
                            snapshot=s.seed == new.hashes_from[0]))

    def reuse(rel: str, st: os.stat_result) -> str | None:
        return next((h for k in known if (h := k(rel, st)) is not None), None)
    counter = UsageCounter()
    walk = manifest.build(s.tree, reuse if known else None, on_stat=counter.add,
                          prehashed=new.prehashed)
    shared = walk.reused
    added = walk.new_bytes
    # A snapshot shares everything it did not change already; a tree made
    # another way shares afterwards (hard links, or reflinks on btrfs).
    if new.dedupe and s.seed is None and s.parent_tree is not None \
            and base_entries is not None:
        say("sharing unchanged files with the previous version")
        d = dedupe(s.tree, walk.entries, s.parent_tree, base_entries,
                   clone=s.storage == snapshots.SNAPSHOT)
        shared += d.files
        added = max(0, added - d.bytes)
    for fname, data in new.files.items():
        (s.dir / fname).write_bytes(data)
    lines = manifestchain.lines_of(walk.entries)
    digest = manifestchain.save(s.dir, walk.entries, _delta_base(v, s, base_entries,
                                                                 adopt_entries is not None),
                                lines)
    usage = counter.result()
    info = VersionInfo(version=0, created=time.time(), origin=new.origin, source=new.source,
                       details=new.details, parent=s.parent, usage=_asdict(usage),
                       entries=len(walk.entries), manifest_sha256=digest, added_bytes=added,
                       excludes=new.excludes, warnings=new.warnings,
                       entries_sha256=manifestchain.entries_digest(walk.entries, lines))
    if adopt_entries is None:
        n = v.commit(s, info)
    else:
        with v.stage(s.name, clean=False) as adopt:
            _describe_legacy(v, adopt, adopt_entries)
            n = v.commit(s, replace(info, parent=1), adopt)
    return Sealed(n, v.info(s.name, n), walk.hashed, shared)


def _delta_base(v: Versions, s: Staging, base_entries: list[manifest.Entry] | None,
                adopting: bool) -> tuple[int, list[manifest.Entry]] | None:
    """What the new manifest is a delta against: the parent version's
    (version 1, for a legacy image adopted in the same commit), unless the
    chain behind it is long enough already."""
    if base_entries is None:
        return None
    if adopting:
        return 1, base_entries
    if s.parent is None or manifestchain.chain_length(v.version_dir(s.name, s.parent)) \
            >= manifestchain.MAX_CHAIN - 1:
        return None
    return s.parent, base_entries


def _describe_legacy(v: Versions, adopt: Staging, entries: list[manifest.Entry]) -> None:
    meta = v.top / f"{adopt.name}.json"
    old = ImageInfo.from_json(meta.read_text()) if meta.is_file() else None
    digest = manifest.save(entries, adopt.dir / MANIFEST)
    tree = v.pointer(adopt.name)
    info = VersionInfo(version=1, created=old.created if old else os.lstat(tree).st_mtime,
                       origin=old.origin if old else "adopted",
                       details={**(old.details if old else {}), "adopted": True},
                       usage=_asdict(measure(tree)), entries=len(entries),
                       manifest_sha256=digest, added_bytes=0,
                       entries_sha256=manifestchain.entries_digest(entries))
    (adopt.dir / "version.json").write_text(info.to_json())


def _asdict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(asdict(obj)))
