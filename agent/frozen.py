"""Making the frozen runtime behave like an ordinary system.

ctypes.util.find_library() asks ldconfig's cache (or gcc) for a library's
file name; an initramfs has neither, so pyudev's lookup of libudev would
fail.  Libraries are at known places there, so they are looked up by soname
in those directories instead.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import sys

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib")


def install_find_library() -> None:
    if not getattr(sys, "frozen", False):
        return
    original = ctypes.util.find_library
    extra = [getattr(sys, "_MEIPASS", "")]

    def find_library(name: str) -> str | None:
        for d in [*extra, *LIB_DIRS]:
            hits = sorted(glob.glob(os.path.join(d, f"lib{name}.so.*")))
            if hits:
                return os.path.basename(hits[0])
        return original(name)

    ctypes.util.find_library = find_library
