"""Read the TOML form of a disk layout into the same model as the XML.

The TOML form uses SystemImager's element and attribute names, so the
manual page describes both and `sysclone layout convert` is mechanical:

    [[disk]]                      dev, label_type, unit_of_measurement,
      select = {...}              (TOML only) size, model, serial, wwn, bus,
                                  by_path, order, rotational: see
                                  agent.storage.selectors
    [[disk.part]]                 num, size, p_type, id, p_name, flags = [...],
                                  raid_dev, lvm_group
    [[raid_disk]]                 name, raid_level, raid_devices, ... devices = [...]
    [[luks_dev]]                  name, real_dev, lvm_group, cipher, key_size, options
    lvm_version = 2
    [[lvm_group]] / [[lvm_group.lv]]
    [bootloader] / [[bootloader.target]]
    [[fsinfo]]                    line, real_dev, mount_dev, mp, fs, mkfs_opts,
                                  options, dump, pass, format, label, comment

Numbers are TOML integers, switches TOML booleans, sizes a number or a
string ("0.5", "*", "4G").  Schema problems stop the read with one line
naming the file, the line and the table; `validate` checks the rest.
tomllib keeps no positions, so lines come from the table headers and keys
as written (`tomllines`).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable
from decimal import Decimal
from enum import Enum
from typing import Any, TypeVar

from agent.storage import names
from agent.storage.model import (
    BootFlavor,
    Bootloader,
    BootTarget,
    CryptVolume,
    Disk,
    DiskSelector,
    Flag,
    FsEntry,
    InstallType,
    LabelType,
    Layout,
    LogicalVolume,
    Partition,
    PartType,
    RaidArray,
    RaidLayout,
    RaidLevel,
    VolumeGroup,
)
from agent.storage.tomllines import Key, Lines
from agent.storage.units import LvmSize, Size, Unit, format_decimal
from sysclone.errors import ConfigError

E = TypeVar("E", bound=Enum)

class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.where = Lines(text)

    def error(self, key: Key, what: str, message: str, hint: str | None = None,
              field: str | None = None) -> ConfigError:
        line = self.where.key(key, field) if field else self.where.table(key)
        at = f"{self.source}:{line}" if line else self.source
        return ConfigError(f"{at}: {what} {message}", hint=hint)

    def table(self, data: Any, key: Key, what: str, required: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.error(key, what, "must be a table")
        allowed = required + optional
        for name in data:
            if name not in allowed:
                raise self.error(key, what, f"has unknown key {name!r}",
                                 hint="allowed: " + ", ".join(allowed), field=name)
        for name in required:
            if name not in data:
                raise self.error(key, what, f"needs key {name!r}")
        return data

    def text(self, d: dict[str, Any], key: Key, what: str, name: str,
             required: bool = False) -> str | None:
        v = d.get(name)
        if v is None:
            return None
        if not isinstance(v, str):
            raise self.error(key, what, f"{name} must be a string", field=name)
        v = v.strip()
        if required and not v:
            raise self.error(key, what, f"{name} must not be empty", field=name)
        return v or None

    def need(self, d: dict[str, Any], key: Key, what: str, name: str) -> str:
        v = self.text(d, key, what, name, required=True)
        assert v is not None
        return v

    def integer(self, d: dict[str, Any], key: Key, what: str, name: str,
                minimum: int | None = 0) -> int | None:
        v = d.get(name)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.error(key, what, f"{name} = {v!r} is not a whole number", field=name)
        if minimum is not None and v < minimum:
            raise self.error(key, what, f"{name} = {v} must be at least {minimum}", field=name)
        return v

    def boolean(self, d: dict[str, Any], key: Key, what: str, name: str) -> bool | None:
        v = d.get(name)
        if v is not None and not isinstance(v, bool):
            raise self.error(key, what, f"{name} = {v!r} must be true or false", field=name)
        return v

    def enum(self, d: dict[str, Any], key: Key, what: str, name: str,
             parse: Callable[[str], E], spellings: list[str]) -> E:
        value = self.need(d, key, what, name)
        try:
            return parse(value)
        except ValueError:
            raise self.error(key, what, f"{name} = {value!r} is not one of "
                             + ", ".join(spellings), field=name) from None

    def strings(self, d: dict[str, Any], key: Key, what: str, name: str) -> tuple[str, ...]:
        v = d.get(name, [])
        if not isinstance(v, list) or not all(isinstance(x, str) and x.strip() for x in v):
            raise self.error(key, what, f"{name} must be a list of strings", field=name)
        return tuple(x.strip() for x in v)

    def items(self, data: dict[str, Any], parent: Key, name: str) -> list[tuple[Key, Any]]:
        v = data.get(name, [])
        if not isinstance(v, list):
            raise self.error(parent, f"[[{name}]]", "must be an array of tables",
                             field=name)
        return [((*parent, name, i), x) for i, x in enumerate(v)]

    # -- sections --
    def layout(self, data: dict[str, Any]) -> Layout:
        self.table(data, (), "the layout", (), ("disk", "raid_disk", "luks_dev", "lvm_version",
                                                  "lvm_group", "bootloader", "fsinfo"))
        # In the file's usual order, so that the first problem is the one
        # nearest the top; a missing section is said last.
        lvm_version = self.integer(data, (), "the layout", "lvm_version")
        if lvm_version not in (None, 1, 2):
            raise self.error((), "the layout", f"lvm_version = {lvm_version} must be 1 or 2",
                             field="lvm_version")
        disks = tuple(self.disk(k, d) for k, d in self.items(data, (), "disk"))
        raids = tuple(self.raid(k, r) for k, r in self.items(data, (), "raid_disk"))
        crypts = tuple(self.luks(k, c) for k, c in self.items(data, (), "luks_dev"))
        groups = tuple(self.group(k, g) for k, g in self.items(data, (), "lvm_group"))
        boot = data.get("bootloader")
        bootloader = self.bootloader(("bootloader",), boot) if boot is not None else None
        fsinfo = tuple(self.fsinfo(k, f) for k, f in self.items(data, (), "fsinfo"))
        if not disks:
            raise ConfigError(f"{self.source}: the layout has no [[disk]]",
                              hint="a layout needs at least one [[disk]] with [[disk.part]]s")
        if not fsinfo:
            raise ConfigError(f"{self.source}: the layout has no [[fsinfo]]",
                              hint="add [[fsinfo]] entries, at least one for /")
        return Layout(disks=disks, raids=raids, volume_groups=groups, lvm_version=lvm_version,
                      bootloader=bootloader, fsinfo=fsinfo, crypts=crypts, source=self.source)

    def disk(self, key: Key, d: Any) -> Disk:
        d = self.table(d, key, "[[disk]]", ("dev", "label_type", "unit_of_measurement", "part"),
                       ("select",))
        dev = self.need(d, key, "[[disk]]", "dev")
        what = f'[[disk]] dev="{dev}"'
        if not names.DISK_DEV.fullmatch(dev):
            raise self.error(key, what, "is not a device path", hint="expected e.g. /dev/sda",
                             field="dev")
        label = self.enum(d, key, what, "label_type", LabelType, [x.value for x in LabelType])
        unit = self.enum(d, key, what, "unit_of_measurement", Unit.parse, Unit.spellings())
        parts = tuple(self.part(k, p, dev) for k, p in self.items(d, key, "part"))
        if not parts:
            raise self.error(key, what, "needs at least one [[disk.part]]")
        seen: set[int] = set()
        for (k, _), p in zip(self.items(d, key, "part"), parts, strict=True):
            if p.number in seen:
                raise self.error(k, f"[[disk.part]] num={p.number}",
                                 f"on {dev}: partition number {p.number} is used twice")
            seen.add(p.number)
        select = d.get("select")
        return Disk(dev=dev, label=label, unit=unit, partitions=parts,
                    select=self.selector((*key, "select"), key, select) if select is not None
                    else None, src_line=self.where.table(key))

    def selector(self, key: Key, disk_key: Key, s: Any) -> DiskSelector:
        # `select = {...}` inline has no header of its own: point at the key.
        line_key = key if self.where.table(key) else disk_key
        what = "select"
        s = self.table(s, line_key, what, (), DiskSelector.FIELDS)
        text = {k: self.text(s, line_key, what, k) for k in DiskSelector.FIELDS
                if k not in ("order", "rotational")}
        return DiskSelector(order=self.integer(s, line_key, what, "order", minimum=1),
                            rotational=self.boolean(s, line_key, what, "rotational"), **text)

    def part(self, key: Key, p: Any, dev: str) -> Partition:
        p = self.table(p, key, "[[disk.part]]", ("num", "size", "p_type"),
                       ("id", "p_name", "flags", "raid_dev", "lvm_group"))
        number = self.integer(p, key, "[[disk.part]]", "num", minimum=1)
        assert number is not None
        what = f"[[disk.part]] num={number}"
        size = self.size(p, key, what, dev)
        kind = self.enum(p, key, what, "p_type", PartType, [t.value for t in PartType])
        part_id = self.text(p, key, what, "id")
        if part_id is not None and not names.PART_ID.fullmatch(part_id):
            raise self.error(key, what, f"on {dev}: id={part_id!r} is not a partition type",
                             hint="msdos: 1-2 hex digits (83, 8e); gpt: 4 hex digits (8300) "
                                  "or a type GUID", field="id")
        flags: list[Flag] = []
        for f in self.strings(p, key, what, "flags"):
            try:
                flag = Flag(f)
            except ValueError:
                raise self.error(key, what, f"flag {f!r} is not one of "
                                 + ", ".join(x.value for x in Flag), field="flags") from None
            if flag not in flags:
                flags.append(flag)
        raid_dev = self.text(p, key, what, "raid_dev")
        if raid_dev is not None and not names.MD_NAME.fullmatch(raid_dev):
            raise self.error(key, what, f"raid_dev = {raid_dev!r} is not an md device",
                             hint="expected /dev/mdN or /dev/md/NAME", field="raid_dev")
        name = self.text(p, key, what, "p_name")
        return Partition(number=number, size=size, kind=kind,
                         part_id=part_id.lower() if part_id else None,
                         name=" ".join(name.split()) if name else None, flags=tuple(flags),
                         raid_dev=raid_dev, lvm_group=self.lvm_name(p, key, what, "lvm_group"),
                         src_line=self.where.table(key))

    def size(self, p: dict[str, Any], key: Key, what: str, dev: str) -> Size:
        v = p.get("size")
        text = v if isinstance(v, str) else (
            format_decimal(Decimal(str(v))) if isinstance(v, int | float)
            and not isinstance(v, bool) else None)
        size = Size.parse(text.strip()) if text is not None else None
        if size is None:
            raise self.error(key, what, f"on {dev}: size = {v!r} is not a number or '*'",
                             hint="the unit is the disk's unit_of_measurement", field="size")
        return size

    def lvm_name(self, d: dict[str, Any], key: Key, what: str, name: str) -> str | None:
        v = self.text(d, key, what, name)
        if v is not None and not names.valid_lvm_name(v):
            raise self.error(key, what, f"{name} = {v!r} is not a valid LVM name",
                             hint="letters, digits, + _ . and - (not first), at most 128",
                             field=name)
        return v

    def raid(self, key: Key, r: Any) -> RaidArray:
        r = self.table(r, key, "[[raid_disk]]", ("name", "raid_level"),
                       ("raid_devices", "spare_devices", "persistence", "rounding", "layout",
                        "chunk_size", "lvm_group", "devices", "metadata"))
        name = self.need(r, key, "[[raid_disk]]", "name")
        what = f'[[raid_disk]] name="{name}"'
        if not names.MD_NAME.fullmatch(name):
            raise self.error(key, what, "is not an md device",
                             hint="expected /dev/mdN or /dev/md/NAME", field="name")
        chunk = self.text(r, key, what, "chunk_size")
        if chunk is not None and not names.CHUNK.fullmatch(chunk):
            raise self.error(key, what, f"chunk_size = {chunk!r} is not a size",
                             hint="KiB, or a number with K, M or G (mdadm --chunk)",
                             field="chunk_size")
        metadata = self.text(r, key, what, "metadata")
        if metadata is not None and metadata not in names.MD_METADATA:
            raise self.error(key, what, f"metadata = {metadata!r} is not one of "
                             + ", ".join(names.MD_METADATA), field="metadata")
        layout = None
        if r.get("layout") is not None:
            layout = self.enum(r, key, what, "layout", RaidLayout, [x.value for x in RaidLayout])
        return RaidArray(
            name=name,
            level=self.enum(r, key, what, "raid_level", RaidLevel.parse, RaidLevel.spellings()),
            raid_devices=self.integer(r, key, what, "raid_devices", minimum=1),
            spare_devices=self.integer(r, key, what, "spare_devices"),
            persistence=self.boolean(r, key, what, "persistence"),
            rounding=self.integer(r, key, what, "rounding"), layout=layout, chunk_size=chunk,
            lvm_group=self.lvm_name(r, key, what, "lvm_group"),
            devices=self.strings(r, key, what, "devices"), metadata=metadata,
            src_line=self.where.table(key))

    def luks(self, key: Key, c: Any) -> CryptVolume:
        c = self.table(c, key, "[[luks_dev]]", ("name", "real_dev"),
                       ("lvm_group", "cipher", "key_size", "options"))
        name = self.need(c, key, "[[luks_dev]]", "name")
        what = f'[[luks_dev]] name="{name}"'
        if not names.DM_NAME.fullmatch(name):
            raise self.error(key, what, "is not a device-mapper name",
                             hint="letters, digits, + _ . and - (not first), at most 127",
                             field="name")
        return CryptVolume(name=name, device=self.need(c, key, what, "real_dev"),
                           lvm_group=self.lvm_name(c, key, what, "lvm_group"),
                           cipher=self.text(c, key, what, "cipher"),
                           key_size=self.integer(c, key, what, "key_size", minimum=1),
                           options=self.text(c, key, what, "options"),
                           src_line=self.where.table(key))

    def lvm_size(self, d: dict[str, Any], key: Key, what: str, name: str,
                 allow_rest: bool) -> LvmSize | None:
        v = d.get(name)
        if v is None:
            return None
        text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
        size = LvmSize.parse(text.strip(), allow_rest=allow_rest) \
            if isinstance(text, str) else None
        if size is None:
            raise self.error(key, what, f"{name} = {v!r} is not an LVM size",
                             hint="a number with an optional unit letter (K, M, G, T; default "
                                  "M)" + (", or '*' for the free space left" if allow_rest
                                          else ""), field=name)
        return size

    def group(self, key: Key, g: Any) -> VolumeGroup:
        g = self.table(g, key, "[[lvm_group]]", ("name", "lv"),
                       ("max_log_vols", "max_phys_vols", "phys_extent_size"))
        name = self.lvm_name(g, key, "[[lvm_group]]", "name")
        if name is None:
            raise self.error(key, "[[lvm_group]]", "name must not be empty", field="name")
        what = f'[[lvm_group]] name="{name}"'
        lvs = []
        for k, lv in self.items(g, key, "lv"):
            lv = self.table(lv, k, "[[lvm_group.lv]]", ("name", "size"), ("lv_options",))
            lv_name = self.lvm_name(lv, k, "[[lvm_group.lv]]", "name")
            if lv_name is None:
                raise self.error(k, "[[lvm_group.lv]]", "name must not be empty", field="name")
            lw = f'[[lvm_group.lv]] name="{lv_name}"'
            size = self.lvm_size(lv, k, lw, "size", allow_rest=True)
            assert size is not None
            lvs.append(LogicalVolume(name=lv_name, size=size,
                                     options=self.text(lv, k, lw, "lv_options"),
                                     src_line=self.where.table(k)))
        if not lvs:
            raise self.error(key, what, "needs at least one [[lvm_group.lv]]")
        return VolumeGroup(name=name, max_log_vols=self.integer(g, key, what, "max_log_vols"),
                           max_phys_vols=self.integer(g, key, what, "max_phys_vols"),
                           phys_extent_size=self.lvm_size(g, key, what, "phys_extent_size",
                                                          allow_rest=False),
                           volumes=tuple(lvs), src_line=self.where.table(key))

    def bootloader(self, key: Key, b: Any) -> Bootloader:
        b = self.table(b, key, "[bootloader]", ("flavor", "install_type", "target"),
                       ("default_entry", "timeout"))
        targets = []
        for k, t in self.items(b, key, "target"):
            t = self.table(t, k, "[[bootloader.target]]", ("dev",), ("path",))
            targets.append(BootTarget(dev=self.need(t, k, "[[bootloader.target]]", "dev"),
                                      path=self.text(t, k, "[[bootloader.target]]", "path"),
                                      src_line=self.where.table(k)))
        if not targets:
            raise self.error(key, "[bootloader]", "needs at least one [[bootloader.target]]")
        default = b.get("default_entry")
        return Bootloader(
            flavor=self.enum(b, key, "[bootloader]", "flavor", BootFlavor,
                             [f.value for f in BootFlavor]),
            install_type=self.enum(b, key, "[bootloader]", "install_type", InstallType,
                                   [i.value for i in InstallType]),
            default_entry=str(default) if default is not None else None,
            timeout=self.integer(b, key, "[bootloader]", "timeout", minimum=-1),
            targets=tuple(targets), src_line=self.where.table(key))

    def fsinfo(self, key: Key, f: Any) -> FsEntry:
        f = self.table(f, key, "[[fsinfo]]", (),
                       ("line", "comment", "real_dev", "mount_dev", "mp", "fs", "mkfs_opts",
                        "options", "dump", "pass", "format", "label"))
        line = self.integer(f, key, "[[fsinfo]]", "line", minimum=1)
        what = f"[[fsinfo]] line={line}" if line is not None else "[[fsinfo]]"
        t = {k: self.text(f, key, what, k) for k in ("comment", "real_dev", "mount_dev", "mp",
                                                     "fs", "mkfs_opts", "options", "label")}
        return FsEntry(line=line, real_dev=t["real_dev"], mount_dev=t["mount_dev"],
                       mountpoint=t["mp"], fs=t["fs"], mkfs_opts=t["mkfs_opts"],
                       options=t["options"], dump=self.integer(f, key, what, "dump"),
                       passno=self.integer(f, key, what, "pass"),
                       format=self.boolean(f, key, what, "format"), comment=t["comment"],
                       label=t["label"], src_line=self.where.table(key))


# `sysclone layout --help` shows the form; a converted XML layout too.
TOML_HINT = ("the TOML form is SystemImager's disks-layout as tables: [[disk]], "
             "[[disk.part]], [[fsinfo]]... (see `sysclone layout --help`); "
             "`sysclone layout convert LAYOUT.xml --to toml` writes one")


def parse_toml(text: str | bytes, source_name: str = "<layout>") -> Layout:
    """A layout from its TOML form; errors name `source_name` and the line.
    Checks the schema only: call validate.validate() before acting on it."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{source_name}: TOML layouts are UTF-8: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+), column \d+\)", str(e))
        line = f":{m.group(1)}" if m else ""
        reason = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        raise ConfigError(f"{source_name}{line}: not valid TOML: {reason}",
                          hint=TOML_HINT) from None
    return _Reader(text, source_name).layout(data)
