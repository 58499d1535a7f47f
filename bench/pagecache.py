"""Put a tree's files in the page cache right before a timed run.

This machine (a Firecracker guest) runs DAMON with a `pageout` scheme
(/sys/kernel/mm/damon/admin/kdamonds/0: regions left unaccessed for 12
aggregation intervals are paged out), so page cache left idle for seconds
is evicted.  A tree read by one run and then left idle while another runs
comes back cold, and whichever of two compared runs followed an idle spell
would pay for the disk.  Both sides of a ratio therefore start warm.
(Not what made `cp -a` of the demo tree take 1.5 s one time and 9 s the
next: that was writing to the root filesystem, with the input warm;
bench.capture.speed says what was done about it.)
"""

from __future__ import annotations

import os
import stat
from pathlib import Path


def warm_tree(root: Path) -> None:
    """Read every regular file below `root` once (not FIFOs: opening one
    would wait for a writer; not devices)."""
    for top, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(top, name)
            try:
                if not stat.S_ISREG(os.lstat(path).st_mode):
                    continue
                with open(path, "rb") as f:
                    while f.read(1 << 20):
                        pass
            except OSError:  # gone, or unreadable: the run will say so itself
                continue
