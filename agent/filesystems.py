"""Creating filesystems and swap with the UUIDs the plan chose, and mounting
them under the target root in the right order."""

from __future__ import annotations

import logging
import shlex
from contextlib import ExitStack
from pathlib import Path

from agent.chroot import mounted
from agent.plan import FsPlan
from sysclone.run import run

log = logging.getLogger(__name__)


def mkfs_argv(f: FsPlan) -> list[str]:
    extra = shlex.split(f.entry.mkfs_opts or "")
    if f.fs in ("ext2", "ext3", "ext4"):
        # Quiet, no lazy init: the result is finished when mkfs returns.
        return ["mke2fs", "-F", "-q", "-t", f.fs, "-U", f.uuid, "-E",
                "lazy_itable_init=0,lazy_journal_init=0", *extra, f.device]
    if f.fs == "xfs":
        return ["mkfs.xfs", "-f", "-q", "-m", f"uuid={f.uuid}", *extra, f.device]
    if f.fs == "btrfs":
        return ["mkfs.btrfs", "-f", "-q", "-U", f.uuid, *extra, f.device]
    if f.fs in ("vfat", "fat", "fat16", "fat32", "msdos"):
        bits = {"fat16": ["-F", "16"], "fat32": ["-F", "32"]}.get(f.fs, [])
        return ["mkfs.fat", *bits, "-i", f.uuid.replace("-", ""), *extra, f.device]
    if f.fs == "swap":
        return ["mkswap", "-U", f.uuid, *extra, f.device]
    raise ValueError(f"no mkfs for {f.fs}")


def make_filesystems(filesystems: tuple[FsPlan, ...]) -> None:
    for f in filesystems:
        run(mkfs_argv(f))


def mount_fstype(fs: str) -> str:
    return "vfat" if fs in ("fat", "fat16", "fat32", "msdos") else fs


def mount_all(filesystems: list[FsPlan], root: Path, stack: ExitStack) -> None:
    """Mount `filesystems` (parents first) below `root`; `stack` unmounts."""
    for f in filesystems:
        assert f.mountpoint
        target = root / f.mountpoint.lstrip("/")
        stack.enter_context(mounted(f.device, target, fstype=mount_fstype(f.fs)))


def use_swap(filesystems: tuple[FsPlan, ...], stack: ExitStack) -> list[str]:
    """Swap on the new swap partitions for the rest of the install, off
    again (via `stack`) before the disks are unmounted.  A small client
    (128 MiB) otherwise has nowhere to put the agent's memory while rsync
    and the chrooted tools need theirs; the image itself still goes
    straight to disk.  Returns the devices swapped on."""
    used = []
    for f in filesystems:
        if f.fs != "swap":
            continue
        run(["swapon", f.device])
        stack.callback(run, ["swapoff", f.device])
        used.append(f.device)
    return used
