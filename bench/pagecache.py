"""Put a tree's files in the page cache right before a timed run.

This machine (a Firecracker guest) runs DAMON with a `pageout` scheme: page
cache left unread for about ten seconds is evicted, and reading it back
costs system time.  A tree read by one run and then left idle while another
runs comes back cold, so whichever of two compared runs followed an idle
spell paid for the disk: `cp -a` of the demo tree took 9.3 s cold and 1.5 s
warm, back to back.  Both sides of a ratio therefore start warm.
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
