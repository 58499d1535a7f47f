"""Which machine disk each layout disk is: in order, or by selector.

SystemImager layouts name disks (/dev/sda) and are mapped onto the
machine's disks in order.  A TOML layout may instead say which disk it
means by what can be read off the machine: its size, model, serial, WWN,
bus, rotational or not, /dev/disk/by-path name or place in the list.
The agent's si.disk rules (agent.storage.diskspec) are selectors too.  A selector must match
exactly one of the usable disks: none or several is an error naming the
candidates, never a guess.  Disks without a selector take the disks left
over, in order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from agent.storage.model import DiskSelector, Layout
from sysclone.errors import ConfigError

BUSES = ("ata", "sata", "sas", "scsi", "nvme", "usb", "virtio", "xen", "mmc", "fc", "iscsi")

_SIZE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([KMGTP]?(?:i?B)?)", re.I)
_DECIMAL = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "PB": 10**15}
_BINARY = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


@dataclass(frozen=True)
class Candidate:
    """A machine disk as selectors see it."""

    path: str
    size: int
    model: str = ""
    serial: str = ""
    wwn: str = ""
    bus: str = ""
    by_path: tuple[str, ...] = field(default=())
    rotational: bool = False

    def describe(self) -> str:
        facts = [f"{self.size / 2**30:.1f} GiB"] + (["rotational"] if self.rotational else [])
        facts += [f"{k} {v}" for k, v in (("bus", self.bus), ("model", self.model),
                                         ("serial", self.serial), ("wwn", self.wwn)) if v]
        facts += [f"by-path {p}" for p in self.by_path[:1]]
        return f"{self.path} ({', '.join(facts)})"


@dataclass(frozen=True)
class SizeRange:
    low: int | None = None
    high: int | None = None
    low_open: bool = False  # ">" rather than ">="
    high_open: bool = False

    def holds(self, n: int) -> bool:
        if self.low is not None and (n < self.low or (self.low_open and n == self.low)):
            return False
        return not (self.high is not None and
                    (n > self.high or (self.high_open and n == self.high)))


def parse_bytes(text: str) -> int:
    """500G (binary, as lsblk prints), 500GB (decimal, as vendors print),
    500GiB; a bare number is bytes.  ValueError when it is none of those."""
    m = _SIZE.fullmatch(text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a size")
    number, unit = float(m.group(1)), m.group(2).upper()
    if unit.endswith("IB"):
        per = _BINARY[unit[0]]
    elif unit in _DECIMAL:
        per = _DECIMAL[unit]
    else:
        per = _BINARY[unit]
    return int(number * per)


def parse_size_range(text: str) -> SizeRange:
    """">=100GiB", ">100G", "<=2TB", "<2T" or "400GB..520GB" (both ends
    included).  A bare size is refused: disks are never exactly the size
    written on their label."""
    t = text.strip()
    try:
        if ".." in t:
            lo, hi = (parse_bytes(x) for x in t.split("..", 1))
            if lo > hi:
                raise ValueError(f"{text!r}: the range is empty")
            return SizeRange(lo, hi)
        for op, make in ((">=", lambda n: SizeRange(low=n)), ("<=", lambda n: SizeRange(high=n)),
                         (">", lambda n: SizeRange(low=n, low_open=True)),
                         ("<", lambda n: SizeRange(high=n, high_open=True))):
            if t.startswith(op):
                return make(parse_bytes(t[len(op):]))
    except KeyError:
        raise ValueError(f"{text!r} has an unknown unit") from None
    raise ValueError(f"{text!r} is not a size condition")


SIZE_HINT = 'e.g. ">=100GiB", "<2TB" or "400GB..520GB" (G = GiB as lsblk prints, GB = 10^9)'


def selector_problems(sel: DiskSelector) -> list[tuple[str, str]]:
    """(problem, hint) for each field that can never match."""
    out = []
    if not sel.items():
        out.append(("the selector is empty", "give at least one of " + ", ".join(sel.FIELDS)))
    if sel.size is not None:
        try:
            parse_size_range(sel.size)
        except ValueError as e:
            out.append((f"size {e}", SIZE_HINT))
    if sel.bus is not None and sel.bus.lower() not in BUSES:
        out.append((f"bus {sel.bus!r} is not one of {', '.join(BUSES)}", "lsblk -o NAME,TRAN"))
    if sel.order is not None and sel.order < 1:
        out.append((f"order {sel.order} must be 1 or more", "1 is the first usable disk"))
    for name in ("model", "serial", "wwn", "by_path"):
        value = getattr(sel, name)
        if value is not None and not value.strip():
            out.append((f"{name} is empty", f"leave {name} out to match any"))
    return out


def _glob(pattern: str, value: str, fold: bool) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value.strip(), pattern.strip())


def matches(sel: DiskSelector, c: Candidate, position: int) -> bool:
    """Does disk `c`, the `position`-th usable one (1-based), match?"""
    if sel.size is not None and not parse_size_range(sel.size).holds(c.size):
        return False
    if sel.model is not None and not _glob(sel.model, c.model, True):
        return False
    if sel.serial is not None and not _glob(sel.serial, c.serial, False):
        return False
    if sel.wwn is not None and not _glob(sel.wwn.lower().removeprefix("0x"),
                                         c.wwn.lower().removeprefix("0x"), True):
        return False
    if sel.bus is not None and sel.bus.lower() != c.bus.lower():
        return False
    if sel.by_path is not None and not any(_glob(sel.by_path, p, False) for p in c.by_path):
        return False
    if sel.rotational is not None and sel.rotational != c.rotational:
        return False
    return sel.order is None or sel.order == position


def mismatches(sel: DiskSelector, c: Candidate, position: int) -> list[str]:
    """The fields of `sel` that disk `c` fails, each with what the disk
    has instead ("bus=nvme (bus sata)"): why a disk was not chosen."""
    have = {"size": f"{c.size / 2**30:.1f} GiB", "model": f"model {c.model!r}",
            "serial": f"serial {c.serial!r}", "wwn": f"wwn {c.wwn or 'none'}",
            "bus": f"bus {c.bus or 'unknown'}", "by_path": "by-path " + (", ".join(c.by_path)
                                                                       or "none"),
            "order": f"disk {position}", "rotational": f"rotational={int(c.rotational)}"}
    out = []
    for k, v in sel.items():
        field_only: dict[str, Any] = {k: v}
        one = replace(DiskSelector(), **field_only)
        if not matches(one, c, position):
            # size>=100G rather than size=>=100G: as si.disk rules write it
            cond = f"size{v}" if k == "size" and str(v)[:1] in "<>" else one.describe()
            out.append(f"{cond} ({have[k]})")
    return out


def choose_disks(layout: Layout, candidates: Sequence[Candidate]) -> list[Candidate]:
    """The machine disk of each layout disk, in the layout's order."""
    wanted = [d.dev for d in layout.disks]
    have = "; ".join(c.describe() for c in candidates) or "none"
    if len(candidates) < len(wanted):
        raise ConfigError(
            f"{layout.source}: the layout needs {len(wanted)} disk(s) ({', '.join(wanted)}) "
            f"but {len(candidates)} can be used on this machine ({have})",
            hint="add disks, name them with si.disk, or use a layout with fewer disks")
    chosen: dict[str, Candidate] = {}
    taken: dict[str, str] = {}
    for d in layout.disks:
        if d.select is None:
            continue
        hits = [c for i, c in enumerate(candidates, 1) if matches(d.select, c, i)]
        what = f"{layout.source}: disk {d.dev} ({d.select.describe()})"
        if not hits:
            raise ConfigError(f"{what} matches none of this machine's usable disks",
                              hint=f"usable disks: {have}")
        if len(hits) > 1:
            raise ConfigError(f"{what} matches {len(hits)} disks: "
                              + ", ".join(c.path for c in hits),
                              hint="add serial, wwn or by_path to tell them apart: "
                                   + "; ".join(c.describe() for c in hits))
        hit = hits[0]
        if hit.path in taken:
            raise ConfigError(f"{what} matches {hit.path}, which disk {taken[hit.path]} "
                              "already chose", hint="make the selectors tell the disks apart")
        chosen[d.dev], taken[hit.path] = hit, d.dev
    rest = iter(c for c in candidates if c.path not in taken)
    out = []
    for d in layout.disks:
        c = chosen.get(d.dev) or next(rest, None)
        if c is None:
            raise ConfigError(f"{layout.source}: no disk is left for {d.dev} once the "
                              "selectors chose theirs", hint=f"usable disks: {have}")
        out.append(c)
    return out
