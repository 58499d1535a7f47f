"""Layout checks: can the bootloader boot it? (see `validate`)"""

from __future__ import annotations

from agent.storage.checker import Checker
from agent.storage.model import (
    ESP_MOUNTPOINTS,
    FAT_FS,
    BootFlavor,
    Disk,
    InstallType,
    LabelType,
    is_bios_boot,
    is_esp,
)

_EFI_ONLY = (BootFlavor.SYSTEMD, BootFlavor.REFIND)
# md superblocks grub and the firmware can read past: at the end of the device.
_END_METADATA = ("0", "0.90", "1", "1.0")


def check(c: Checker) -> None:
    boot_readable(c)
    b = c.layout.bootloader
    if b is None:
        return
    where = f'<bootloader flavor="{b.flavor.value}" install_type="{b.install_type.value}">'
    if b.install_type is InstallType.LEGACY and b.flavor in _EFI_ONLY:
        c.add(b.src_line, f"{where}: {b.flavor.value} boots only on EFI firmware",
              'use install_type="efi", or flavor="grub2" for BIOS')
    if b.install_type is InstallType.EFI and b.flavor is BootFlavor.GRUB:
        c.add(b.src_line, f"{where}: grub (legacy grub 0.9x) cannot boot EFI",
              'use flavor="grub2"')
    for t in b.targets:
        if c.layout.disk(t.dev) is None and c.device_kind(t.dev) not in ("partition", "md"):
            c.add(t.src_line, f'<target dev="{t.dev}"> is not a disk, partition or md array '
                              "of this layout")
    if b.install_type is InstallType.EFI:
        esp(c, where, b.src_line)
    elif b.flavor in (BootFlavor.GRUB, BootFlavor.GRUB2):
        bios_boot_partitions(c, where, b.src_line)


def boot_readable(c: Checker) -> None:
    """The kernel and initrd live in /boot (or / without one): grub reads
    them before anything is unlocked, so not from a LUKS volume."""
    entry = c.layout.mount("/boot") or c.layout.mount("/")
    if entry is None or entry.real_dev is None:
        return
    if "luks" in c.stack(entry.real_dev):
        c.add(entry.src_line, f"{entry.mountpoint} is on an encrypted volume: the bootloader "
                              "cannot read the kernel from it",
              "add an unencrypted /boot (a partition or an md RAID1) and encrypt the rest")


def esp(c: Checker, where: str, line: int | None) -> None:
    """EFI boot needs a FAT filesystem on an EFI system partition, mounted
    where the image's bootloader files live (SystemImager: /boot/efi)."""
    candidates = [e for e in c.layout.fsinfo
                  if e.fs in FAT_FS and e.mountpoint in ESP_MOUNTPOINTS and e.real_dev]
    for e in candidates:
        assert e.real_dev is not None
        parts = c.partitions_of(e.real_dev)
        if parts and all(is_esp(d.label, p) for d, p in parts):
            r = c.layout.raid(e.real_dev)
            if r is not None and (r.metadata or "1.2") not in _END_METADATA:
                c.add(r.src_line, f'<raid_disk name="{r.name}"> holds the EFI system '
                                  f"partition, but its metadata {r.metadata or '1.2'} sits at "
                                  "the start where the firmware expects FAT",
                      'use metadata="1.0" for an ESP mirror')
            return
    if candidates:
        e = candidates[0]
        c.add(e.src_line, f"{where}: {e.real_dev} on {e.mountpoint} is not flagged as an EFI "
                          "system partition",
              'add flags="esp" to its <part> so the firmware finds it')
        return
    esps = [(d, p) for d, p in c.layout.partitions() if is_esp(d.label, p)]
    if esps:
        d, p = esps[0]
        c.add(p.src_line, f"{where}: the EFI system partition {d.partition_path(p.number)} has "
                          "no FAT <fsinfo> on /boot/efi",
              f'add <fsinfo real_dev="{d.partition_path(p.number)}" mp="/boot/efi" '
              'fs="vfat" .../>')
        return
    c.add(line, f"{where} needs an EFI system partition",
          'a <part flags="esp"> (e.g. 512 MiB) with <fsinfo fs="vfat" mp="/boot/efi">')


def bios_boot_partitions(c: Checker, where: str, line: int | None) -> None:
    """grub on a GPT disk from BIOS embeds its core image in a BIOS boot
    partition; without one grub-install fails (or, forced, relies on
    fragile block lists).  Not added automatically: that would change
    partition numbers the fsinfo lines refer to."""
    b = c.layout.bootloader
    assert b is not None
    disks: list[tuple[Disk, int | None]] = []
    for t in b.targets:
        d = c.layout.disk(t.dev)
        if d is not None:
            disks.append((d, t.src_line))
        elif c.layout.raid(t.dev) is not None:  # grub on each member's disk
            disks.extend((m[0], t.src_line) for m in c.partitions_of(t.dev) or [])
    for d, tline in disks:
        if d.label not in (LabelType.GPT, LabelType.CONVERT):
            continue
        if not any(is_bios_boot(p) for p in d.partitions):
            c.add(tline or line, f"{where}: {b.flavor.value} on {d.dev} needs a BIOS boot "
                                 f"partition: {d.dev} is gpt",
                  'add <part num="N" size="1" p_type="primary" flags="bios_grub"/> (1 MiB), '
                  'or use label_type="msdos", or install_type="efi"')
