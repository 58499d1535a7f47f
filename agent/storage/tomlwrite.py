"""Write a layout in its TOML form (see `tomlread`); reading the result
gives back an equal layout."""

from __future__ import annotations

import json
from decimal import Decimal

from agent.storage.model import Layout
from agent.storage.units import Size

HEADER = """\
# Disk layout for a sysclone install (TOML form of SystemImager's disks-layout;
# the names are the XML's).  Sizes are in the disk's unit_of_measurement;
# "*" takes the space left.  `sysclone layout check` reads it as the agent does.
"""


def _str(value: str) -> str:
    # A JSON string is a TOML basic string: same quotes and escapes.
    return json.dumps(value, ensure_ascii=False)


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    return _str(str(value))


def _size(size: Size) -> str:
    """Whole numbers as TOML integers; fractions and `*` as strings (a TOML
    float would not keep "0.1" exactly)."""
    amount = size.amount
    if amount is not None and amount == amount.to_integral_value() and amount < Decimal(2**63):
        return str(int(amount))
    return _str(str(size))


class _Out:
    def __init__(self) -> None:
        self.lines: list[str] = [HEADER.rstrip("\n")]

    def table(self, header: str, pairs: list[tuple[str, object]]) -> None:
        self.lines.append("")
        self.lines.append(header)
        self.pairs(pairs)

    def pairs(self, pairs: list[tuple[str, object]]) -> None:
        for k, v in pairs:
            if v is not None:
                self.lines.append(f"{k} = {v if isinstance(v, _Raw) else _value(v)}")


class _Raw(str):
    """A value already written as TOML."""


def to_toml(layout: Layout) -> str:
    out = _Out()
    if layout.lvm_version is not None:
        out.pairs([("lvm_version", layout.lvm_version)])
    for d in layout.disks:
        out.table("[[disk]]", [("dev", d.dev), ("label_type", d.label.value),
                               ("unit_of_measurement", d.unit.value)])
        if d.select is not None:
            inline = ", ".join(f"{k} = {_value(v)}" for k, v in d.select.items())
            out.pairs([("select", _Raw("{ " + inline + " }"))])
        for p in d.partitions:
            out.table("[[disk.part]]", [
                ("num", p.number), ("size", _Raw(_size(p.size))), ("p_type", p.kind.value),
                ("id", p.part_id), ("p_name", p.name),
                ("flags", tuple(f.value for f in p.flags) or None),
                ("raid_dev", p.raid_dev), ("lvm_group", p.lvm_group)])
    for r in layout.raids:
        out.table("[[raid_disk]]", [
            ("name", r.name), ("raid_level", r.level.value), ("raid_devices", r.raid_devices),
            ("spare_devices", r.spare_devices), ("persistence", r.persistence),
            ("rounding", r.rounding), ("layout", r.layout.value if r.layout else None),
            ("chunk_size", r.chunk_size), ("lvm_group", r.lvm_group),
            ("devices", r.devices or None), ("metadata", r.metadata)])
    for c in layout.crypts:
        out.table("[[luks_dev]]", [
            ("name", c.name), ("real_dev", c.device), ("lvm_group", c.lvm_group),
            ("cipher", c.cipher), ("key_size", c.key_size), ("options", c.options)])
    for g in layout.volume_groups:
        out.table("[[lvm_group]]", [
            ("name", g.name), ("max_log_vols", g.max_log_vols),
            ("max_phys_vols", g.max_phys_vols),
            ("phys_extent_size", str(g.phys_extent_size) if g.phys_extent_size else None)])
        for lv in g.volumes:
            out.table("[[lvm_group.lv]]", [("name", lv.name), ("size", str(lv.size)),
                                           ("lv_options", lv.options)])
    b = layout.bootloader
    if b is not None:
        out.table("[bootloader]", [("flavor", b.flavor.value),
                                   ("install_type", b.install_type.value),
                                   ("default_entry", b.default_entry), ("timeout", b.timeout)])
        for t in b.targets:
            out.table("[[bootloader.target]]", [("dev", t.dev), ("path", t.path)])
    for e in layout.fsinfo:
        out.table("[[fsinfo]]", [
            ("line", e.line), ("comment", e.comment), ("real_dev", e.real_dev),
            ("mount_dev", e.mount_dev), ("mp", e.mountpoint), ("fs", e.fs),
            ("mkfs_opts", e.mkfs_opts), ("options", e.options), ("dump", e.dump),
            ("pass", e.passno), ("format", e.format), ("label", e.label)])
    return "\n".join(out.lines) + "\n"
