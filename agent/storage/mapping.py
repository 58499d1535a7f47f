"""Put a layout written for one machine onto another machine's disks.

Layouts say /dev/sda; the client may have /dev/vda, /dev/nvme0n1 or, in
tests, /dev/loop3.  The layout's disks are mapped in order onto the disks
the caller chose (in its order of preference), and every device path that
names one of them or one of their partitions is rewritten with the target
disk's partition naming (/dev/sda6 -> /dev/nvme0n1p6).  Paths that are not
the layout's disks (/dev/md0, /dev/vg/lv, /dev/dvd, LABEL=...) are kept.
Which machine disk each layout disk is, selectors included, is decided by
`selectors.choose_disks`; this only renames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from agent.storage.devices import rename_device
from agent.storage.model import Layout
from sysclone.errors import ConfigError


def disk_mapping(layout: Layout, actual_disks: Sequence[str]) -> dict[str, str]:
    """{layout disk: actual disk}, pairing them in order.  Extra actual disks
    are left alone; fewer than the layout needs is an error."""
    actual = [d if d.startswith("/") else f"/dev/{d}" for d in actual_disks]
    dupes = sorted({d for d in actual if actual.count(d) > 1})
    if dupes:
        raise ConfigError(f"disk {dupes[0]} is given twice as an install target")
    wanted = [d.dev for d in layout.disks]
    if len(actual) < len(wanted):
        have = ", ".join(actual) if actual else "none"
        raise ConfigError(
            f"{layout.source}: the layout needs {len(wanted)} disk(s) ({', '.join(wanted)}) "
            f"but {len(actual)} can be used on this machine ({have})",
            hint="add disks, name them with si.disk, or use a layout with fewer disks")
    return dict(zip(wanted, actual, strict=False))


def map_disks(layout: Layout, actual_disks: Sequence[str]) -> Layout:
    """The same layout on `actual_disks`: disks renamed in order, partition
    paths in fsinfo, RAID devices and bootloader targets rewritten."""
    mapping = disk_mapping(layout, actual_disks)
    if all(old == new for old, new in mapping.items()):
        return layout

    def ren(path: str | None) -> str | None:
        return None if path is None else rename_device(path, mapping)

    disks = tuple(replace(d, dev=mapping[d.dev]) for d in layout.disks)
    raids = tuple(replace(r, devices=tuple(rename_device(x, mapping) for x in r.devices))
                  for r in layout.raids)
    fsinfo = tuple(replace(e, real_dev=ren(e.real_dev), mount_dev=ren(e.mount_dev))
                   for e in layout.fsinfo)
    crypts = tuple(replace(c, device=rename_device(c.device, mapping)) for c in layout.crypts)
    bootloader = layout.bootloader
    if bootloader is not None:
        bootloader = replace(bootloader, targets=tuple(
            replace(t, dev=rename_device(t.dev, mapping)) for t in bootloader.targets))
    return replace(layout, disks=disks, raids=raids, fsinfo=fsinfo, bootloader=bootloader,
                   crypts=crypts)
