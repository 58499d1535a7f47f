"""Which parts of an image an install may fetch last.

The agent pulls an image in two rsync runs when the install instructions
name `deferred` directories: first everything else, then -- while the
installed system's initrd is checked and its bootloader installed, which
under emulation takes as long as a third of the transfer -- those
directories.  They are the bulk nothing before the reboot reads: kernel
module objects (the initrd check reads only modules.builtin and friends
beside them; a regeneration on the client waits for them), firmware,
documentation, manual pages and package lists.

The server decides, per image, from the tree itself: a candidate is kept
only when every component of its path is a real directory (a symlink such
as Debian's /lib -> usr/lib is never fetched as a directory), and when no
file in it shares its inode with a file outside the deferred set, since
rsync keeps hard links only within one run.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from agent.plan import NOT_DEFERRED, deferred_path_ok
from imageserver.treecache import once_per_tree

# Relative to the image's root; `*` is a kernel version directory.
CANDIDATES = (
    "usr/lib/modules/*/kernel", "lib/modules/*/kernel",
    "usr/lib/firmware", "lib/firmware",
    "usr/share/doc", "usr/share/man", "usr/share/info",
    "var/lib/apt/lists", "var/cache/apt",
)


def _real_dirs(tree: Path, pattern: str) -> list[str]:
    """The paths matching `pattern` whose every component is a directory,
    not a link to one."""
    found = [""]
    for part in pattern.split("/"):
        nxt = []
        for base in found:
            d = tree / base if base else tree
            try:
                names = sorted(os.listdir(d)) if part == "*" else [part]
            except OSError:
                continue
            for name in names:
                rel = f"{base}/{name}" if base else name
                try:
                    st = os.lstat(tree / rel)
                except OSError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    nxt.append(rel)
        found = nxt
    return found


def _links(tree: Path, dirs: list[str]) -> list[tuple[frozenset[str], bool]]:
    """For every inode with several names in the tree: the deferred
    directories holding one, and whether one lies outside all of them.
    Names outside the tree (an earlier version's hard links in the image
    store) are no concern: rsync sees only the tree."""
    holders: dict[tuple[int, int], set[str]] = {}
    outside: set[tuple[int, int]] = set()
    for top, _, files in os.walk(tree):
        rel = os.path.relpath(top, tree)
        rel = "" if rel == "." else rel
        owner = next((d for d in dirs if rel == d or rel.startswith(d + "/")), None)
        for f in files:
            try:
                st = os.lstat(os.path.join(top, f))
            except OSError:
                continue
            if st.st_nlink < 2:
                continue
            key = (st.st_dev, st.st_ino)
            if owner is None:
                outside.add(key)
            else:
                holders.setdefault(key, set()).add(owner)
    return [(frozenset(ds), key in outside) for key, ds in holders.items()]


def _walk(tree: Path) -> tuple[str, ...]:
    return deferred(tree)  # looked up when called: tests count the walks


# deferred() of a stored version's tree: it walks the whole image, once per
# tree rather than per client asking (imageserver.treecache).
deferred_of_version = once_per_tree(_walk)


def deferred(tree: Path) -> tuple[str, ...]:
    """The directories of the image at `tree` an install may fetch last
    (only names the agent takes: a kernel directory named otherwise comes
    with the first run)."""
    dirs = [p for pattern in CANDIDATES for p in _real_dirs(tree, pattern)
            if deferred_path_ok(p) and p.split("/", 1)[0] not in NOT_DEFERRED]
    links = _links(tree, dirs)
    kept = set(dirs)
    while True:
        # A name fetched in the first run (outside, or in a directory
        # dropped already) takes every deferred directory linked to it along.
        drop = {d for ds, out in links if out or not ds <= kept for d in ds & kept}
        if not drop:
            return tuple(d for d in dirs if d in kept)
        kept -= drop
