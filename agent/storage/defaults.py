"""The layout used when the image server has none for a client.

One disk, everything on it: a boot partition the firmware needs (a 1 MiB
BIOS boot partition for grub on GPT, or a 512 MiB EFI system partition),
the root filesystem taking the space left, and swap at the end of the
disk.  The server writes it out with `to_xml` so users can start from it.
"""

from __future__ import annotations

from decimal import Decimal

from agent.storage.devices import partition_path
from agent.storage.model import (
    ROOT_FS,
    BootFlavor,
    Bootloader,
    BootTarget,
    Disk,
    Flag,
    FsEntry,
    InstallType,
    LabelType,
    Layout,
    Partition,
    PartType,
)
from agent.storage.units import Size, Unit
from agent.storage.validate import validate
from sysclone.errors import ConfigError

ESP_MIB = 512  # room for several kernels' worth of EFI binaries, and FAT32-sized
BIOS_BOOT_MIB = 1  # grub's core.img is well under 1 MiB
DEFAULT_SWAP_MIB = 2048
SOURCE = "<built-in default layout>"


def default_layout(disk: str = "/dev/sda", firmware: str = "bios", label: str = "gpt",
                   root_fs: str = "ext4", swap_mib: int = DEFAULT_SWAP_MIB) -> Layout:
    """A one-disk layout for `firmware` ("bios" or "uefi") on a `label`
    ("gpt" or "msdos") table; swap_mib=0 leaves swap out."""
    if firmware not in ("bios", "uefi"):
        raise ConfigError(f"firmware {firmware!r} is not bios or uefi")
    if label not in ("gpt", "msdos"):
        raise ConfigError(f"partition table {label!r} is not gpt or msdos")
    if root_fs not in ROOT_FS:
        raise ConfigError(f"root filesystem {root_fs!r} is not one of "
                          + ", ".join(sorted(ROOT_FS)))
    if swap_mib < 0:
        raise ConfigError(f"swap size {swap_mib} MiB is negative")
    gpt = label == "gpt"
    uefi = firmware == "uefi"

    parts: list[Partition] = []
    fsinfo: list[FsEntry] = []

    def add(size: int | None, flags: tuple[Flag, ...], name: str) -> str:
        number = len(parts) + 1
        parts.append(Partition(number=number, size=Size(None if size is None else Decimal(size)),
                               kind=PartType.PRIMARY, flags=flags, name=name if gpt else None))
        return partition_path(disk, number)

    esp = None
    if uefi:
        esp = add(ESP_MIB, (Flag.ESP,), "EFI System")
    elif gpt:
        add(BIOS_BOOT_MIB, (Flag.BIOS_GRUB,), "BIOS boot")
    # msdos BIOS boot: some old firmware only boots a disk with an active partition.
    root = add(None, () if gpt or uefi else (Flag.BOOT,), "root")
    fsinfo.append(FsEntry(line=10, real_dev=root, mountpoint="/", fs=root_fs,
                          options="defaults", dump=0, passno=1))
    if esp is not None:
        fsinfo.append(FsEntry(line=20, real_dev=esp, mountpoint="/boot/efi", fs="vfat",
                              options="umask=0077", dump=0, passno=2))
    if swap_mib:
        swap = add(swap_mib, (Flag.SWAP,), "swap")
        fsinfo.append(FsEntry(line=30, real_dev=swap, mountpoint="swap", fs="swap",
                              options="defaults", dump=0, passno=0))

    # No default_entry/timeout: the image's own grub defaults are kept.
    bootloader = Bootloader(
        flavor=BootFlavor.GRUB2,
        install_type=InstallType.EFI if uefi else InstallType.LEGACY,
        targets=(BootTarget(dev=esp if esp is not None else disk),),
    )
    layout = Layout(
        disks=(Disk(dev=disk, label=LabelType.GPT if gpt else LabelType.MSDOS, unit=Unit.MIB,
                    partitions=tuple(parts)),),
        bootloader=bootloader, fsinfo=tuple(fsinfo), source=SOURCE,
    )
    validate(layout)  # a bad `disk` name would show up here, not on the client
    return layout
