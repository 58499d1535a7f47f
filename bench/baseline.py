"""Baselines the benchmarks compare against, built in the same run."""

from __future__ import annotations

import shutil
from pathlib import Path

from bootenv import cpio
from bootenv.staging import Staging

BASELINE_MARKER = "BASELINE-USERSPACE-READY"

BUSYBOX_INIT = f"""#!/bin/sh
/bin/busybox mount -t proc proc /proc
echo {BASELINE_MARKER}
/bin/busybox poweroff -f
"""


def busybox_initramfs(work: Path, out: Path) -> Path:
    """The smallest useful initramfs: static busybox and an /init that
    announces userspace and powers off.  Uncompressed, so the kernel spends
    no time unpacking it: the fastest possible 'reach userspace'."""
    st = Staging(work / "bb")
    if st.top.exists():
        shutil.rmtree(st.top)
    st.top.mkdir(parents=True)
    st.mkdir("usr/bin", "usr/lib", "usr/lib64", "proc", "dev")
    for d in ("bin", "lib", "lib64"):
        st.symlink(d, f"usr/{d}")
    st.install("/usr/bin/busybox")  # with its libraries when not static
    st.symlink("usr/bin/sh", "busybox")
    st.write("init", BUSYBOX_INIT, 0o755)
    entries = [*cpio.scan_tree(st.top), cpio.char_device("dev/console", 5, 1)]
    with out.open("wb") as f:
        cpio.write_archive(f, entries)
    return out
