"""Which drivers a boot environment carries, and what each of them drives.

    --modules standard    the module groups (bootenv.modules) plus what the
                          tool groups need: drives bare metal and VMs
    --modules all         every module of the kernel
    --modules loaded      what the golden client had loaded (its /proc/modules,
                          recorded at capture, or --modules-from FILE): UYOK
    --modules a,mlx5_*    module groups, module names or shell globs
    --add-modules x,y*    more by name or glob, whatever the base

Whatever the base, the set is closed over modules.dep and soft dependencies
(kernels.moduledb), and each module brings the firmware it declares that
the kernel tree carries.  The manifest then lists every module with the
modaliases it matches and its firmware, carried and lacking: what
`bootenv check` reads to say, before any boot, which devices it can drive.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bootenv import modules as groups_lib
from kernels.assemble import FIRMWARE_SUFFIXES
from kernels.moduledb import ModuleDB, module_name
from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

HOW = ("standard", "all", "loaded")

# The kernel modules a tool group is useless without: mkfs.xfs makes a
# filesystem the agent then cannot mount, mdadm an array without md.  A
# driver set without them (UYOK loaded: the golden client never used them)
# leaves the tools out too, unless they were asked for by name (--tools);
# so does a client's listing where they were loaded but idle (use count 0:
# nothing mounted, no array or device-mapper table), unless --add-modules
# names them.  The tools weigh more than the drivers: lvm alone brings
# libsystemd, libgcrypt and libedit, 6 MB unpacked.  The agent's plan then
# refuses a layout that needs them (bootenv.json in the boot environment
# says why), before any disk is touched.
TOOL_MODULES = {"ext4": ("ext4",), "xfs": ("xfs",), "vfat": ("vfat",), "btrfs": ("btrfs",),
                "raid": ("md_mod",), "lvm": ("dm_mod",), "crypt": ("dm_crypt",)}


# Modules a client's listing (`loaded`) carries that serve only a running
# system, never an install: FUSE, binfmt_misc, the automounter, netfilter
# (iptables, nftables), configfs (target and gadget setups).  Debian's
# systemd alone loads fuse, autofs4, configfs and the iptables pair at
# boot: 0.85 MB of a cloud kernel's modules, a quarter of the client's
# list by size.  Left out of `loaded` unless --add-modules names them (or
# a kept module depends on one); by path in the kernel's tree.
RUNNING_SYSTEM_ONLY = ("kernel/fs/fuse/", "kernel/fs/binfmt_misc.", "kernel/fs/autofs/",
                       "kernel/fs/configfs/", "kernel/net/netfilter/",
                       "kernel/net/ipv4/netfilter/", "kernel/net/ipv6/netfilter/",
                       "kernel/net/bridge/netfilter/")


def running_system_only(path: str) -> bool:
    """Whether a module (its path in the kernel's tree) serves only a
    running system (RUNNING_SYSTEM_ONLY)."""
    return path.startswith(RUNNING_SYSTEM_ONLY)


@dataclass(frozen=True)
class DriverRequest:
    """What `--modules`, `--modules-from` and `--add-modules` asked for."""

    how: str = "standard"  # standard | all | loaded | list
    groups: tuple[str, ...] = groups_lib.STANDARD_GROUPS  # standard, list
    names: tuple[str, ...] = ()  # loaded: the client's modules; list: names and globs
    add: tuple[str, ...] = ()
    idle: tuple[str, ...] = ()  # loaded: those nothing used on the client (use count 0)

    def without(self, names: Sequence[str]) -> DriverRequest:
        """The same request, the modules `names` of the client's listing left out."""
        return replace(self, names=tuple(n for n in self.names if n not in set(names)))

    @classmethod
    def parse(cls, modules: str | None, add: Sequence[str] = (),
              loaded: Sequence[str] = (), idle: Sequence[str] = ()) -> DriverRequest:
        """`--modules` as given (None: standard); `loaded` is the listing
        for `loaded`, `idle` the part of it the client was not using."""
        value = (modules or "standard").strip()
        if value in ("standard", "all"):
            return cls(value, add=tuple(add))
        if value == "loaded":
            return cls("loaded", (), tuple(loaded), tuple(add), tuple(idle))
        items = tuple(x for x in value.replace(" ", ",").split(",") if x)
        if not items:
            raise ConfigError("--modules is empty",
                              hint="standard, all, loaded, or module groups/names/globs")
        groups = tuple(i for i in items if i in groups_lib.MODULE_GROUPS)
        names = tuple(i for i in items if i not in groups_lib.MODULE_GROUPS)
        return cls("list", groups, names, tuple(add))


@dataclass(frozen=True)
class DriverSet:
    how: str
    groups: tuple[str, ...]  # module groups taken whole
    names: tuple[str, ...]  # the chosen modules, closure included (sorted)
    paths: tuple[str, ...]  # their files, relative to lib/modules/<kver>
    size: int  # bytes of module files (uncompressed)
    firmware: tuple[str, ...]  # files carried, as the kernel tree names them
    firmware_size: int
    firmware_missing: dict[str, tuple[str, ...]]  # module -> declared, not in the tree
    left_out: tuple[str, ...] = ()  # loaded: the client's modules of no use to an install


def choose(db: ModuleDB, modules_dir: Path, firmware_dir: Path | None, req: DriverRequest,
           tool_groups: Sequence[str]) -> DriverSet:
    """Resolve a request against one kernel."""
    groups: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()
    if req.how == "all":
        wanted = [m.name for m in db.loadable]
    elif req.how == "loaded":
        if not req.names:
            raise ConfigError("--modules loaded: no module listing",
                              hint="a kernel from a captured image records one; else "
                                   "--modules-from FILE (/proc/modules or lsmod)")
        # A module of another kernel build is simply not here: say which.
        known = [n for n in req.names if db.get(n) is not None]
        gone = sorted(set(req.names) - set(known))
        if gone:
            log.warning("kernel %s has no module %s (loaded on the client)", db.kver,
                        ", ".join(gone))
        added = set(db.match(req.add))
        left_out = tuple(sorted(n for n in known if n not in added
                                and running_system_only(db.modules[n].path)))
        wanted = [n for n in known if n not in left_out]
    elif req.how in ("standard", "list"):
        groups = groups_lib.groups_for(req.groups, tuple(tool_groups)) \
            if req.how == "standard" or req.groups else ()
        sel = groups_lib.select(modules_dir, groups) if groups else None
        wanted = [module_name(p) for p in sel.modules] if sel else []
        wanted += db.match(req.names)
    else:
        raise ConfigError(f"--modules {req.how!r}: expected one of {', '.join(HOW)} or a list")
    wanted += db.match(req.add)
    names = db.closure(wanted)
    paths = db.paths(names)
    size = sum((modules_dir / p).stat().st_size for p in paths)
    carried: list[str] = []
    missing: dict[str, tuple[str, ...]] = {}
    fw_size = 0
    for n in names:
        lacking = []
        for fw in db.modules[n].firmware:
            found = _firmware_file(firmware_dir, fw)
            if found is None:
                lacking.append(fw)
            elif found not in carried:
                carried.append(found)
                fw_size += (firmware_dir / found).stat().st_size  # type: ignore[operator]
        if lacking:
            missing[n] = tuple(lacking)
    return DriverSet(req.how, groups, tuple(names), tuple(sorted(paths)), size,
                     tuple(sorted(carried)), fw_size, missing,
                     tuple(n for n in left_out if n not in names))


def usable_tools(tool_groups: Sequence[str], db: ModuleDB, chosen: DriverSet,
                 req: DriverRequest | None = None
                 ) -> tuple[tuple[str, ...], dict[str, list[str]]]:
    """The tool groups whose kernel modules the driver set has (or the
    kernel has built in) and, for a client's listing (`req`), that the
    client used or --add-modules named; and the others with the modules
    they lack."""
    idle = set(req.idle) - set(db.match(req.add)) if req else set()
    have = set(chosen.names) - idle
    kept: list[str] = []
    dropped: dict[str, list[str]] = {}
    for group in tool_groups:
        lacking = [m for m in TOOL_MODULES.get(group, ())
                   if m not in have and not ((mod := db.get(m)) is not None and mod.builtin)]
        if lacking:
            dropped[group] = lacking
        else:
            kept.append(group)
    return tuple(kept), dropped


def idle_stack_modules(dropped: dict[str, list[str]], req: DriverRequest) -> tuple[str, ...]:
    """The client's idle modules whose stack was left out: of no use to
    the boot environment either (dm_mod without LVM is 0.4 MB).  A module
    something else kept needs comes back with the closure."""
    idle = set(req.idle)
    return tuple(sorted({m for mods in dropped.values() for m in mods if m in idle}))


# What a tool group lets the agent build, as the plan names it.
STACK_OF = {"ext4": "ext2/3/4 filesystems", "xfs": "xfs filesystems",
            "vfat": "FAT filesystems (an EFI system partition)",
            "btrfs": "btrfs filesystems", "raid": "md RAID arrays", "lvm": "LVM volume groups",
            "crypt": "LUKS encryption"}


def storage_stacks(kept: Sequence[str], dropped: dict[str, list[str]], req: DriverRequest
                   ) -> dict[str, Any]:
    """What the boot environment can build and, for what it cannot, why and
    how to rebuild it: manifest.json's `storage`, and bootenv.json inside
    the boot environment, where the agent's plan reads it."""
    idle = set(req.idle)
    how = {"loaded": "--modules loaded", "list": "a --modules list",
           "standard": "--modules standard", "all": "--modules all"}[req.how]
    stacks: dict[str, Any] = {}
    for group in TOOL_MODULES:
        if group in kept:
            stacks[group] = {"can": True, "what": STACK_OF[group]}
        elif group in dropped:
            mods = dropped[group]
            unused = [m for m in mods if m in idle]
            if unused:
                why = (f"built with {how} from a client that had {', '.join(unused)} loaded "
                       f"but unused (no {STACK_OF[group]})")
            elif req.how == "loaded":
                why = f"built with {how} from a client without {', '.join(mods)}"
            else:
                why = f"built with {how} without {', '.join(mods)}"
            stacks[group] = {"can": False, "what": STACK_OF[group], "why": why,
                             "add_modules": list(mods)}
        else:
            stacks[group] = {"can": False, "what": STACK_OF[group],
                             "why": "built without the tool group " + group,
                             "add_modules": []}
    return stacks


def _firmware_file(firmware_dir: Path | None, name: str) -> str | None:
    if firmware_dir is None or name.startswith("/") or ".." in name.split("/"):
        return None
    for s in FIRMWARE_SUFFIXES:
        if (firmware_dir / f"{name}{s}").is_file():
            return f"{name}{s}"
    return None


def install_firmware(drivers: DriverSet, firmware_dir: Path | None, staging_top: Path) -> None:
    """Copy the carried firmware to usr/lib/firmware, where the kernel's
    loader looks (/lib is a symlink to it)."""
    if firmware_dir is None:
        return
    dest = staging_top / "usr" / "lib" / "firmware"
    for name in drivers.firmware:
        out = dest / name
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(firmware_dir / name, out)


def manifest(db: ModuleDB, drivers: DriverSet) -> dict[str, Any]:
    """The driver closure as manifest.json carries it."""
    carried = set(drivers.firmware)

    def has(fw: str) -> str | None:
        return next((fw + s for s in FIRMWARE_SUFFIXES if fw + s in carried), None)

    mods = []
    for n in drivers.names:
        m = db.modules[n]
        mods.append({"name": n, "path": m.path, "aliases": list(m.aliases),
                     "depends": list(m.depends),
                     "firmware": [f for fw in m.firmware if (f := has(fw))],
                     "firmware_missing": list(drivers.firmware_missing.get(n, ()))})
    builtin = [{"name": m.name, "aliases": list(m.aliases)}
               for m in sorted(db.modules.values(), key=lambda m: m.name)
               if m.builtin and m.aliases]
    return {"how": drivers.how, "groups": list(drivers.groups), "count": len(mods),
            "left_out": list(drivers.left_out),
            "bytes": drivers.size, "list": mods, "builtin": builtin,
            "builtin_names": sorted(m.name for m in db.modules.values() if m.builtin)}


def firmware_manifest(drivers: DriverSet) -> dict[str, Any]:
    missing = sorted({f for fws in drivers.firmware_missing.values() for f in fws})
    return {"count": len(drivers.firmware), "bytes": drivers.firmware_size,
            "files": list(drivers.firmware), "missing": missing}

