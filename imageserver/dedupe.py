"""Share unchanged files with the previous version, after the fact.

Captures get this from rsync --link-dest while they copy (or from a btrfs
snapshot).  Trees made another way (a debootstrap unpacked from the cache,
the private copy an `image chroot` worked on) are full copies: every
regular file whose manifest entry is identical to the previous version's --
content, mode, owner, times, xattrs, and hard-link group -- is replaced by a
hard link to the previous version's file.  Sharing is only ever with
stored, immutable versions, so nobody writes through the link afterwards.
On btrfs, where versions are separate subvolumes and cannot hard-link each
other, the file keeps its inode and its data is reflinked instead.
"""

from __future__ import annotations

import errno
import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imageserver import snapshots
from imageserver.manifest import Entry


@dataclass(frozen=True)
class Deduped:
    files: int  # paths now hard links into the previous version
    bytes: int  # allocated bytes that freed


def _groups(entries: Iterable[Entry]) -> dict[str, list[str]]:
    """Hard-link groups by their first path: {first: [first, other, ...]}."""
    out: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        if e.type == "f":
            out[e.link or e.path].append(e.path)
    return out


def dedupe(tree: Path, entries: list[Entry], base_tree: Path, base_entries: list[Entry],
           *, clone: bool = False) -> Deduped:
    if clone:
        return _clone(tree, entries, base_tree, base_entries)
    base = {e.path: e for e in base_entries}
    new = {e.path: e for e in entries}
    base_groups = _groups(base_entries)
    root, broot = os.fspath(tree), os.fspath(base_tree)
    dir_times: dict[str, tuple[int, int]] = {}
    files = freed = 0
    for first, paths in _groups(entries).items():
        if base_groups.get(first) != paths:
            continue  # new, or a different hard-link group than before
        if any(p not in base or new[p] != base[p] for p in paths):
            continue
        st = os.lstat(root + first)
        bst = os.lstat(broot + first)
        if (st.st_dev, st.st_ino) == (bst.st_dev, bst.st_ino) or st.st_dev != bst.st_dev:
            continue  # already shared, or another filesystem
        # Link every path of the group first, then swap them in: a group is
        # either all shared or left alone (EMLINK: the filesystem's limit).
        temps: list[tuple[str, str]] = []
        try:
            for i, p in enumerate(paths):
                parent = os.path.dirname(p) or "/"
                if parent not in dir_times:
                    pst = os.lstat(root + parent if parent != "/" else root)
                    dir_times[parent] = (pst.st_atime_ns, pst.st_mtime_ns)
                tmp = f"{root}{parent.rstrip('/')}/.sysclone-dedupe.{i}.tmp"
                os.link(broot + first, tmp)
                temps.append((tmp, root + p))
        except OSError as e:
            for tmp, _ in temps:
                os.unlink(tmp)
            if e.errno == errno.EMLINK:
                continue
            raise
        for tmp, dest in temps:
            os.replace(tmp, dest)
        files += len(paths)
        freed += st.st_blocks * 512
    # Replacing entries touched their directories; they must match the manifest.
    for d, (atime, mtime) in dir_times.items():
        os.utime(root + d if d != "/" else root, ns=(atime, mtime), follow_symlinks=False)
    return Deduped(files, freed)


def _clone(tree: Path, entries: list[Entry], base_tree: Path, base_entries: list[Entry]
           ) -> Deduped:
    """The reflink form: each identical file's inode (one per hard-link
    group) takes the previous version's data extents.  Nothing is renamed,
    so directories are untouched; the file's times are put back."""
    base = {e.path: e for e in base_entries}
    new = {e.path: e for e in entries}
    base_groups = _groups(base_entries)
    root, broot = os.fspath(tree), os.fspath(base_tree)
    files = freed = 0
    for first, paths in _groups(entries).items():
        if base_groups.get(first) != paths or any(p not in base or new[p] != base[p]
                                                  for p in paths):
            continue
        st = os.lstat(root + first)
        if st.st_size == 0:
            continue
        if not snapshots.clone(broot + first, root + first):
            break  # the filesystem cannot: nothing else will work either
        files += len(paths)
        freed += st.st_blocks * 512
    return Deduped(files, freed)
