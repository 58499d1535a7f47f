"""Work on a stored version's tree done once per tree, not per client.

A stored version never changes once recorded (imageserver.versions), so
what the install instructions derive from walking its whole tree (the
deferred directories, the sparse files) is computed once and kept.  The
key is the tree's real path, inode and ctime: a tree made anew under the
same path (an image deleted and made again) is a new directory.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def once_per_tree(compute: Callable[[Path], T], maxsize: int = 256) -> Callable[[Path], T]:
    """`compute(tree)`, remembered for each stored tree (see above)."""
    @functools.lru_cache(maxsize=maxsize)
    def once(real: str, ino: int, ctime_ns: int) -> T:
        return compute(Path(real))

    def of_version(tree: Path) -> T:
        real = os.path.realpath(tree)
        st = os.stat(real)
        return once(real, st.st_ino, st.st_ctime_ns)

    return of_version
