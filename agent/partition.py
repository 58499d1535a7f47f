"""Writing partition tables with pyparted (libparted), as planned.

Partitions are created at exactly the planned sectors (the plan already
aligned them), with their flags, GPT names and type ids; then the kernel is
told and we wait for the device nodes, which can appear late.
"""

from __future__ import annotations

import logging
import os
import time

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


def wipe(disk: str) -> None:
    """Remove old partition table and filesystem signatures (both GPT copies)."""
    run(["wipefs", "--all", "--force", disk])


def write_table(plan: DiskPlan, swap_devices: set[str]) -> None:
    import parted

    path = plan.disk.path
    flags = _flag_numbers()
    dev = parted.getDevice(path)
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
    deadline = time.monotonic() + timeout
    for d in disks:
        run(["partx", "-u", d], check=False)
    run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)
    missing = [d for d in devices if not os.path.exists(d)]
    waited = bool(missing)
    while missing and time.monotonic() < deadline:
        for d in disks:
            run(["partx", "-a", d], check=False)
        time.sleep(0.2)
        missing = [d for d in devices if not os.path.exists(d)]
    if missing:
        raise PartitionError("partition device nodes did not appear: " + ", ".join(missing))
    if waited:
        # Nodes added by partx: let udev finish their events before mkfs.
        run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=False)


def partition(disks: tuple[DiskPlan, ...], filesystems: tuple[FsPlan, ...]) -> None:
    swap = {f.device for f in filesystems if f.fs == "swap"}
    for d in disks:
        wipe(d.disk.path)
        write_table(d, swap)
    settle([d.disk.path for d in disks], [p.device for d in disks for p in d.partitions])
