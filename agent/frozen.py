"""Making the boot environment's runtime behave like an ordinary system.

ctypes.util.find_library() asks ldconfig's cache (or gcc) for a library's
file name; an initramfs has neither, so pyudev's lookup of libudev fails
("No library named udev") and the inventory comes back empty.  Where there
is no ldconfig cache, libraries are looked up by soname in the directories
the boot environment puts them in; elsewhere nothing changes.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys
from collections.abc import Callable

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")
LD_CACHE = "/etc/ld.so.cache"


def soname_finder(original: Callable[[str], str | None], dirs: tuple[str, ...],
                  ld_cache: str = LD_CACHE) -> Callable[[str], str | None]:
    """find_library for a system without ldconfig's cache: the first
    `lib{name}.so.*` in `dirs`, else what `original` finds."""

    def find_library(name: str) -> str | None:
        if os.path.exists(ld_cache):
            return original(name)
        for d in dirs:
            hits = sorted(glob.glob(os.path.join(d, f"lib{name}.so.*")))
            if hits:
                return os.path.basename(hits[0])
        return original(name)

    return find_library


def install_find_library() -> None:
    extra = getattr(sys, "_MEIPASS", "")
    dirs = (extra, *LIB_DIRS) if extra else LIB_DIRS
    ctypes.util.find_library = soname_finder(  # type: ignore[assignment]
        ctypes.util.find_library, dirs)
