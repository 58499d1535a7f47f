"""The programs a boot environment carries besides the agent.

Grouped by purpose so a build can leave out what its clients will never
need.  Each entry is a program name found on the build host (Debian paths);
its libraries follow automatically.  busybox supplies everything else (sh,
mount helpers, chroot, ip, reboot...).
"""

from __future__ import annotations

TOOL_GROUPS: dict[str, tuple[str, ...]] = {
    # Partitioning itself is pyparted's (libparted); sfdisk is left to the
    # "debug" group: with libfdisk, readline and tinfo it weighs 1.2 MB.
    "core": ("rsync", "kmod", "udevadm", "lsblk", "blkid", "wipefs", "partx", "blockdev",
             "mount", "umount", "mkswap", "swapon"),
    "ext4": ("mke2fs", "mkfs.ext4", "mkfs.ext3", "mkfs.ext2"),
    "xfs": ("mkfs.xfs",),
    "vfat": ("mkfs.fat", "mkfs.vfat"),
    "fsck": ("e2fsck", "tune2fs", "xfs_repair", "fsck.fat"),
    "debug": ("sfdisk", "dmsetup", "btrfs"),
    # The agent makes btrfs subvolumes with the kernel call itself (agent.
    # filesystems), and LVM without dmsetup: their tools (1.2 MB) are for
    # the rescue shell, in "debug".
    "btrfs": ("mkfs.btrfs",),
    "raid": ("mdadm",),
    "lvm": ("lvm",),
    "crypt": ("cryptsetup",),
}

# Everything a layout can ask for (agent.plan refuses a layout whose tools
# the boot environment lacks): plain filesystems, btrfs with subvolumes,
# md RAID, LVM and LUKS.  Their kernel modules follow (modules.IMPLIED_BY_TOOLS).
DEFAULT_TOOLS = ("core", "ext4", "xfs", "vfat", "btrfs", "raid", "lvm", "crypt")

# kmod is one binary answering to several names.
KMOD_NAMES = ("modprobe", "insmod", "rmmod", "lsmod", "modinfo", "depmod")

# udev rules worth having in an installer: device nodes, block device
# symlinks (/dev/disk/by-*), md and dm.  Not the rest (input, sound, seats).
UDEV_RULES = ("50-udev-default.rules", "60-block.rules", "60-persistent-storage.rules",
              "60-persistent-storage-dm.rules", "55-dm.rules", "63-md-raid-arrays.rules",
              "64-btrfs.rules", "75-net-description.rules", "80-net-setup-link.rules")
UDEV_HELPERS = ("ata_id", "scsi_id")


def resolve(groups: tuple[str, ...]) -> tuple[str, ...]:
    from sysclone.errors import ConfigError

    out: list[str] = []
    for g in groups:
        if g not in TOOL_GROUPS:
            raise ConfigError(f"unknown tool group {g!r}", hint="one of " + ", ".join(TOOL_GROUPS))
        out += [t for t in TOOL_GROUPS[g] if t not in out]
    return tuple(out)
