"""Writing partition tables with pyparted (libparted), as planned.

Partitions are created at exactly the planned sectors (the plan already
aligned them), with their flags, GPT names and type ids; then the kernel is
told and we wait for the device nodes, which can appear late.  A disk whose
table the layout keeps (label_type="none") is neither wiped nor written.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

from agent.plan import DiskPlan, FsPlan
from agent.storage.model import Flag, PartType
from sysclone.errors import SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)


class PartitionError(SyscloneError):
    pass


def _flag_numbers() -> dict[Flag, int]:
    import parted

    by_name = {v: k for k, v in parted.partitionFlag.items()}
    return {f: by_name[f.value] for f in Flag if f.value in by_name}


def wipe(devices: list[str]) -> None:
    """Remove old partition tables and filesystem signatures (both GPT
    copies) from every device in one wipefs: each command costs about 0.1
    to 0.3 s under emulation."""
    if devices:
        run(["wipefs", "--all", "--force", *devices])


def write_table(plan: DiskPlan, swap_devices: set[str]) -> None:
    import parted

    dev = parted.getDevice(plan.disk.path)
    try:
        _write_table(dev, plan, swap_devices)
    finally:
        # libparted caches devices by path, with their size: a disk changed
        # behind the same name (a loop device, a disk swapped at si.break)
        # must be read anew next time.
        dev.removeFromCache()


def _write_table(dev: Any, plan: DiskPlan, swap_devices: set[str]) -> None:
    import parted

    path = plan.disk.path
    flags = _flag_numbers()
    end = max((p.end for p in plan.partitions), default=0)
    if end > dev.length * dev.sectorSize:
        raise PartitionError(f"{path} is {dev.length * dev.sectorSize} bytes, the plan was made "
                             f"for {plan.disk.size}: its partitions end at {end}")
    disk = parted.freshDisk(dev, plan.label)
    kinds = {PartType.PRIMARY: parted.PARTITION_NORMAL,
             PartType.EXTENDED: parted.PARTITION_EXTENDED,
             PartType.LOGICAL: parted.PARTITION_LOGICAL}
    for pp in plan.partitions:
        if pp.sector_size != dev.sectorSize:
            raise PartitionError(f"{path}: planned with {pp.sector_size}-byte sectors, the disk "
                                 f"has {dev.sectorSize}")
        geom = parted.Geometry(device=dev, start=pp.start_sector, end=pp.last_sector)
        fs = None
        if pp.device in swap_devices:
            # Gives the right type: 0x82 on msdos, Linux swap GUID on GPT.
            fs = parted.FileSystem(type="linux-swap(v1)", geometry=geom)
        part = parted.Partition(disk=disk, type=kinds[pp.kind], fs=fs, geometry=geom)
        disk.addPartition(part, constraint=parted.Constraint(exactGeom=geom))
        if part.number != pp.number:
            raise PartitionError(f"{path}: libparted numbered partition {pp.number} as "
                                 f"{part.number}")
        for f in pp.partition.flags:
            n = flags.get(f)
            if n is not None and part.isFlagAvailable(n):
                part.setFlag(n)
            elif f is not Flag.ROOT:
                log.warning("%s: flag %s is not available on %s", pp.device, f.value,
                            plan.label)
        if plan.label == "gpt" and pp.partition.name:
            part.set_name(pp.partition.name)
    disk.commit()


def settle(disks: list[str], devices: list[str], timeout: float = 30.0) -> None:
    """Make the kernel and udev show the new partitions of `disks`; wait for
    the `devices` nodes.  The disks are given, not derived from the devices:
    while the kernel re-reads a table, partition entries in sysfs vanish and
    come back, so nothing here may depend on them."""
    for d in disks:
        run(["partx", "-u", d], check=False)
    wait_for_devices(devices, timeout, what="partition device nodes",
                     retry=lambda: [run(["partx", "-a", d], check=False) for d in disks])


def wait_for_devices(devices: list[str], timeout: float = 30.0,
                     retry: Callable[[], object] = lambda: None,
                     what: str = "device nodes") -> None:
    """Let udev finish, then wait until every device node exists (`retry`
    runs between looks: partx -a for partitions)."""
    deadline = time.monotonic() + timeout
    run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)
    missing = [d for d in devices if not os.path.exists(d)]
    waited = bool(missing)
    while missing and time.monotonic() < deadline:
        retry()
        time.sleep(0.2)
        missing = [d for d in devices if not os.path.exists(d)]
    if missing:
        raise PartitionError(f"{what} did not appear: " + ", ".join(missing))
    if waited:
        # Nodes that came late: let udev finish their events before mkfs.
        run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)


def partition(disks: tuple[DiskPlan, ...], filesystems: tuple[FsPlan, ...]) -> None:
    swap = {f.device for f in filesystems if f.fs == "swap" and not f.kept}
    written = [d for d in disks if not d.keeps_table]
    wipe([d.disk.path for d in written])
    for d in written:
        write_table(d, swap)
    settle([d.disk.path for d in written], [p.device for d in disks for p in d.partitions])
