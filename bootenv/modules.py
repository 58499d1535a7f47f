"""Which kernel modules a boot environment carries.

Groups of module paths (globs relative to lib/modules/<kver>/kernel) are
data: the standard flavor takes the storage, network and filesystem groups
an installer needs; dependencies are then closed over with modules.dep, so a
module never arrives without what it needs.  depmod is re-run on the subset
so that modules.alias only names modules that are really there: the agent's
modalias lookup can then never pick a module the initramfs lacks.
"""

from __future__ import annotations

import fnmatch
import logging
import lzma
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

MODULE_GROUPS: dict[str, tuple[str, ...]] = {
    # Disks and their controllers, real and virtual.
    "storage": (
        "drivers/block/virtio_blk.ko*", "drivers/block/loop.ko*", "drivers/block/nbd.ko*",
        "drivers/block/xen-blkfront.ko*", "drivers/block/mtip32xx/*",
        "drivers/ata/*", "drivers/scsi/*", "drivers/scsi/*/*", "drivers/nvme/*/*",
        "drivers/virtio/*", "drivers/mmc/*/*", "drivers/usb/storage/*", "drivers/usb/host/*",
        "drivers/hv/*", "drivers/xen/xen-scsifront.ko*", "drivers/cdrom/*",
    ),
    "network": (
        "drivers/net/ethernet/*/*.ko*", "drivers/net/ethernet/*/*/*.ko*",
        "drivers/net/ethernet/*/*/*/*.ko*", "drivers/net/virtio_net.ko*",
        "drivers/net/hyperv/*", "drivers/net/vmxnet3/*", "drivers/net/xen-netfront.ko*",
        "net/packet/*",
    ),
    "filesystems": (
        "fs/ext4/*", "fs/xfs/*", "fs/fat/*", "fs/efivarfs/*", "fs/isofs/*",
        "fs/nls/nls_cp437.ko*", "fs/nls/nls_iso8859-1.ko*", "fs/nls/nls_utf8.ko*",
        # FAT's default iocharset in Debian's kernels: no ESP mounts without it.
        "fs/nls/nls_ascii.ko*",
    ),
    "watchdog": ("drivers/watchdog/i6300esb.ko*", "drivers/watchdog/softdog.ko*"),
    # Only useful with the tools that drive them (see IMPLIED_BY_TOOLS).
    # Everything of md and device-mapper (bcache, thin pools, caches...):
    "raid-dm": ("drivers/md/*", "drivers/md/*/*"),
    # What the agent builds, no more: md personalities for the RAID levels
    # it creates, device-mapper with LVM's linear, striped, mirror and raid
    # targets, dm-crypt with the ciphers of LUKS2's default (aes-xts-plain64,
    # argon2 in userspace) and the kernel crypto API cryptsetup uses.
    "md": ("drivers/md/md-mod.ko*", "drivers/md/raid0.ko*", "drivers/md/raid1.ko*",
           "drivers/md/raid10.ko*", "drivers/md/raid456.ko*"),
    "dm": ("drivers/md/dm-mod.ko*", "drivers/md/dm-raid.ko*", "drivers/md/dm-mirror.ko*",
           "drivers/md/dm-log.ko*", "drivers/md/dm-region-hash.ko*"),
    "crypt": ("drivers/md/dm-crypt.ko*", "crypto/xts.ko*", "crypto/essiv.ko*",
              "crypto/af_alg.ko*", "crypto/algif_skcipher.ko*", "crypto/cryptd.ko*",
              "crypto/crypto_simd.ko*", "arch/x86/crypto/aesni-intel.ko*",
              "arch/x86/crypto/sha256-ssse3.ko*"),
    "btrfs": ("fs/btrfs/*",),
    # InfiniBand and bonding: for clusters that install over them.
    "hpc-network": ("drivers/net/ethernet/mellanox/*/*", "drivers/net/ethernet/mellanox/*/*/*",
                    "drivers/infiniband/*/*", "drivers/infiniband/*/*/*",
                    "drivers/net/bonding/*"),
}

STANDARD_GROUPS = ("storage", "network", "filesystems", "watchdog")

# Tool groups that bring their kernel modules along.
IMPLIED_BY_TOOLS = {"raid": ("md",), "lvm": ("dm",), "crypt": ("dm", "crypt"),
                    "btrfs": ("btrfs",)}

# Matched by the broad globs but of no use to an installer: test drivers,
# Fibre Channel/FCoE/iSCSI offload HBAs, and NICs long out of production
# whose firmware alone weighs megabytes (Brocade's bna, Myricom's
# myri10ge).  (mlx4/mlx5 NICs are standard: common in servers; their
# InfiniBand side is hpc-network's.)
EXCLUDE = ("drivers/scsi/scsi_debug.ko*", "drivers/scsi/*fcoe*", "drivers/scsi/qla*",
           "drivers/scsi/lpfc/*", "drivers/scsi/bfa/*", "drivers/scsi/be2iscsi/*",
           "drivers/scsi/bnx2fc/*", "drivers/scsi/cxgbi/*", "drivers/scsi/libfc/*",
           "drivers/scsi/scsi_transport_fc.ko*", "drivers/scsi/iscsi_*", "drivers/scsi/libiscsi*",
           "drivers/scsi/scsi_transport_iscsi.ko*", "drivers/scsi/ch.ko*", "drivers/scsi/st.ko*",
           "drivers/nvme/target/*", "drivers/nvme/host/nvme-rdma.ko*",
           "drivers/nvme/host/nvme-fc.ko*", "drivers/scsi/csiostor/*",
           "drivers/net/ethernet/brocade/*", "drivers/net/ethernet/myricom/*")


def groups_for(module_groups: tuple[str, ...], tool_groups: tuple[str, ...]) -> tuple[str, ...]:
    """Module groups plus those the chosen tool groups need."""
    out = list(module_groups)
    for t in tool_groups:
        out += [g for g in IMPLIED_BY_TOOLS.get(t, ()) if g not in out]
    return tuple(out)


_INDEX_FILES = ("modules.order", "modules.builtin", "modules.builtin.modinfo",
                "modules.builtin.alias.bin")


@dataclass(frozen=True)
class ModuleSelection:
    kver: str
    modules: tuple[str, ...]  # paths relative to lib/modules/<kver>
    size: int


def parse_modules_dep(text: str) -> dict[str, list[str]]:
    deps: dict[str, list[str]] = {}
    for line in text.splitlines():
        if ":" not in line:
            continue
        mod, rest = line.split(":", 1)
        deps[mod.strip()] = rest.split()
    return deps


def match_groups(all_modules: Iterable[str], patterns: Iterable[str],
                 exclude: Iterable[str] = EXCLUDE) -> set[str]:
    pats = tuple(f"kernel/{p}" for p in patterns)
    excl = tuple(f"kernel/{p}" for p in exclude)
    return {m for m in all_modules
            if any(fnmatch.fnmatchcase(m, p) for p in pats)
            and not any(fnmatch.fnmatchcase(m, p) for p in excl)}


def close_deps(wanted: set[str], deps: dict[str, list[str]]) -> set[str]:
    todo, done = list(wanted), set()
    while todo:
        m = todo.pop()
        if m in done:
            continue
        done.add(m)
        todo.extend(deps.get(m, ()))
    return done


def select(modules_dir: Path, groups: Iterable[str] = STANDARD_GROUPS,
           extra: Iterable[str] = ()) -> ModuleSelection:
    """Pick the modules of `groups` (plus `extra` paths/names) with their deps."""
    dep_file = modules_dir / "modules.dep"
    if not dep_file.is_file():
        raise SyscloneError(f"{dep_file} is missing", hint="run depmod for this kernel")
    deps = parse_modules_dep(dep_file.read_text())
    wanted: set[str] = set()
    for g in groups:
        if g not in MODULE_GROUPS:
            raise SyscloneError(f"unknown module group {g!r}",
                                hint="one of " + ", ".join(MODULE_GROUPS))
    for g in groups:
        # An exclusion does not apply to a group that names those drivers
        # itself (hpc-network asks for the mellanox ones the others leave out).
        own = MODULE_GROUPS[g]
        excl = tuple(e for e in EXCLUDE if not any(p.startswith(e.rstrip("*")) for p in own))
        wanted |= match_groups(deps, own, excl)
    by_name = {Path(m).name.split(".ko")[0].replace("-", "_"): m for m in deps}
    for e in extra:
        key = e.replace("-", "_")
        if e in deps:
            wanted.add(e)
        elif key in by_name:
            wanted.add(by_name[key])
        else:
            raise ConfigError(f"kernel {modules_dir.name} has no module {e}",
                              hint="module names as lsmod prints them")
    chosen = close_deps(wanted, deps)
    size = sum((modules_dir / m).stat().st_size for m in chosen)
    return ModuleSelection(modules_dir.name, tuple(sorted(chosen)), size)


def compress_module(data: bytes) -> bytes:
    """xz with a CRC32 check, as the kernel and libkmod both accept."""
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                         preset=9 | lzma.PRESET_EXTREME)


def install(selection: ModuleSelection, modules_dir: Path, staging_top: Path,
            compress: bool = True) -> None:
    """Copy the selected modules and regenerate the module indexes for them.

    Modules are stored xz-compressed (libkmod decompresses the few it loads):
    the kernel then unpacks megabytes less at boot, and the initrd shrinks."""
    dest = staging_top / "usr/lib/modules" / selection.kver
    for m in selection.modules:
        data = (modules_dir / m).read_bytes()
        if compress and m.endswith(".ko"):
            m, data = m + ".xz", compress_module(data)
        d = dest / m
        d.parent.mkdir(parents=True, exist_ok=True)
        d.write_bytes(data)
    for f in _INDEX_FILES:
        if (modules_dir / f).is_file():
            (dest / f).write_bytes((modules_dir / f).read_bytes())
    # depmod writes modules.dep, .alias, .symbols and their .bin indexes.
    run(["depmod", "-b", str(staging_top / "usr"), selection.kver])
