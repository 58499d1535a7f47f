"""si.disk: the disks the install may use, by name, by link or by rule.

si.disk is a comma-separated list; each item is one of

- a kernel name or device path: `sda`, `nvme0n1`, `/dev/vdb`;
- a udev link, resolved on the machine to the disk it points to:
  `/dev/disk/by-id/wwn-0x5000c500a1b2c3d4`, `/dev/disk/by-path/pci-0000:00:1f.2-ata-1`;
- a rule: conditions joined by `+`, all of which must hold, each KEY OP VALUE:
  `size>=100G`, `size<=2T`, `size>100G`, `size<2T`, `size=400G..520G`
  (G = GiB as lsblk prints, GB = 10^9), `model=PATTERN`, `serial=PATTERN`,
  `wwn=PATTERN` (shell patterns; model and wwn ignore case), `bus=nvme`
  (or sata, sas, scsi, ata, virtio, usb, mmc, xen...), `rotational=0|1`.

`+` and not `,` joins conditions because `,` already separates the items of
the list.  A rule is a DiskSelector, the model of a TOML layout's `select`,
so both are checked and matched by the same code (agent.storage.selectors).
Parsing here needs nothing but the text; resolving links and matching
rules against the machine's disks is agent.targets' work.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

from agent.storage.model import DiskSelector
from agent.storage.selectors import SIZE_HINT, selector_problems

KEYS = ("size", "model", "serial", "wwn", "bus", "rotational")
_TERM = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)\s*(>=|<=|=|>|<)(.*)", re.S)
_DEVICE = re.compile(r"/dev/[^\s,+\x00]+\Z")
SYNTAX = ("a disk (sda, /dev/nvme0n1, /dev/disk/by-id/..., /dev/disk/by-path/...) or a "
          "rule like size>=100G+bus=nvme (keys: " + ", ".join(KEYS) + ")")


@dataclass(frozen=True)
class DiskPath:
    """A disk named by its device path or a udev link to it."""

    path: str  # /dev/sda, /dev/disk/by-id/...

    @property
    def is_link(self) -> bool:
        return self.path.startswith("/dev/disk/")

    def __str__(self) -> str:
        return self.path


@dataclass(frozen=True)
class DiskRule:
    """The disks whose facts meet every condition."""

    select: DiskSelector
    text: str  # as written, white space trimmed: what messages and listings show

    def __str__(self) -> str:
        return self.text


DiskSpec = DiskPath | DiskRule


def parse_disk_spec(raw: str) -> DiskSpec:
    """One si.disk item.  ValueError's message is the reason, worded to
    follow the quoted item ("'colour=red' is not ...")."""
    text = raw.strip()
    if _TERM.match(text):
        return _rule(text)
    if any(c in text for c in "=<>+"):
        raise ValueError(f"is not {SYNTAX}")
    path = text if text.startswith("/") else "/dev/" + text
    if not _DEVICE.match(path) or "/../" in path + "/" or path.endswith("/"):
        raise ValueError(f"is not {SYNTAX}")
    return DiskPath(path)


def _rule(text: str) -> DiskRule:
    sel = DiskSelector()
    sizes: dict[str, str] = {}
    for term in text.split("+"):
        m = _TERM.fullmatch(term.strip())
        if m is None:
            raise ValueError(f"is not a disk rule: {term.strip()!r} is not KEY=VALUE "
                             "(conditions are joined by +)")
        key, op, value = m.group(1).lower(), m.group(2), m.group(3).strip()
        if key not in KEYS:
            raise ValueError(f"is not a disk rule: unknown key {key!r} (use "
                             + ", ".join(KEYS) + ")")
        if not value:
            raise ValueError(f"is not a disk rule: {key} has no value")
        if key == "size":
            if op in sizes or (op == "=" and sizes) or ("=" in sizes):
                raise ValueError("is not a disk rule: size is given twice (write a range "
                                 "as size=400G..520G or size>=400G+size<=520G)")
            sizes[op] = value
            continue
        if op != "=":
            raise ValueError(f"is not a disk rule: {key} takes = (not {op})")
        if getattr(sel, key) is not None:
            raise ValueError(f"is not a disk rule: {key} is given twice")
        if key == "rotational":
            if value not in ("0", "1"):
                raise ValueError("is not a disk rule: rotational is 0 (SSD, NVMe) or 1 "
                                 "(spinning disk)")
            sel = replace(sel, rotational=value == "1")
        else:
            text_field: dict[str, Any] = {key: value.lower() if key == "bus" else value}
            sel = replace(sel, **text_field)
    if sizes:
        sel = replace(sel, size=_size(sizes))
    problems = selector_problems(sel)
    if problems:
        what, hint = problems[0]
        raise ValueError(f"is not a disk rule: {what} ({hint})")
    return DiskRule(sel, text)


def _size(sizes: dict[str, str]) -> str:
    """The size condition in selector form; >= and <= together make a range
    ("400G..520G"), the only pair a range can hold."""
    if "=" in sizes:
        if ".." not in sizes["="]:
            raise ValueError(f"is not a disk rule: size={sizes['=']} would need the exact "
                             f"size; {SIZE_HINT}, or size=400G..520G")
        return sizes["="]
    if len(sizes) == 1:
        ((op, value),) = sizes.items()
        return op + value
    if set(sizes) == {">=", "<="}:
        return f"{sizes['>=']}..{sizes['<=']}"
    raise ValueError("is not a disk rule: combine size>=LOW with size<=HIGH, or write "
                     "size=LOW..HIGH")
