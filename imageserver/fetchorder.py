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
from collections.abc import Iterable
from pathlib import Path

from agent.plan import NOT_DEFERRED, deferred_path_ok

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


def _linked_out(tree: Path, dirs: Iterable[str]) -> set[str]:
    """The directories holding a file hard-linked to one outside all of `dirs`."""
    # inode -> (links seen inside, links it has, directories seen in)
    links: dict[tuple[int, int], tuple[int, int, frozenset[str]]] = {}
    for d in dirs:
        for top, _, files in os.walk(tree / d):
            for f in files:
                st = os.lstat(os.path.join(top, f))
                if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    seen, _, where = links.get(key, (0, 0, frozenset()))
                    links[key] = (seen + 1, st.st_nlink, where | {d})
    return {d for seen, nlink, where in links.values() if seen < nlink for d in where}


def deferred(tree: Path) -> tuple[str, ...]:
    """The directories of the image at `tree` an install may fetch last
    (only names the agent takes: a kernel directory named otherwise comes
    with the first run)."""
    dirs = [p for pattern in CANDIDATES for p in _real_dirs(tree, pattern)
            if deferred_path_ok(p) and p.split("/", 1)[0] not in NOT_DEFERRED]
    while True:
        crossing = _linked_out(tree, dirs)
        if not crossing:
            return tuple(dirs)
        # Dropping one may leave its partners' links crossing: look again.
        dirs = [d for d in dirs if d not in crossing]
