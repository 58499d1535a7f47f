"""The golden client's facts, read into typed records.

The facts are the raw output of the commands in prepare.golden.FACTS (read
over SSH or by `client prepare`).  Each reader here is a pure function of
that text -- tests feed them captured output from real machines -- and is
lenient: a missing tool or an older util-linux leaves a fact empty, and the
layout is then built from what the others say.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from imageserver.prepare.golden import PSEUDO_FS, is_bind


@dataclass(frozen=True)
class BlockDev:
    name: str  # kernel name: sda2, md0, dm-1, loop0p2
    path: str  # /dev/sda2, /dev/md0, /dev/mapper/vg0-root
    type: str  # disk, part, raid1, lvm, loop, crypt, rom
    size: int  # bytes
    majmin: str
    parents: tuple[str, ...] = ()  # kernel names this sits on
    start: int | None = None  # partitions: first sector
    pttype: str | None = None  # disks: gpt | dos
    parttype: str | None = None  # partitions: GUID or hex byte
    partlabel: str | None = None
    fstype: str | None = None
    label: str | None = None
    removable: bool = False


@dataclass(frozen=True)
class PartEntry:
    """One entry of `sfdisk -J`: the table as written on the disk."""

    node: str
    start: int  # sectors
    size: int  # sectors
    type: str
    name: str | None = None
    bootable: bool = False


@dataclass(frozen=True)
class PartTable:
    device: str
    label: str  # gpt | dos
    sector_size: int
    partitions: tuple[PartEntry, ...]


@dataclass(frozen=True)
class Mount:
    target: str
    source: str
    fstype: str
    options: str
    fsroot: str
    majmin: str

    @property
    def is_real(self) -> bool:
        return self.fstype.split(".")[0] not in PSEUDO_FS and self.source.startswith("/dev/")


@dataclass(frozen=True)
class MdArray:
    name: str  # /dev/md0
    level: str  # raid1
    devices: tuple[str, ...]  # member paths, spares included
    raid_devices: int | None = None
    spares: int | None = None
    metadata: str | None = None
    chunk: str | None = None


@dataclass(frozen=True)
class LvmInfo:
    pvs: dict[str, str] = field(default_factory=dict)  # /dev/md1 -> vg0
    vg_extent: dict[str, int] = field(default_factory=dict)  # vg0 -> bytes
    vg_max: dict[str, tuple[int, int]] = field(default_factory=dict)  # vg -> (max_lv, max_pv)
    lvs: tuple[tuple[str, str, int, str], ...] = ()  # (vg, lv, bytes, segtype)


@dataclass(frozen=True)
class FstabLine:
    spec: str
    file: str
    vfstype: str
    options: str
    freq: int
    passno: int


def out(facts: dict[str, Any], name: str) -> str:
    f = facts.get(name) or {}
    return str(f.get("out") or "") if f.get("rc") == 0 else ""


def _int(v: Any) -> int | None:
    try:
        return int(v)
    except (TypeError, ValueError):
        return None


def _json_docs(text: str) -> list[Any]:
    """Several JSON documents one after the other (sfdisk -J per disk)."""
    dec = json.JSONDecoder()
    docs: list[Any] = []
    i = 0
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            return docs
        try:
            doc, i = dec.raw_decode(text, i)
        except ValueError:
            return docs
        docs.append(doc)


def block_devices(facts: dict[str, Any]) -> dict[str, BlockDev]:
    """lsblk's tree, flattened: kernel name -> device (an md array or a
    logical volume under several parents appears once, with all of them)."""
    docs = _json_docs(out(facts, "lsblk"))
    tree = docs[0].get("blockdevices", []) if docs and isinstance(docs[0], dict) else []
    found: dict[str, dict[str, Any]] = {}
    parents: dict[str, list[str]] = {}

    def visit(d: dict[str, Any], parent: str | None) -> None:
        kname = str(d.get("kname") or d.get("name") or "")
        if not kname:
            return
        found.setdefault(kname, d)
        if parent and parent not in parents.setdefault(kname, []):
            parents[kname].append(parent)
        for c in d.get("children") or []:
            visit(c, kname)

    for d in tree:
        visit(d, None)
    devs = {}
    for k, d in found.items():
        path = str(d.get("path") or f"/dev/{d.get('name') or k}")
        devs[k] = BlockDev(
            name=k, path=path, type=str(d.get("type") or ""), size=_int(d.get("size")) or 0,
            majmin=str(d.get("maj:min") or ""), parents=tuple(parents.get(k, ())),
            start=_int(d.get("start")), pttype=d.get("pttype"),
            parttype=(d.get("parttype") or None), partlabel=d.get("partlabel"),
            fstype=d.get("fstype"), label=d.get("label"),
            removable=d.get("rm") in (True, "1", 1))
    return devs


def part_tables(facts: dict[str, Any]) -> dict[str, PartTable]:
    tables = {}
    for doc in _json_docs(out(facts, "sfdisk")):
        t = doc.get("partitiontable") if isinstance(doc, dict) else None
        if not t or "device" not in t:
            continue
        parts = tuple(PartEntry(str(p["node"]), int(p["start"]), int(p["size"]),
                                str(p.get("type", "")), p.get("name"),
                                bool(p.get("bootable")))
                      for p in t.get("partitions") or [] if "node" in p)
        tables[str(t["device"])] = PartTable(str(t["device"]), str(t.get("label", "")),
                                             int(t.get("sectorsize") or 512), parts)
    return tables


def blkid(facts: dict[str, Any]) -> dict[str, dict[str, str]]:
    """`blkid -o export`: DEVNAME -> {TYPE, LABEL, UUID, ...}."""
    devs: dict[str, dict[str, str]] = {}
    for block in out(facts, "blkid").split("\n\n"):
        kv = {}
        for line in block.splitlines():
            k, eq, v = line.partition("=")
            if eq:
                kv[k] = re.sub(r"\\(.)", r"\1", v)  # export format escapes spaces
        if "DEVNAME" in kv:
            devs[kv["DEVNAME"]] = kv
    return devs


def mounts(facts: dict[str, Any]) -> list[Mount]:
    docs = _json_docs(out(facts, "findmnt"))
    fs = docs[0].get("filesystems", []) if docs and isinstance(docs[0], dict) else []
    return [Mount(str(m.get("target") or ""), str(m.get("source") or ""),
                  str(m.get("fstype") or ""), str(m.get("options") or ""),
                  str(m.get("fsroot") or "/"), str(m.get("maj:min") or ""))
            for m in fs]


def captured_mounts(all_mounts: list[Mount]) -> list[Mount]:
    """The real local filesystems a capture crosses into: no pseudo or
    network ones, no bind mounts, each tree once."""
    seen: set[tuple[str, str]] = set()
    keep = []
    for m in all_mounts:
        d = {"fsroot": m.fsroot, "options": m.options, "fstype": m.fstype}
        key = (m.majmin, m.fsroot)
        if not m.is_real or (m.target != "/" and is_bind(d)) or key in seen:
            continue
        seen.add(key)
        keep.append(m)
    return keep


def swaps(facts: dict[str, Any]) -> list[str]:
    """Active swap partitions (swap files are not part of a layout)."""
    out_ = []
    for line in out(facts, "swaps").splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "partition":
            out_.append(parts[0].replace("\\040", " "))
    return out_


def md_arrays(facts: dict[str, Any]) -> dict[str, MdArray]:
    """From `mdadm --detail --scan --verbose`, else from /proc/mdstat."""
    records: list[str] = []
    for line in out(facts, "mdadm").splitlines():
        if line.startswith("ARRAY "):
            records.append(line)
        elif line[:1].isspace() and records:  # "   devices=/dev/sda2,/dev/sdb2"
            records[-1] += " " + line.strip()
    arrays: dict[str, MdArray] = {}
    for r in records:
        words = r.split()
        kv = dict(w.partition("=")[::2] for w in words[2:] if "=" in w)
        arrays[words[1]] = MdArray(words[1], kv.get("level", ""),
                                   tuple(d for d in kv.get("devices", "").split(",") if d),
                                   _int(kv.get("num-devices")), _int(kv.get("spares")),
                                   kv.get("metadata"))
    if arrays:
        return arrays
    for line in out(facts, "mdstat").splitlines():
        m = re.match(r"^(md\S+)\s*:\s*active\s+(?:\(\S+\)\s+)?(\S+)\s+(.*)$", line)
        if not m:
            continue
        members = re.findall(r"(\S+?)\[\d+\](\(S\))?", m.group(3))
        arrays[f"/dev/{m.group(1)}"] = MdArray(
            f"/dev/{m.group(1)}", m.group(2), tuple(f"/dev/{d}" for d, _ in members),
            len([1 for _, s in members if not s]), len([1 for _, s in members if s]))
    return arrays


def mdstat_chunks(facts: dict[str, Any]) -> dict[str, str]:
    """/dev/md0 -> "512K" for striped arrays (mdadm's scan does not say)."""
    chunks, name = {}, None
    for line in out(facts, "mdstat").splitlines():
        m = re.match(r"^(md\S+)\s*:", line)
        if m:
            name = f"/dev/{m.group(1)}"
        c = re.search(r"(\d+)k chunk", line)
        if name and c and "bitmap" not in line:
            chunks[name] = f"{c.group(1)}K"
    return chunks


def _report(facts: dict[str, Any], name: str, key: str) -> list[dict[str, Any]]:
    docs = _json_docs(out(facts, name))
    try:
        return list(docs[0]["report"][0][key])
    except (IndexError, KeyError, TypeError):
        return []


def lvm(facts: dict[str, Any]) -> LvmInfo:
    pvs = {str(p["pv_name"]): str(p["vg_name"]) for p in _report(facts, "lvm-pvs", "pv")
           if p.get("vg_name")}
    ext, mx = {}, {}
    for g in _report(facts, "lvm-vgs", "vg"):
        ext[str(g["vg_name"])] = _int(g.get("vg_extent_size")) or 4 << 20
        mx[str(g["vg_name"])] = (_int(g.get("max_lv")) or 0, _int(g.get("max_pv")) or 0)
    lvs = tuple((str(v["vg_name"]), str(v["lv_name"]), _int(v.get("lv_size")) or 0,
                 str(v.get("segtype") or "linear"))
                for v in _report(facts, "lvm-lvs", "lv"))
    return LvmInfo(pvs, ext, mx, lvs)


def fstab(facts: dict[str, Any]) -> list[FstabLine]:
    lines = []
    for raw in out(facts, "fstab").splitlines():
        w = raw.split()
        if not w or w[0].startswith("#") or len(w) < 3:
            continue
        lines.append(FstabLine(w[0], w[1].replace("\\040", " "), w[2],
                               w[3] if len(w) > 3 else "defaults",
                               _int(w[4]) or 0 if len(w) > 4 else 0,
                               _int(w[5]) or 0 if len(w) > 5 else 0))
    return lines


def firmware(facts: dict[str, Any]) -> str:
    return "uefi" if out(facts, "firmware").strip() == "uefi" else "bios"
