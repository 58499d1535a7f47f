"""The kernel call GRUB falls back on, asked of real block devices: a loop
device's partition has no HDIO_GETGEO (so on loop disks udevadm is never
hidden from GRUB), and the check over the host's /sys says so."""

from __future__ import annotations

import errno
import subprocess
import time
from pathlib import Path

import pytest

from agent.configure import grubprobe


def test_loop_partitions_keep_udevadm(loopdev: tuple[str, Path]) -> None:
    dev, _ = loopdev
    subprocess.run(["sfdisk", "-q", dev], input="label: gpt\nsize=64MiB\n", text=True,
                   check=True, capture_output=True)
    subprocess.run(["partx", "-a", dev], capture_output=True)
    part = Path(f"{dev}p1")
    for _ in range(50):
        if part.exists():
            break
        time.sleep(0.1)
    assert part.exists(), f"{part} never appeared"
    with pytest.raises(OSError) as e:
        grubprobe.geometry_start(part)
    assert e.value.errno == errno.ENOTTY
    why = grubprobe.partitions_disagree()
    assert why is not None and "no HDIO_GETGEO" in why
    # sysfs itself is read as GRUB reads it: the partition starts at 1 MiB.
    assert (Path("/sys/class/block") / part.name / "start").read_text().strip() == "2048"
