"""Read and write SystemImager disks-layout XML (the 4.9 format).

The reader enforces what disk-layout.dtd / disks-layout.xsd enforce --
element and attribute names, required attributes, enumerations, number and
size syntax -- and reports the first problem as one line naming the file, the
line and the element.  Cross-references (does /dev/md0 exist?) are checked
by `validate`, on the model.

Deliberate differences from the schemas, all in the lenient direction
except the last:
  * sections may come in any order (the XSD imposes disk, raid, lvm,
    bootloader, fsinfo);
  * sysclone extensions: flag `bios_grub`, raid level `raid10`/`10`,
    raid_disk attribute `metadata`, and 4-hex-digit GPT type codes or GUIDs
    in part `id`;
  * fs types are not limited to the XSD list (the compat examples use proc,
    sysfs, devpts, subfs): `validate` decides what may be formatted;
  * only one <raid>, <lvm> and <bootloader> section (SystemImager's
    installer refuses a second bootloader; two raid/lvm sections are
    forbidden by the XSD).

sysclone extensions beyond those: a <luks> section of <luks_dev> volumes,
and fsinfo `label`.  The tree comes from `xmltree`, which refuses DOCTYPEs
and entities; the writer is `sixml_write`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import TypeVar

from agent.storage.model import (
    BootFlavor,
    Bootloader,
    BootTarget,
    CryptVolume,
    Disk,
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
from agent.storage.names import CHUNK as _CHUNK
from agent.storage.names import DISK_DEV as _DISK_DEV
from agent.storage.names import DM_NAME
from agent.storage.names import LVM_NAME as _LVM_NAME
from agent.storage.names import MD_METADATA as _MD_METADATA
from agent.storage.names import MD_NAME as _MD_NAME
from agent.storage.names import PART_ID as _PART_ID
from agent.storage.units import LvmSize, Size, Unit
from agent.storage.xmltree import Node as _Node
from agent.storage.xmltree import read_tree
from sysclone.errors import ConfigError

E = TypeVar("E", bound=Enum)

_YES = ("yes", "y", "1", "true", "on")
_NO = ("no", "n", "0", "false", "off")


# --- reading ---------------------------------------------------------------
class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, node: _Node, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(f"{self.source}:{node.line}: {_name(node)} {message}", hint=hint)

    def attrs(self, node: _Node, required: tuple[str, ...],
              optional: tuple[str, ...] = ()) -> dict[str, str | None]:
        """The element's attributes, whitespace-stripped; optional ones that
        are absent or empty are None.  Unknown or missing ones are errors."""
        allowed = required + optional
        for name in node.attrs:
            if name not in allowed:
                raise self.error(node, f"has unknown attribute {name!r}",
                                 hint="allowed: " + ", ".join(allowed))
        out: dict[str, str | None] = {}
        for name in allowed:
            value = node.attrs.get(name)
            value = value.strip() if value is not None else None
            if name in required and value is None:
                raise self.error(node, f"needs attribute {name!r}")
            # Empty optional attributes mean "not set", as SystemImager's
            # installer treats them; empty required ones are caught by need().
            out[name] = value if name in required else (value or None)
        if node.text.strip():
            raise self.error(node, f"must not contain text (found {node.text.strip()[:30]!r})")
        return out

    def need(self, node: _Node, attrs: dict[str, str | None], name: str) -> str:
        value = attrs[name]
        if not value:
            raise self.error(node, f"attribute {name!r} must not be empty")
        return value

    def children(self, node: _Node, allowed: tuple[str, ...]) -> list[_Node]:
        for child in node.children:
            if child.tag not in allowed:
                raise ConfigError(f"{self.source}:{child.line}: unknown element <{child.tag}> "
                                  f"inside {_name(node)}",
                                  hint="allowed: " + ", ".join(f"<{a}>" for a in allowed))
        return node.children

    def enum(self, node: _Node, attr: str, value: str, parse: Callable[[str], E],
             spellings: list[str]) -> E:
        try:
            return parse(value)
        except ValueError:
            raise self.error(node, f"attribute {attr}={value!r} is not one of "
                             + ", ".join(spellings)) from None

    def integer(self, node: _Node, attr: str, value: str | None, *, minimum: int | None = 0,
                suffix: str = "") -> int | None:
        if value is None:
            return None
        digits = value[:-1] if suffix and value[-1:].upper() == suffix else value
        try:
            number = int(digits, 10)
        except ValueError:
            raise self.error(node, f"attribute {attr}={value!r} is not a whole number") from None
        if minimum is not None and number < minimum:
            raise self.error(node, f"attribute {attr}={value!r} must be at least {minimum}")
        return number

    def boolean(self, node: _Node, attr: str, value: str | None) -> bool | None:
        if value is None:
            return None
        if value.lower() in _YES:
            return True
        if value.lower() in _NO:
            return False
        raise self.error(node, f"attribute {attr}={value!r} must be yes or no")

    def lvm_name(self, node: _Node, attr: str, value: str) -> str:
        if not _LVM_NAME.fullmatch(value) or value in (".", ".."):
            raise self.error(node, f"attribute {attr}={value!r} is not a valid LVM name",
                             hint="letters, digits, + _ . and - (not first), at most 128")
        return value

    def md_name(self, node: _Node, attr: str, value: str) -> str:
        if not _MD_NAME.fullmatch(value):
            raise self.error(node, f"attribute {attr}={value!r} is not an md device",
                             hint="expected /dev/mdN or /dev/md/NAME")
        return value

    # -- elements --
    def layout(self, root: _Node) -> Layout:
        if root.tag != "config":
            raise ConfigError(f"{self.source}:{root.line}: root element is <{root.tag}>, "
                              "expected <config>", hint="this is not a disks-layout file")
        # Schema bookkeeping (xmlns, xsi:noNamespaceSchemaLocation) is allowed.
        root.attrs = {k: v for k, v in root.attrs.items()
                      if not k.startswith(("xmlns", "xsi:"))}
        self.attrs(root, ())
        disks: list[Disk] = []
        raids: list[RaidArray] = []
        groups: list[VolumeGroup] = []
        lvm_version: int | None = None
        bootloader: Bootloader | None = None
        fsinfo: list[FsEntry] = []
        crypts: list[CryptVolume] = []
        seen: set[str] = set()
        for child in self.children(root, ("disk", "raid", "lvm", "luks", "bootloader", "fsinfo",
                                          "boel")):
            if child.tag in ("raid", "lvm", "luks", "bootloader") and child.tag in seen:
                raise ConfigError(f"{self.source}:{child.line}: a second <{child.tag}> "
                                  "section; only one is allowed",
                                  hint=f"put everything in the first <{child.tag}>")
            seen.add(child.tag)
            if child.tag == "disk":
                disks.append(self.disk(child))
            elif child.tag == "raid":
                raids.extend(self.raid_disk(n) for n in self.some(child, "raid_disk"))
            elif child.tag == "lvm":
                a = self.attrs(child, (), ("version",))
                lvm_version = self.integer(child, "version", a["version"])
                if lvm_version not in (None, 1, 2):
                    raise self.error(child, f"attribute version={a['version']!r} must be 1 or 2")
                groups.extend(self.lvm_group(n) for n in self.some(child, "lvm_group"))
            elif child.tag == "luks":
                self.attrs(child, ())
                crypts.extend(self.luks_dev(n) for n in self.some(child, "luks_dev"))
            elif child.tag == "bootloader":
                bootloader = self.bootloader(child)
            elif child.tag == "fsinfo":
                fsinfo.append(self.fsinfo(child))
            else:  # boel: Brian's Own Embedded Linux, long gone; the schemas keep it
                self.attrs(child, (), ("devstyle",))  # so old files load.
        if not disks:
            raise ConfigError(f"{self.source}:{root.line}: <config> has no <disk>",
                              hint="a layout needs at least one <disk> with <part>s")
        if not fsinfo:
            raise ConfigError(f"{self.source}:{root.line}: <config> has no <fsinfo>",
                              hint="add <fsinfo> lines, at least one for /")
        return Layout(disks=tuple(disks), raids=tuple(raids), volume_groups=tuple(groups),
                      lvm_version=lvm_version, bootloader=bootloader, fsinfo=tuple(fsinfo),
                      crypts=tuple(crypts), source=self.source)

    def some(self, node: _Node, tag: str) -> list[_Node]:
        """The children of a section that needs at least one of `tag`."""
        kids = self.children(node, (tag,))
        if not kids:
            raise self.error(node, f"needs at least one <{tag}>")
        return kids

    def disk(self, node: _Node) -> Disk:
        a = self.attrs(node, ("dev", "label_type", "unit_of_measurement"))
        dev = self.need(node, a, "dev")
        if not _DISK_DEV.fullmatch(dev):
            raise self.error(node, f"attribute dev={dev!r} is not a device path",
                             hint="expected e.g. /dev/sda")
        label = self.enum(node, "label_type", self.need(node, a, "label_type"), LabelType,
                          [lt.value for lt in LabelType])
        unit = self.enum(node, "unit_of_measurement", self.need(node, a, "unit_of_measurement"),
                         Unit.parse, Unit.spellings())
        nodes = self.some(node, "part")
        parts = tuple(self.part(n, dev) for n in nodes)
        numbers = [p.number for p in parts]
        for n, p in zip(nodes, parts, strict=True):
            if numbers.count(p.number) > 1:
                raise self.error(n, f"on {dev}: partition number {p.number} is used twice")
        return Disk(dev=dev, label=label, unit=unit, partitions=parts, src_line=node.line)

    def part(self, node: _Node, disk: str) -> Partition:
        a = self.attrs(node, ("num", "size", "p_type"),
                       ("id", "p_name", "flags", "raid_dev", "lvm_group"))
        number = self.integer(node, "num", self.need(node, a, "num"), minimum=1)
        assert number is not None
        size_text = self.need(node, a, "size")
        size = Size.parse(size_text)
        if size is None:
            raise self.error(node, f"on {disk}: size={size_text!r} is not a number or '*'",
                             hint="the unit is the disk's unit_of_measurement")
        kind = self.enum(node, "p_type", self.need(node, a, "p_type"), PartType,
                         [t.value for t in PartType])
        part_id = a["id"]
        if part_id is not None and not _PART_ID.fullmatch(part_id):
            raise self.error(node, f"on {disk}: id={part_id!r} is not a partition type",
                             hint="msdos: 1-2 hex digits (83, 8e); gpt: 4 hex digits (8300) "
                                  "or a type GUID")
        name = a["p_name"]
        if name is not None:
            name = " ".join(name.split())  # the XSD collapses whitespace
            if name == "-":  # what SystemImager writes for "no name"
                name = None
        return Partition(
            number=number, size=size, kind=kind,
            part_id=part_id.lower() if part_id else None, name=name,
            flags=self.flags(node, a["flags"]),
            raid_dev=self.md_name(node, "raid_dev", a["raid_dev"]) if a["raid_dev"] else None,
            lvm_group=self.lvm_name(node, "lvm_group", a["lvm_group"]) if a["lvm_group"]
            else None,
            src_line=node.line,
        )

    def flags(self, node: _Node, text: str | None) -> tuple[Flag, ...]:
        flags: list[Flag] = []
        for token in (text or "").split(","):
            token = token.strip()
            if token in ("", "-"):  # "-" is SystemImager's "no flags"
                continue
            flag = self.enum(node, "flags", token, Flag, [f.value for f in Flag])
            if flag not in flags:
                flags.append(flag)
        return tuple(flags)

    def raid_disk(self, node: _Node) -> RaidArray:
        a = self.attrs(node, ("name", "raid_level"),
                       ("raid_devices", "spare_devices", "persistence", "rounding", "layout",
                        "chunk_size", "lvm_group", "devices", "metadata"))
        name = self.md_name(node, "name", self.need(node, a, "name"))
        level = self.enum(node, "raid_level", self.need(node, a, "raid_level"), RaidLevel.parse,
                          RaidLevel.spellings())
        chunk = a["chunk_size"]
        if chunk is not None and not _CHUNK.fullmatch(chunk):
            raise self.error(node, f"attribute chunk_size={chunk!r} is not a size",
                             hint="KiB, or a number with K, M or G (mdadm --chunk)")
        metadata = a["metadata"]
        if metadata is not None and metadata not in _MD_METADATA:
            raise self.error(node, f"attribute metadata={metadata!r} is not one of "
                             + ", ".join(_MD_METADATA))
        layout = a["layout"]
        return RaidArray(
            name=name, level=level,
            raid_devices=self.integer(node, "raid_devices", a["raid_devices"], minimum=1),
            spare_devices=self.integer(node, "spare_devices", a["spare_devices"]),
            persistence=self.boolean(node, "persistence", a["persistence"]),
            rounding=self.integer(node, "rounding", a["rounding"], suffix="K"),
            layout=self.enum(node, "layout", layout, RaidLayout, [x.value for x in RaidLayout])
            if layout else None,
            chunk_size=chunk,
            lvm_group=self.lvm_name(node, "lvm_group", a["lvm_group"]) if a["lvm_group"]
            else None,
            devices=tuple(d for d in re.split(r"[\s,]+", a["devices"] or "") if d),
            metadata=metadata,
            src_line=node.line,
        )

    def lvm_group(self, node: _Node) -> VolumeGroup:
        # SystemImager requires all four attributes but accepts them empty
        # (its installer then leaves the vgcreate option out).
        a = self.attrs(node, ("name", "max_log_vols", "max_phys_vols", "phys_extent_size"))
        pe_text = a["phys_extent_size"] or None
        pe = None
        if pe_text is not None:
            pe = LvmSize.parse(pe_text, allow_rest=False)
            if pe is None:
                raise self.error(node, f"attribute phys_extent_size={pe_text!r} is not a size",
                                 hint="e.g. 4096K or 4M (vgcreate -s)")
        return VolumeGroup(
            name=self.lvm_name(node, "name", self.need(node, a, "name")),
            max_log_vols=self.integer(node, "max_log_vols", a["max_log_vols"] or None),
            max_phys_vols=self.integer(node, "max_phys_vols", a["max_phys_vols"] or None),
            phys_extent_size=pe,
            volumes=tuple(self.lv(n) for n in self.some(node, "lv")),
            src_line=node.line,
        )

    def lv(self, node: _Node) -> LogicalVolume:
        a = self.attrs(node, ("name", "size"), ("lv_options",))
        name = self.lvm_name(node, "name", self.need(node, a, "name"))
        size_text = self.need(node, a, "size")
        size = LvmSize.parse(size_text, allow_rest=True)
        if size is None:
            raise self.error(node, f"attribute size={size_text!r} is not an LVM size",
                             hint="a number with an optional unit letter (K, M, G, T; "
                                  "default M), or '*' for the free space left")
        options = a["lv_options"]
        if options is not None:
            try:
                shlex.split(options)
            except ValueError as exc:
                raise self.error(node, f"attribute lv_options={options!r}: {exc}") from None
        return LogicalVolume(name=name, size=size, options=options, src_line=node.line)

    def luks_dev(self, node: _Node) -> CryptVolume:
        a = self.attrs(node, ("name", "real_dev"),
                       ("lvm_group", "cipher", "key_size", "options"))
        name = self.need(node, a, "name")
        if not DM_NAME.fullmatch(name):
            raise self.error(node, f"attribute name={name!r} is not a device-mapper name",
                             hint="letters, digits, + _ . and - (not first), at most 127")
        return CryptVolume(
            name=name, device=self.need(node, a, "real_dev"),
            lvm_group=self.lvm_name(node, "lvm_group", a["lvm_group"]) if a["lvm_group"]
            else None,
            cipher=a["cipher"], key_size=self.integer(node, "key_size", a["key_size"], minimum=1),
            options=a["options"], src_line=node.line)

    def bootloader(self, node: _Node) -> Bootloader:
        a = self.attrs(node, ("flavor", "install_type"), ("default_entry", "timeout"))
        targets = []
        for t in self.some(node, "target"):
            ta = self.attrs(t, ("dev",), ("path",))
            targets.append(BootTarget(dev=self.need(t, ta, "dev"), path=ta["path"],
                                      src_line=t.line))
        return Bootloader(
            flavor=self.enum(node, "flavor", self.need(node, a, "flavor"), BootFlavor,
                             [f.value for f in BootFlavor]),
            install_type=self.enum(node, "install_type", self.need(node, a, "install_type"),
                                   InstallType, [i.value for i in InstallType]),
            default_entry=a["default_entry"],
            timeout=self.integer(node, "timeout", a["timeout"], minimum=-1),
            targets=tuple(targets),
            src_line=node.line,
        )

    def fsinfo(self, node: _Node) -> FsEntry:
        # The DTD requires real_dev, mp, fs, dump and pass; the XSD dropped
        # that so a line can be a bare comment.  `validate` checks the rest.
        a = self.attrs(node, (), ("line", "comment", "real_dev", "mount_dev", "mp", "fs",
                                  "mkfs_opts", "options", "dump", "pass", "format", "label"))
        return FsEntry(
            line=self.integer(node, "line", a["line"], minimum=1),
            real_dev=a["real_dev"], mount_dev=a["mount_dev"], mountpoint=a["mp"], fs=a["fs"],
            mkfs_opts=a["mkfs_opts"], options=a["options"],
            dump=self.integer(node, "dump", a["dump"]),
            passno=self.integer(node, "pass", a["pass"]),
            format=self.boolean(node, "format", a["format"]),
            comment=a["comment"], label=a["label"],
            src_line=node.line,
        )


def _name(node: _Node) -> str:
    """The element as a reader would find it: <part num="6">."""
    key = {"disk": "dev", "part": "num", "raid_disk": "name", "lvm_group": "name",
           "lv": "name", "target": "dev", "fsinfo": "line", "luks_dev": "name"}.get(node.tag)
    if key and node.attrs.get(key):
        return f'<{node.tag} {key}="{node.attrs[key]}">'
    return f"<{node.tag}>"


def parse_layout(text: str | bytes, source_name: str = "<layout>") -> Layout:
    """A layout from disks-layout XML; errors name `source_name`.
    Checks the schema only: call validate.validate() before acting on it."""
    return _Reader(source_name).layout(read_tree(text, source_name))


def load_layout(path: str | Path) -> Layout:
    """Read a disks-layout file (bytes, so expat honours its encoding)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read disk layout: {exc.strerror}") from None
    return parse_layout(data, str(path))


# The writer lives beside the reader; re-exported for callers of this module.
from agent.storage.sixml_write import to_xml  # noqa: E402

__all__ = ["DM_NAME", "load_layout", "parse_layout", "to_xml"]
