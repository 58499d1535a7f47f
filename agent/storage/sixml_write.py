"""Write a layout as SystemImager disks-layout XML.

`sixml.parse_layout(to_xml(layout))` gives back an equal layout.  Disk
selectors have no XML form (SystemImager maps disks in order): a layout
that uses them is refused rather than written as one that would install
onto other disks.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable
from typing import TypeVar

from agent.storage.model import Layout
from sysclone.errors import ConfigError

T = TypeVar("T")

_HEADER = """<!--
  Disk layout for a sysclone (SystemImager-compatible) install.
  Format: systemimager.disks-layout(7).  Sizes are in the disk's
  unit_of_measurement; "*" takes the space left.
-->
"""


def _set(el: ET.Element, name: str, value: object) -> None:
    """Write an attribute unless it is absent (None)."""
    if value is not None:
        el.set(name, value if isinstance(value, str) else str(value))


def _opt(value: T | None, conv: Callable[[T], str]) -> str | None:
    return None if value is None else conv(value)


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def to_xml(layout: Layout) -> str:
    """SystemImager disks-layout XML for `layout`."""
    chosen = [d for d in layout.disks if d.select is not None]
    if chosen:
        d = chosen[0]
        assert d.select is not None
        raise ConfigError(f"{layout.source}: disk {d.dev} is chosen by selector "
                          f"({d.select.describe()}), which SystemImager XML cannot express",
                          hint="XML layouts map their disks in order: drop the selectors "
                               "first, or keep this layout in TOML")
    root = ET.Element("config")
    for d in layout.disks:
        de = ET.SubElement(root, "disk", dev=d.dev, label_type=d.label.value,
                           unit_of_measurement=d.unit.value)
        for p in d.partitions:
            pe = ET.SubElement(de, "part", num=str(p.number), size=str(p.size),
                               p_type=p.kind.value)
            _set(pe, "id", p.part_id)
            _set(pe, "p_name", p.name)
            _set(pe, "flags", ",".join(f.value for f in p.flags) or None)
            _set(pe, "raid_dev", p.raid_dev)
            _set(pe, "lvm_group", p.lvm_group)
    if layout.raids:
        re_ = ET.SubElement(root, "raid")
        for r in layout.raids:
            rd = ET.SubElement(re_, "raid_disk", name=r.name, raid_level=r.level.value)
            _set(rd, "raid_devices", r.raid_devices)
            _set(rd, "spare_devices", r.spare_devices)
            _set(rd, "persistence", _opt(r.persistence, _yes))
            _set(rd, "rounding", r.rounding)
            _set(rd, "layout", _opt(r.layout, lambda x: x.value))
            _set(rd, "chunk_size", r.chunk_size)
            _set(rd, "lvm_group", r.lvm_group)
            _set(rd, "devices", " ".join(r.devices) or None)
            _set(rd, "metadata", r.metadata)
    if layout.crypts:
        ce = ET.SubElement(root, "luks")
        for c in layout.crypts:
            ld = ET.SubElement(ce, "luks_dev", name=c.name, real_dev=c.device)
            _set(ld, "lvm_group", c.lvm_group)
            _set(ld, "cipher", c.cipher)
            _set(ld, "key_size", c.key_size)
            _set(ld, "options", c.options)
    if layout.volume_groups:
        le = ET.SubElement(root, "lvm")
        _set(le, "version", layout.lvm_version)
        for g in layout.volume_groups:
            # All four are required by the schema; empty means "not set".
            ge = ET.SubElement(le, "lvm_group", name=g.name,
                               max_log_vols=_opt(g.max_log_vols, str) or "",
                               max_phys_vols=_opt(g.max_phys_vols, str) or "",
                               phys_extent_size=_opt(g.phys_extent_size, str) or "")
            for lv in g.volumes:
                lve = ET.SubElement(ge, "lv", name=lv.name, size=str(lv.size))
                _set(lve, "lv_options", lv.options)
    if layout.bootloader:
        b = layout.bootloader
        be = ET.SubElement(root, "bootloader", flavor=b.flavor.value,
                           install_type=b.install_type.value)
        _set(be, "default_entry", b.default_entry)
        _set(be, "timeout", b.timeout)
        for t in b.targets:
            te = ET.SubElement(be, "target", dev=t.dev)
            _set(te, "path", t.path)
    for e in layout.fsinfo:
        fe = ET.SubElement(root, "fsinfo")
        for name, value in (("line", e.line), ("comment", e.comment),
                            ("real_dev", e.real_dev), ("mount_dev", e.mount_dev),
                            ("mp", e.mountpoint), ("fs", e.fs), ("mkfs_opts", e.mkfs_opts),
                            ("options", e.options), ("dump", e.dump), ("pass", e.passno),
                            ("format", _opt(e.format, _yes)), ("label", e.label)):
            _set(fe, name, value)
    ET.indent(root, space="  ")
    return _HEADER + ET.tostring(root, encoding="unicode") + "\n"
