"""How big the devices built on partitions come out: md arrays, LUKS
volumes, LVM groups and their volumes.  A pure function of the layout and
the partition sizes, so that the plan can show every size and refuse a
layout whose logical volumes do not fit before anything is written.

The overheads are the tools' defaults, rounded up so that what is promised
fits (mdadm 1.2 keeps up to 128 MiB of reshape headroom, less on small
members; LUKS2's header is 16 MiB; LVM starts extents after 1 MiB of
metadata, more when it aligns to an md stripe).  Logical volumes are whole
extents, rounded up as lvcreate does; RAID and mirror volumes count the
copies they keep.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from agent.storage.model import Layout, LogicalVolume, RaidArray, RaidLevel, VolumeGroup
from agent.storage.units import MiB, align_down, align_up, human
from sysclone.errors import ConfigError

LUKS2_HEADER = 16 * MiB
PV_OVERHEAD = 4 * MiB  # pe_start (1 MiB) plus room for md stripe alignment
DEFAULT_EXTENT = 4 * MiB
MD_END_METADATA = ("0", "0.90", "1", "1.0")


def md_overhead(member: int, metadata: str | None) -> int:
    """Bytes of a member mdadm does not give to the array."""
    if (metadata or "1.2") in MD_END_METADATA:
        return MiB  # superblock (and bitmap) at the end
    # mdadm halves its 128 MiB headroom until it is at most 1/1024 of the device.
    headroom = 128 * MiB
    while headroom * 1024 > member and headroom > MiB:
        headroom //= 2
    return align_up(headroom + 2 * MiB, MiB)


def md_size(r: RaidArray, members: list[int], slots: int) -> int:
    """Array bytes from its present members' sizes; `slots` active devices
    (members and "missing" ones)."""
    if not members:
        return 0
    data = align_down(min(members) - md_overhead(min(members), r.metadata), MiB)
    active = r.raid_devices or slots
    per_level = {RaidLevel.RAID0: active, RaidLevel.RAID1: 1, RaidLevel.RAID4: active - 1,
                 RaidLevel.RAID5: active - 1, RaidLevel.RAID6: active - 2,
                 RaidLevel.RAID10: active / 2, RaidLevel.LINEAR: active}
    return max(0, int(data * per_level[r.level]))


_LV_KEYS = {"--type": "type", "-m": "mirrors", "--mirrors": "mirrors", "-i": "stripes",
            "--stripes": "stripes"}


def _lv_options(text: str | None) -> dict[str, str]:
    """--type, mirrors and stripes from lv_options (--x=v, --x v, -mN, -m N)."""
    args = shlex.split(text or "")
    out: dict[str, str] = {}
    i = 0
    while i < len(args):
        name, eq, value = args[i].partition("=")
        if not args[i].startswith("--") and len(args[i]) > 2:
            name, eq, value = args[i][:2], "=", args[i][2:]
        key = _LV_KEYS.get(name)
        if key is not None:
            if not eq and i + 1 < len(args):
                i += 1
                value = args[i]
            out[key] = value
        i += 1
    return out


def copies(lv: LogicalVolume) -> float:
    """Space an LV takes per byte it holds, from its lvcreate options."""
    o = _lv_options(lv.options)
    kind = o.get("type", "")
    stripes = int(o["stripes"]) if o.get("stripes", "").isdigit() else 0
    if o.get("mirrors", "").isdigit():
        return int(o["mirrors"]) + 1
    if kind in ("raid1", "mirror", "raid10"):
        return 2
    if kind in ("raid4", "raid5"):
        s = stripes or 2
        return (s + 1) / s
    if kind == "raid6":
        s = stripes or 3
        return (s + 2) / s
    return 1


@dataclass(frozen=True)
class GroupSize:
    extent: int
    extents: int  # usable extents on all its PVs
    volumes: dict[str, int]  # LV name -> bytes

    @property
    def size(self) -> int:
        return self.extent * self.extents


def group_size(layout: Layout, g: VolumeGroup, pv_sizes: list[int]) -> GroupSize:
    extent = g.phys_extent_size.bytes if g.phys_extent_size and g.phys_extent_size.bytes \
        else DEFAULT_EXTENT
    extents = sum(max(0, (s - PV_OVERHEAD) // extent) for s in pv_sizes)
    used = 0.0
    volumes: dict[str, int] = {}
    for lv in g.volumes:
        if lv.size.is_rest:
            continue
        nbytes = lv.size.bytes or 0
        n = -(-nbytes // extent)  # lvcreate rounds up to whole extents
        volumes[lv.name] = n * extent
        used += n * copies(lv)
    free = extents - int(-(-used // 1))
    where = f"{layout.source}: volume group {g.name}"
    if free < 0:
        raise ConfigError(
            f"{where} is {human(extents * extent)} but its volumes need "
            f"{human(int(used) * extent)}",
            hint="make the volumes smaller, the partitions under the group bigger, or use "
                 'size="*" for the last volume')
    rest = next((lv for lv in g.volumes if lv.size.is_rest), None)
    if rest is not None:
        n = int(free / copies(rest))
        if n < 1:
            raise ConfigError(f"{where}: no space is left for {rest.name} (size \"*\")",
                              hint="make the other volumes smaller")
        volumes[rest.name] = n * extent
    return GroupSize(extent, extents, volumes)


def stack_sizes(layout: Layout, partitions: Mapping[str, int]) -> tuple[dict[str, int],
                                                                       dict[str, GroupSize]]:
    """Bytes of every device the layout builds on its partitions (md
    arrays, LUKS volumes, LVs by /dev/vg/lv), and each volume group's
    extents.  Raises ConfigError when volumes do not fit their group."""
    from agent.storage.devices import lv_paths

    sizes = dict(partitions)
    for r in layout.raids:
        members = layout.raid_members(r.name)
        present = [sizes[m] for m in members if m != "missing" and m in sizes]
        sizes[r.name] = md_size(r, present, len(members) - (r.spare_devices or 0))
    # LUKS on partitions and arrays first: they can be physical volumes.
    for c in layout.crypts:
        if c.device in sizes:
            sizes[c.path] = max(0, sizes[c.device] - LUKS2_HEADER)
    groups = {}
    for g in layout.volume_groups:
        pvs = [sizes.get(pv, 0) for pv in layout.physical_volumes(g.name)]
        gs = group_size(layout, g, pvs)
        groups[g.name] = gs
        for name, nbytes in gs.volumes.items():
            sizes[lv_paths(g.name, name)[0]] = nbytes
    # Then LUKS on logical volumes.
    for c in layout.crypts:
        if c.path not in sizes:
            hit = layout.find_logical_volume(c.device)
            base = lv_paths(hit[0].name, hit[1].name)[0] if hit else c.device
            sizes[c.path] = max(0, sizes.get(base, 0) - LUKS2_HEADER)
    return sizes, groups
