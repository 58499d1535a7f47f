"""The baseline of the install benchmark, run by the agent in the same VM:
a plain `rsync -aHAX` of the image onto a fresh ext4 filesystem, nothing
else.  Booted with `sysclone.bench=rsync` on the kernel command line."""

from __future__ import annotations

import os
import time
from pathlib import Path

from agent import disks as disklib
from agent.chroot import mounted
from agent.flow import (
    TARGET,
    Session,
    bring_up_network,
    connect_monitor,
    detect_hardware,
    fetch_instructions,
)
from agent.plan import ImageRef
from agent.report import Reporter
from sysclone.run import run

MARKER = "SYSCLONE-BENCH-RSYNC"


def wanted(cmdline: Path = Path("/proc/cmdline")) -> str | None:
    for word in cmdline.read_text().split():
        if word.startswith("sysclone.bench="):
            return word.split("=", 1)[1]
    return None


def rsync_baseline(s: Session, reporter: Reporter) -> int:
    hw = detect_hardware(s)
    net = bring_up_network(s)
    server = connect_monitor(s, hw, net)
    instr = fetch_instructions(s, server, net)
    img = instr["image"]
    port = s.params.rsync_port if s.params.rsync_port != 873 else img["rsync_port"]
    url = ImageRef(img["name"], img["module"], server.host, port, None, None, {}).url
    disk = disklib.install_targets(disklib.list_disks(), s.params.disks)[0]
    run(["mke2fs", "-F", "-q", "-t", "ext4", "-E", "lazy_itable_init=0,lazy_journal_init=0",
         disk.path])
    with mounted(disk.path, TARGET, fstype="ext4"):
        t0 = time.monotonic()
        run(["rsync", "-aHAX", "--numeric-ids", url, f"{TARGET}/"])
        seconds = time.monotonic() - t0
        st = os.statvfs(TARGET)
        used = (st.f_blocks - st.f_bfree) * st.f_frsize
    reporter.event("bench", name="rsync-baseline", seconds=round(seconds, 2), bytes=used)
    reporter.flush()
    reporter.say(f"{MARKER} seconds={seconds:.2f} bytes={used}")
    return 0
