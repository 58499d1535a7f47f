"""Creating filesystems and swap with the UUIDs and labels the plan chose,
btrfs subvolumes, and mounting them under the target root in the right
order.  Kept filesystems (format="no") are neither formatted nor mounted."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from contextlib import ExitStack
from pathlib import Path

from agent.chroot import mounted
from agent.plan import FsPlan
from agent.storage.mkfsopts import TOOL_OF_FS, split_label
from sysclone.run import run

log = logging.getLogger(__name__)

SCRATCH = Path("/run/sysclone/btrfs")  # where a new btrfs is mounted to add subvolumes
MKFS_AT_ONCE = 2


def mkfs_argv(f: FsPlan) -> list[str]:
    # The layout's own label option (SystemImager's mkfs_opts="-L x") is
    # the plan's label already: passed once, as the plan says.
    opt_label, extra = split_label(TOOL_OF_FS[f.fs], f.entry.mkfs_opts) \
        if f.fs in TOOL_OF_FS else (None, [])
    label = f.label if f.label is not None else opt_label
    if f.fs in ("ext2", "ext3", "ext4"):
        # Quiet, no lazy init: the result is finished when mkfs returns.
        return ["mke2fs", "-F", "-q", "-t", f.fs, "-U", f.uuid, "-E",
                "lazy_itable_init=0,lazy_journal_init=0", *(["-L", label] if label else []),
                *extra, f.device]
    if f.fs == "xfs":
        return ["mkfs.xfs", "-f", "-q", "-m", f"uuid={f.uuid}",
                *(["-L", label] if label else []), *extra, f.device]
    if f.fs == "btrfs":
        return ["mkfs.btrfs", "-f", "-q", "-U", f.uuid, *(["-L", label] if label else []),
                *extra, f.device]
    if f.fs in ("vfat", "fat", "fat16", "fat32", "msdos"):
        bits = {"fat16": ["-F", "16"], "fat32": ["-F", "32"]}.get(f.fs, [])
        return ["mkfs.fat", *bits, "-i", f.uuid.replace("-", ""),
                *(["-n", label] if label else []), *extra, f.device]
    if f.fs == "swap":
        return ["mkswap", "-U", f.uuid, *(["-L", label] if label else []), *extra, f.device]
    raise ValueError(f"no mkfs for {f.fs}")


def make_filesystems(filesystems: tuple[FsPlan, ...], scratch: Path = SCRATCH) -> None:
    """Every mkfs side by side, two at a time: each works on a device of its
    own, and under emulation spends its time starting up and writing its
    tables on one CPU (a RAID1 + LVM layout's two mke2fs and mkswap: 0.9 s
    one after the other).  A failure is raised once the one beside it has
    ended, and no mkfs starts after it."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    failed = threading.Event()

    def one(argv: list[str]) -> None:
        if failed.is_set():
            return
        try:
            run(argv)
        except BaseException:
            failed.set()
            raise

    argvs = [mkfs_argv(f) for f in filesystems if f.creates]
    with ThreadPoolExecutor(max_workers=MKFS_AT_ONCE, thread_name_prefix="mkfs") as pool:
        for job in [pool.submit(one, argv) for argv in argvs]:
            job.result()
    make_subvolumes(filesystems, scratch)


# BTRFS_IOC_SUBVOL_CREATE: _IOW(0x94, 14, struct btrfs_ioctl_vol_args), whose
# 4096 bytes are an fd (unused here) and the new subvolume's name.
BTRFS_IOC_SUBVOL_CREATE = 0x5000940E


def create_subvolume(path: Path) -> None:
    """`btrfs subvolume create PATH`, as the kernel call itself: the boot
    environment needs no btrfs tool (1 MB with its libraries) for this."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        # A mutable buffer goes to the kernel as it is (a bytes argument is
        # limited to 1024 bytes).
        args = bytearray(struct.pack("q4088s", 0, path.name.encode()))
        fcntl.ioctl(fd, BTRFS_IOC_SUBVOL_CREATE, args, True)
    finally:
        os.close(fd)


def make_subvolumes(filesystems: tuple[FsPlan, ...], scratch: Path = SCRATCH) -> list[str]:
    """The btrfs subvolumes the fstab lines mount, created in each new
    btrfs's top level (mounted at `scratch` for the purpose); returns them."""
    made = []
    by_device: dict[str, list[str]] = {}
    for f in filesystems:
        if f.subvolume and not f.kept and f.fs == "btrfs":
            by_device.setdefault(f.device, []).append(f.subvolume)
    for device, names in by_device.items():
        top = scratch / device.strip("/").replace("/", "_")
        with mounted(device, top, fstype="btrfs", options="subvolid=5"):
            # Parents first, so that a/b finds a (a plain directory if the
            # layout does not mount a subvolume there).
            for name in sorted(names, key=lambda n: n.count("/")):
                (top / name).parent.mkdir(parents=True, exist_ok=True)
                log.debug("btrfs subvolume %s on %s", name, device)
                create_subvolume(top / name)
                made.append(f"{device}:{name}")
    return made


def mount_fstype(fs: str) -> str:
    return "vfat" if fs in ("fat", "fat16", "fat32", "msdos") else fs


def mount_all(filesystems: list[FsPlan], root: Path, stack: ExitStack) -> None:
    """Mount `filesystems` (parents first) below `root`; `stack` unmounts."""
    for f in filesystems:
        assert f.mountpoint
        target = root / f.mountpoint.lstrip("/")
        stack.enter_context(mounted(f.device, target, fstype=mount_fstype(f.fs),
                                    options=f.mount_options))


class SwapOn:
    """Swap activated on the new swap partitions for the rest of the
    install.  A small client (128 MiB) otherwise has nowhere to put the
    agent's memory while rsync and the chrooted tools need theirs; the image
    itself still goes straight to disk."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices

    def off(self) -> None:
        """Swap off again (once): when the install fails, so that a second
        try in the same boot can repartition the disks."""
        devices, self.devices = self.devices, []
        for d in devices:
            run(["swapoff", d])

    def keep(self) -> list[str]:
        """Leave swap on until the machine restarts (an install that
        succeeded): taking back in what a small client swapped out needs
        the very memory it lacks -- at 128 MiB swapoff livelocked in
        reclaim.  Nothing on a swap partition outlives the reboot, and no
        step after the install needs the device."""
        devices, self.devices = self.devices, []
        return devices


def use_swap(filesystems: tuple[FsPlan, ...], stack: ExitStack) -> SwapOn:
    on = SwapOn([])
    stack.callback(on.off)
    for f in filesystems:
        if f.fs == "swap" and not f.kept:
            run(["swapon", f.device])
            on.devices.append(f.device)
    return on
