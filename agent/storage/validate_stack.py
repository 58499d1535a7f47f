"""Layout checks: RAID arrays, LUKS volumes and LVM (see `validate`).

Everything these create writes to its members (mdadm superblocks, LUKS
headers, LVM labels), so every member must be a device the layout itself
creates: a device outside the layout is refused, never written.
"""

from __future__ import annotations

import re

from agent.storage.checker import Checker
from agent.storage.mkfsopts import problems as option_problems
from agent.storage.model import RaidLevel
from agent.storage.stack import LUKS2_HEADER, group_size, md_size
from agent.storage.units import MiB, align_up, size_to_bytes
from sysclone.errors import ConfigError

# Names LVM reserves for its own sub-volumes (lvm(8) VALID NAMES).
_LV_RESERVED = ("_cdata", "_cmeta", "_corig", "_mlog", "_mimage", "_pmspare", "_rimage",
                "_rmeta", "_tdata", "_tmeta", "_vorigin", "_vdata")
# Array metadata the agent creates; container formats (imsm, ddf) need an
# mdadm container first and firmware support.
MD_METADATA_OK = ("0", "0.90", "1", "1.0", "1.1", "1.2", "default")
_CHUNKED = (RaidLevel.RAID0, RaidLevel.RAID4, RaidLevel.RAID5, RaidLevel.RAID6,
            RaidLevel.RAID10)
_CIPHER = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*(:[a-z0-9]+)?")
# crypttab(5) options that only say how to open the volume.  Not keyscript=
# (it runs a program at boot) nor the key file options: sysclone sets those.
CRYPTTAB_OPTIONS = ("discard", "no-read-workqueue", "no-write-workqueue", "same-cpu-crypt",
                    "submit-from-crypt-cpus", "nofail", "noauto", "readonly", "initramfs",
                    "tries", "timeout", "noearly")


def check(c: Checker) -> None:
    raids(c)
    crypts(c)
    lvm(c)
    fixed_groups(c)


def _fixed_size(c: Checker, dev: str, depth: int = 0) -> int | None:
    """Bytes of a device when the layout alone decides it (absolute
    partition sizes all the way down), else None."""
    hit = c.layout.find_partition(dev)
    if hit is not None:
        d, p = hit
        if p.size.amount is None or not d.unit.bytes_per_unit or not d.label.creates_table:
            return None
        return align_up(size_to_bytes(p.size.amount, d.unit, sector_size=512, percent_base=0),
                        MiB)
    if depth > 8:
        return None
    r = c.layout.raid(dev)
    if r is not None:
        members = c.layout.raid_members(dev)
        sizes = [_fixed_size(c, m, depth + 1) for m in members if m != "missing"]
        if not sizes or any(x is None for x in sizes):
            return None
        return md_size(r, [x for x in sizes if x is not None],
                       len(members) - (r.spare_devices or 0))
    v = c.layout.crypt(dev)
    if v is not None:
        under = _fixed_size(c, v.device, depth + 1)
        return None if under is None else max(0, under - LUKS2_HEADER)
    return None


def fixed_groups(c: Checker) -> None:
    """A group whose physical volumes all have sizes the layout fixes must
    hold its volumes on any disk: said now, not only by the plan."""
    for g in c.layout.volume_groups:
        pvs = [_fixed_size(c, pv) for pv in c.layout.physical_volumes(g.name)]
        if not pvs or any(x is None for x in pvs):
            continue
        try:
            group_size(c.layout, g, [x for x in pvs if x is not None])
        except ConfigError as e:
            c.add(g.src_line, e.message.removeprefix(f"{c.layout.source}: "), e.hint)


def raids(c: Checker) -> None:
    seen: set[str] = set()
    for r in c.layout.raids:
        where = f'<raid_disk name="{r.name}">'
        if r.name in seen:
            c.add(r.src_line, f"{where} is defined twice")
        seen.add(r.name)
        for dev in r.devices:
            if dev != "missing" and c.layout.disk(dev) is not None:
                c.add(r.src_line, f"{where}: member {dev} is a disk whose partitions this "
                                  "layout lists", "use one of its partitions (raid_dev on the "
                                                  "<part>)")
            elif dev != "missing" and c.device_kind(dev) != "partition":
                c.add(r.src_line, f"{where}: member {dev} is not a partition of this layout",
                      "mdadm writes a superblock on every member: members are partitions the "
                      "layout creates (raid_dev on the <part>), or \"missing\"")
            c.use(r.src_line, dev, f"a member of {r.name}")
        members = c.layout.raid_members(r.name)
        spares = r.spare_devices or 0
        if not members:
            c.add(r.src_line, f"{where} has no members",
                  f'set raid_dev="{r.name}" on partitions, or devices="..."')
            continue
        if r.raid_devices is not None and r.raid_devices + spares != len(members):
            c.add(r.src_line, f"{where} has {len(members)} member(s) ({' '.join(members)}) but "
                              f"raid_devices + spare_devices = {r.raid_devices + spares}")
        active = r.raid_devices if r.raid_devices is not None else len(members) - spares
        if active < r.level.min_devices:
            c.add(r.src_line, f"{where}: {r.level.value} needs at least {r.level.min_devices} "
                              f"active devices, it has {active}",
                  'a degraded array can list "missing" in devices')
        if all(m == "missing" for m in members):
            c.add(r.src_line, f"{where}: every member is missing")
        if r.level is RaidLevel.LINEAR:
            c.add(r.src_line, f"{where}: linear arrays are not supported",
                  "use raid0 to join devices, or LVM")
        if r.persistence is False:
            c.add(r.src_line, f'{where}: persistence="no" makes an array without a superblock, '
                              "which the installed system cannot assemble at boot",
                  'drop persistence="no"')
        if r.metadata is not None and r.metadata not in MD_METADATA_OK:
            c.add(r.src_line, f"{where}: metadata={r.metadata} needs an mdadm container, which "
                              "sysclone does not create", 'use metadata="1.2" (the default)')
        if r.rounding is not None and r.level is not RaidLevel.RAID1:
            c.add(r.src_line, f"{where}: rounding applies to raid1 only")
        if r.layout is not None and r.level not in (RaidLevel.RAID5, RaidLevel.RAID6):
            c.add(r.src_line, f"{where}: layout applies to raid5 and raid6 only")
        if r.chunk_size is not None and r.level not in _CHUNKED:
            c.add(r.src_line, f"{where}: chunk_size applies to striped levels (raid0, 4, 5, "
                              f"6, 10), not {r.level.value}")
        if spares and r.level is RaidLevel.RAID0:
            c.add(r.src_line, f"{where}: raid0 has no redundancy, so no spare devices")
        if r.lvm_group is not None:
            if c.layout.volume_group(r.lvm_group) is None:
                c.add(r.src_line, f"{where}: lvm_group {r.lvm_group!r} has no "
                                  f'<lvm_group name="{r.lvm_group}">')
            c.use(r.src_line, r.name, f"a physical volume of {r.lvm_group}")


def crypts(c: Checker) -> None:
    seen: set[str] = set()
    for v in c.layout.crypts:
        where = f'<luks_dev name="{v.name}">'
        if v.name in seen:
            c.add(v.src_line, f"{where} is defined twice")
        seen.add(v.name)
        kind = c.device_kind(v.device)
        if kind not in ("partition", "md", "lv"):
            what = "the extended partition" if kind == "extended" else (
                "another LUKS volume" if kind == "luks" else
                "not a partition, md array or logical volume of this layout")
            c.add(v.src_line, f"{where}: {v.device} is {what}",
                  "cryptsetup writes a LUKS header on it: it must be a device the layout "
                  "creates")
        else:
            c.use(v.src_line, v.device, f"encrypted as {v.path}")
        if kind == "lv" and v.lvm_group is not None:
            c.add(v.src_line, f"{where}: a LUKS volume on a logical volume cannot be a "
                              "physical volume too", "encrypt the partition or array under "
                                                     "the volume group instead")
        if v.lvm_group is not None:
            if c.layout.volume_group(v.lvm_group) is None:
                c.add(v.src_line, f"{where}: lvm_group {v.lvm_group!r} has no "
                                  f'<lvm_group name="{v.lvm_group}">')
            c.use(v.src_line, v.path, f"a physical volume of {v.lvm_group}")
        if v.cipher is not None and not _CIPHER.fullmatch(v.cipher):
            c.add(v.src_line, f"{where}: cipher {v.cipher!r} is not a cipher specification",
                  "e.g. aes-xts-plain64 (cryptsetup --cipher)")
        if v.key_size is not None and v.key_size not in (128, 256, 384, 512):
            c.add(v.src_line, f"{where}: key_size {v.key_size} is not 128, 256, 384 or 512 "
                              "bits")
        for opt in (v.options or "").split(","):
            name = opt.strip().split("=", 1)[0]
            if name and name not in CRYPTTAB_OPTIONS:
                c.add(v.src_line, f"{where}: crypttab option {name!r} is not allowed",
                      "allowed: " + ", ".join(CRYPTTAB_OPTIONS))


def lvm(c: Checker) -> None:
    seen: set[str] = set()
    for g in c.layout.volume_groups:
        where = f'<lvm_group name="{g.name}">'
        if g.name in seen:
            c.add(g.src_line, f"{where} is defined twice")
        seen.add(g.name)
        if not c.layout.physical_volumes(g.name):
            c.add(g.src_line, f"{where} has no physical volumes",
                  f'set lvm_group="{g.name}" on a partition, a raid_disk or a luks_dev')
        pe = g.phys_extent_size.bytes if g.phys_extent_size else None
        if pe is not None and (pe < 1024 or pe & (pe - 1)):
            c.add(g.src_line, f"{where}: phys_extent_size {g.phys_extent_size} is not a power "
                              "of two of at least 1K")
        if g.max_log_vols and len(g.volumes) > g.max_log_vols:
            c.add(g.src_line, f"{where}: max_log_vols={g.max_log_vols} but it has "
                              f"{len(g.volumes)} volumes", "0 means no limit")
        names: set[str] = set()
        for i, lv in enumerate(g.volumes):
            lw = f'<lv name="{lv.name}"> in {g.name}'
            if lv.name in names:
                c.add(lv.src_line, f"{lw} is defined twice")
            names.add(lv.name)
            if lv.name in ("snapshot", "pvmove") or any(s in lv.name for s in _LV_RESERVED):
                c.add(lv.src_line, f"{lw}: the name is reserved by LVM")
            if lv.size.is_rest and i != len(g.volumes) - 1:
                c.add(lv.src_line, f'{lw}: size="*" takes all the free space, so it must be '
                                   "the last volume of its group")
            if lv.size.amount is not None and lv.size.amount <= 0:
                c.add(lv.src_line, f"{lw} has size 0")
            for problem in option_problems("lvcreate", lv.options or ""):
                c.add(lv.src_line, f"{lw}: lv_options: {problem}",
                      "lv_options may shape the volume (--type, --mirrors, --stripes...), not "
                      "name devices")
