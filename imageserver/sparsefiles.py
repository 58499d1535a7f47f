"""Which files of an image are sparse, so that only they are fetched with
rsync -S.

rsync -S turns runs of zeros into holes on the receiver, but to do so it
looks at every block of every file and writes in small pieces: under
emulation the agent's fetch took 39.1 s with it against 31.7 s without,
for an image in which a handful of files (/var/log/lastlog and the like)
have holes.  The server names those files in the install instructions
(`image.sparse`); the agent fetches the bulk without -S, excluding them,
and them in a run of their own with it (agent.fetch).

A file is sparse when at least HOLE_MIN bytes of its length have no block
allocated: that leaves out small files kept inside their inode (ext4
inline data, btrfs), which have no blocks of their own but no hole worth
keeping.  On a store that compresses (btrfs compress=) compressed files
look sparse too; they then come with -S, which costs time, not
correctness, and past the cap every file does.

The list says "all" instead -- every file with -S, as before -- when it
could not carry them safely:
- a sparse file with another name in the image: rsync keeps hard links
  only within one run;
- a name the agent's rule refuses (agent.plan.deferred_path_ok: plain
  names only, nothing rsync or a shell would read as more than a path;
  newlines, odd bytes and undecodable names among them);
- more than SPARSE_MAX of them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from agent.plan import SPARSE_ALL, SPARSE_MAX, deferred_path_ok
from imageserver.treecache import once_per_tree

log = logging.getLogger(__name__)

HOLE_MIN = 4096  # bytes without a block: one page, the usual filesystem block


@dataclass(frozen=True)
class SparseFiles:
    paths: tuple[str, ...] = ()  # relative to the image's root, sorted
    fallback: str | None = None  # why every file must come with -S instead

    def instructions(self) -> list[str] | str:
        """What `image.sparse` carries."""
        return SPARSE_ALL if self.fallback else list(self.paths)


def is_sparse(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode) and holes(st.st_size, st.st_blocks)


def holes(size: int, blocks: int) -> bool:
    """A regular file of `size` bytes with `blocks` 512-byte blocks has a
    hole worth keeping."""
    return size - blocks * 512 >= HOLE_MIN


@dataclass(frozen=True)
class FileFacts:
    """What deciding about one regular file takes, from lstat or find."""

    rel: str  # relative to the tree's root
    size: int
    blocks: int  # 512-byte blocks allocated
    nlink: int
    inode: tuple[int, int]  # (device, inode number)


def classify(files: Iterable[FileFacts], limit: int = SPARSE_MAX) -> SparseFiles:
    """The sparse ones among `files` (regular files), or the reason every
    file must come with -S instead."""
    linked: dict[tuple[int, int], str] = {}  # a sparse inode with several links: a name
    found: list[str] = []
    for f in files:
        if not holes(f.size, f.blocks):
            continue
        if f.nlink > 1:
            # Links from outside the tree (an earlier version's, in the
            # image store) are no concern: rsync sees only the tree.
            other = linked.setdefault(f.inode, f.rel)
            if other != f.rel:
                return SparseFiles(fallback=f"the sparse file /{other} has another name "
                                            f"in the image, /{f.rel}")
        if not deferred_path_ok(f.rel):
            return SparseFiles(fallback=f"a sparse file's name cannot be passed safely: "
                                        f"{f.rel!r}")
        found.append(f.rel)
        if len(found) > limit:
            return SparseFiles(fallback=f"more than {limit} sparse files")
    return SparseFiles(tuple(sorted(found)))


def _regular_files(tree: Path) -> Iterator[FileFacts]:
    for top, _, files in os.walk(tree):
        for f in files:
            path = os.path.join(top, f)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield FileFacts(os.path.relpath(path, tree), st.st_size, st.st_blocks,
                                st.st_nlink, (st.st_dev, st.st_ino))


def sparse_files(tree: Path, limit: int = SPARSE_MAX) -> SparseFiles:
    """The sparse files of the image at `tree`, from one walk of it."""
    return classify(_regular_files(tree), limit)


def _walk_and_say(tree: Path) -> SparseFiles:
    found = sparse_files(tree)
    if found.fallback:
        log.info("%s: every file of an install comes with rsync -S: %s", tree, found.fallback)
    return found


# sparse_files() of a stored version's tree, once per tree rather than per
# client asking (imageserver.treecache).
sparse_of_version = once_per_tree(_walk_and_say)
