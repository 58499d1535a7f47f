"""The plan's devices above the partitions (md arrays, LUKS volumes, LVM
groups and volumes) and what the bootloader is told.

Identifiers are chosen here, before anything exists: the md array UUIDs
(mdadm --uuid), the LUKS UUIDs (cryptsetup --uuid).  mdadm.conf, crypttab
and the initrd policy can then name them from the plan alone.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from agent.plan import ArrayPlan, CryptPlan, FsPlan, GroupPlan, LvPlan
from agent.storage.devices import lv_paths, split_partition_path
from agent.storage.model import ESP_MOUNTPOINTS, FAT_FS, Layout
from agent.storage.stack import GroupSize


def md_uuid() -> str:
    """A new array UUID in mdadm's notation (four groups of 8 hex digits)."""
    h = uuid.uuid4().hex
    return ":".join(h[i:i + 8] for i in range(0, 32, 8))


def plan_arrays(layout: Layout, sizes: Mapping[str, int], hostname: str
                ) -> tuple[ArrayPlan, ...]:
    out = []
    for r in layout.raids:
        members = layout.raid_members(r.name)
        spares = r.spare_devices or 0
        metadata = r.metadata if r.metadata not in (None, "default") else "1.2"
        assert metadata is not None
        out.append(ArrayPlan(
            name=r.name, level=r.level.value, members=members,
            raid_devices=r.raid_devices or len(members) - spares, spares=spares,
            metadata=metadata, uuid=md_uuid(), homehost=hostname.split(".")[0],
            size=sizes.get(r.name, 0), chunk=r.chunk_size,
            layout=r.layout.value if r.layout else None, rounding=r.rounding))
    return tuple(out)


def plan_crypts(layout: Layout, sizes: Mapping[str, int]) -> tuple[CryptPlan, ...]:
    """In the order they can be opened: on partitions and arrays first,
    then on logical volumes (after the groups exist)."""
    def on_lv(device: str) -> bool:
        return layout.find_logical_volume(device) is not None

    ordered = sorted(layout.crypts, key=lambda c: on_lv(c.device))
    return tuple(CryptPlan(name=c.name, device=c.device, uuid=str(uuid.uuid4()),
                           size=sizes.get(c.path, 0), cipher=c.cipher, key_size=c.key_size,
                           options=c.options) for c in ordered)


def plan_groups(layout: Layout, groups: Mapping[str, GroupSize]) -> tuple[GroupPlan, ...]:
    out = []
    for g in layout.volume_groups:
        gs = groups[g.name]
        vols = tuple(LvPlan(name=lv.name, path=lv_paths(g.name, lv.name)[0],
                            size=gs.volumes.get(lv.name, 0),
                            extents=None if lv.size.is_rest
                            else gs.volumes.get(lv.name, 0) // gs.extent,
                            options=lv.options) for lv in g.volumes)
        out.append(GroupPlan(name=g.name, pvs=layout.physical_volumes(g.name),
                             extent=gs.extent, size=gs.size, volumes=vols,
                             max_lv=g.max_log_vols, max_pv=g.max_phys_vols))
    return tuple(out)


@dataclass(frozen=True)
class BootFacts:
    boot_disks: tuple[str, ...]
    esp_mountpoint: str | None
    boot_raid_disks: tuple[str, ...]
    kernel_args: tuple[str, ...]
    root_stack: frozenset[str]


_FEATURE = {"md": "md", "lv": "lvm", "luks": "luks"}


def storage_under(layout: Layout, device: str) -> frozenset[str]:
    """The storage features (md, lvm, luks) a device is built on."""
    from agent.storage.checker import Checker

    return frozenset(_FEATURE[k] for k in Checker(layout).stack(device) if k in _FEATURE)


def _disk_of(layout: Layout, dev: str) -> str | None:
    hit = split_partition_path(dev, [d.dev for d in layout.disks])
    return hit[0] if hit else (dev if layout.disk(dev) else None)


def boot_facts(layout: Layout, fw: str, filesystems: tuple[FsPlan, ...],
               arrays: tuple[ArrayPlan, ...], crypts: tuple[CryptPlan, ...],
               groups: tuple[GroupPlan, ...], disks: list[str]) -> BootFacts:
    """Where grub goes, where the ESP is, and the disks under a RAID1 /boot.

    BIOS: grub's boot code goes on disks: the targets that are disks, the
    disks of targets that are partitions or arrays, and every disk of the
    array /boot (or /) is on, so that the machine boots from any of them.
    UEFI: the targets as written (the ESP), the ESP otherwise."""
    boot = next((f for f in filesystems if f.mountpoint == "/boot"), None) or \
        next((f for f in filesystems if f.mountpoint == "/"), None)
    raid_disks: list[str] = []
    array = next((a for a in arrays if boot is not None and a.name == boot.device), None)
    if array is not None:
        raid_disks = [d for m in array.members if (d := _disk_of(layout, m))]
    esp = next((f for f in filesystems if f.fs in FAT_FS and f.mountpoint in ESP_MOUNTPOINTS),
               None)
    targets = layout.bootloader.targets if layout.bootloader else ()
    if fw == "uefi":
        boot_disks = tuple(t.dev for t in targets) or ((esp.device,) if esp else (disks[0],))
    else:
        found: list[str] = []
        for t in targets:
            a = next((a for a in arrays if a.name == t.dev), None)
            found += [d for m in a.members if (d := _disk_of(layout, m))] if a else \
                [d for d in [_disk_of(layout, t.dev)] if d]
        found += raid_disks
        boot_disks = tuple(dict.fromkeys(found)) or (disks[0],)
    args = [f"rd.md.uuid={a.uuid}" for a in arrays]
    args += [f"rd.luks.uuid={c.uuid}" for c in crypts]
    args += [f"rd.lvm.vg={g.name}" for g in groups]
    root = next((f for f in filesystems if f.mountpoint == "/"), None)
    return BootFacts(boot_disks, esp.mountpoint if esp and fw == "uefi" else None,
                     tuple(dict.fromkeys(raid_disks)), tuple(args),
                     storage_under(layout, root.device) if root else frozenset())
