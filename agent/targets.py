"""Which of the machine's disks the install may use, and why each is or is not.

By default every disk that is not removable, read-only, empty or in use
(a mounted filesystem: the boot medium) is a target, in name order: a USB
stick the machine booted from must not become its system disk.  si.disk
(agent.storage.diskspec) overrides that: a disk named by path or link is
used even when removable or in use (never when read-only); a rule chooses
among the usable disks only, with the selector matcher TOML layouts use.

Every disk gets a DiskChoice saying why, for the plan to show (dry run,
the monitor): a choice is shown, not only logged.  How many targets the
layout then uses, and whether a rule chose more than that, is the
planner's check (agent.planner), which knows the layout.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.disks import Disk, DiskError, Probe
from agent.storage.diskspec import DiskPath, DiskRule, DiskSpec, parse_disk_spec
from agent.storage.selectors import Candidate, matches, mismatches

DEFAULT_WHY = "not removable, read-only or in use"


@dataclass(frozen=True)
class DiskChoice:
    """Why one of the machine's disks is, or is not, an install target."""

    disk: str  # /dev/sda
    chosen: bool
    why: str
    rule: str = ""  # the si.disk rule that chose it: it must not choose more than is used

    def describe(self) -> str:
        return f"{self.disk:<16} {'chosen' if self.chosen else 'skipped'}: {self.why}"

    def to_dict(self) -> dict[str, object]:
        return {"disk": self.disk, "chosen": self.chosen, "why": self.why}


@dataclass(frozen=True)
class Targets:
    disks: tuple[Disk, ...]  # in the order the layout's disks map onto them
    choices: tuple[DiskChoice, ...]  # the chosen ones in that order, then the rest


def candidate(d: Disk) -> Candidate:
    """A disk as selectors see it."""
    return Candidate(d.path, d.size, d.model, d.serial, d.wwn, d.bus, d.by_path,
                     rotational=d.rotational)


def _unusable(d: Disk) -> str:
    """Why the default leaves this disk out ("" when it does not)."""
    why = [w for w, bad in (("empty (size 0)", d.size <= 0), ("read-only", d.readonly),
                            ("removable", d.removable),
                            ("in use (a filesystem on it is mounted)", d.in_use)) if bad]
    return ", ".join(why)


def _kernel_name(spec: DiskPath, root: Path) -> tuple[str, str]:
    """(kernel name, how it was found): sda for /dev/sda, and for a link
    the disk it points to, read where udev made it."""
    node = root / spec.path.lstrip("/")
    if not spec.is_link and not node.is_symlink():
        return spec.path.removeprefix("/dev/"), ""
    if not node.exists():
        return "", "no such link" if spec.is_link else ""
    dev = os.path.realpath(root / "dev")
    name = os.path.relpath(os.path.realpath(node), dev)
    return name, f"a link to {name}"


def install_targets(disks: Sequence[Disk], wanted: Iterable[DiskSpec | str] = (), *,
                    root: Path = Path("/"), probe: Probe | None = None) -> Targets:
    """The disks the layout's disks map onto, in order, and why each of
    `disks` is or is not one.  `root` is where /dev is (a test's tree)."""
    specs = [parse_disk_spec(w) if isinstance(w, str) else w for w in wanted]
    if any(isinstance(s, DiskRule) and s.select.wwn is not None for s in specs):
        disks = (probe or Probe()).identify(list(disks))  # lsblk's plain listing has no WWN
    if not specs:
        return _default(disks)
    by_name = {d.name: d for d in disks}
    usable = [d for d in disks if not _unusable(d)]
    chosen: dict[str, DiskChoice] = {}
    named: set[str] = set()
    missing = []
    for spec in specs:
        if isinstance(spec, DiskPath):
            name, how = _kernel_name(spec, root)
            d = by_name.get(name)
            if d is None:
                missing.append(str(spec) if spec.is_link else spec.path.removeprefix("/dev/"))
                if how:
                    missing[-1] += f" ({how})"
                continue
            if d.readonly:
                raise DiskError(f"si.disk: {d.name} is read-only")
            if d.path in named:
                raise DiskError(f"si.disk names {d.name} twice", hint="name each disk once")
            named.add(d.path)
            if d.path in chosen:
                continue  # a rule before chose it already
            chosen[d.path] = DiskChoice(d.path, True, "named by si.disk"
                                        + (f" as {spec.path}" if spec.is_link else ""))
            continue
        hits = [d for i, d in enumerate(usable, 1) if matches(spec.select, candidate(d), i)]
        if not hits:
            raise DiskError(f"si.disk rule {spec} matches none of this machine's usable disks",
                            hint=_found(disks))
        for d in hits:
            if d.path not in chosen:
                chosen[d.path] = DiskChoice(d.path, True, f"matches si.disk rule {spec}",
                                            rule=str(spec))
    if missing:
        raise DiskError(f"si.disk: no disk named {', '.join(missing)}",
                        hint="found " + (", ".join(by_name) or "no disks"))
    rules = [s for s in specs if isinstance(s, DiskRule)]
    skipped = [DiskChoice(d.path, False, _why_not(d, usable, rules)) for d in disks
               if d.path not in chosen]
    by_dev = {d.path: d for d in disks}
    return Targets(tuple(by_dev[p] for p in chosen), (*chosen.values(), *skipped))


def _why_not(d: Disk, usable: list[Disk], rules: list[DiskRule]) -> str:
    unusable = _unusable(d)
    if unusable:
        return unusable + ("" if d.readonly else "; name it in si.disk to use it")
    if not rules:
        return "not named by si.disk"
    position = usable.index(d) + 1
    return "; ".join("does not match " + ", ".join(mismatches(r.select, candidate(d), position))
                     for r in rules)


def _default(disks: Sequence[Disk]) -> Targets:
    choices = [DiskChoice(d.path, not _unusable(d), _unusable(d) or DEFAULT_WHY)
               for d in disks]
    usable = tuple(d for d in disks if not _unusable(d))
    if not usable:
        raise DiskError("no disk to install on",
                        hint="found " + (", ".join(d.name for d in disks) or "none")
                        + "; name one with si.disk=")
    return Targets(usable, tuple(c for c in choices if c.chosen)
                   + tuple(c for c in choices if not c.chosen))


def _found(disks: Sequence[Disk]) -> str:
    """Every disk with its facts and, for an unusable one, why."""
    if not disks:
        return "this machine has no disks"
    return "disks: " + "; ".join(candidate(d).describe()
                                 + (f" [{why}]" if (why := _unusable(d)) else "")
                                 for d in disks)
