"""Can this boot environment drive that machine?  Answered before any boot,
offline, from the boot environment's manifest.json (every module it
carries with the modaliases it matches, the built-in ones, the firmware
it carries and lacks: bootenv.drivers) and the full kernel's
modules.alias (to name the module that would drive what it cannot).

The machine is described by an inventory (agent.inventory: the agent's
`hello`, `sysclone client inventory`, the server's copy of a client's) or
by plain modalias lines (`cat /sys/bus/*/devices/*/modalias`).  Storage
controllers and NICs are checked: a PCI device and the devices it carries
(virtio-pci's virtio device needs virtio_blk or virtio_net besides
virtio_pci).  The check fails when a disk controller, or the install NIC
(any NIC when the inventory does not say which), has no driver, and when
the machine has no NIC at all: every install, from the network or from
media, fetches the image from the image server.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernels.moduledb import AliasTable, kernel_aliases, normalize
from sysclone.errors import ConfigError

# virtio device ids (virtio:d<id>v<vendor>) of the disks and NICs.
VIRTIO_KINDS = {1: "network", 2: "storage", 8: "storage"}
PCI_KINDS = {"01": "storage", "02": "network"}
_MODALIAS_RE = re.compile(r"^[a-z0-9_]+:\S+$")


@dataclass(frozen=True)
class Device:
    """One thing to drive: its own modalias and those of its children."""

    kind: str  # storage | network
    label: str  # 0000:00:03.0 8086:10d3 (020000), or the modalias
    aliases: tuple[str, ...]
    needed: bool  # a disk controller or the install NIC (when known)
    nic: bool = False
    driver: str = ""  # bound on the machine the inventory is from


@dataclass(frozen=True)
class Row:
    device: Device
    modules: tuple[str, ...]  # what drives it here (built-in ones marked)
    lacking: tuple[tuple[str, tuple[str, ...]], ...]  # (alias, modules that would)
    firmware_missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.lacking and bool(self.modules)

    def describe(self) -> str:
        return f"{self.device.kind:<8} {self.device.label}  {self.verdict()}"

    def verdict(self) -> str:
        if self.ok:
            text = f"{', '.join(self.modules)}"
        else:
            parts = []
            for alias, would in self.lacking:
                parts.append(f"no driver: {' or '.join(would)} would drive it"
                             if would else f"no module of the kernel matches {alias} (one "
                             "built into the kernel shows only in an inventory's driver)")
            text = "; ".join(dict.fromkeys(parts))
            if self.modules:
                text = f"{', '.join(self.modules)}, but {text}"
        if self.firmware_missing:
            text += f"; missing firmware: {', '.join(self.firmware_missing)}"
        return text


@dataclass(frozen=True)
class CheckResult:
    rows: tuple[Row, ...]
    problems: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems


# ------------------------------------------------------------ input ---

def parse_machine(text: str, where: str) -> tuple[list[Device], list[str]]:
    """Devices to check from an inventory JSON or modalias lines; also
    returns notes (what was assumed)."""
    stripped = text.strip()
    if not stripped:
        raise ConfigError(f"{where}: empty", hint="an inventory JSON, or modalias lines")
    if stripped[0] in "{[":
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{where}: not valid JSON: {e.msg} at line {e.lineno}",
                              hint="an inventory (sysclone client inventory), or "
                                   "modalias lines") from None
        if isinstance(data, dict) and isinstance(data.get("inventory"), dict):
            data = data["inventory"]  # a hello event
        if not isinstance(data, dict) or not isinstance(data.get("pci"), list):
            raise ConfigError(f"{where}: JSON, but not an inventory (no 'pci' list)",
                              hint="sysclone client inventory prints one")
        return from_inventory(data, where)
    return from_modaliases(stripped.splitlines(), where), \
        ["plain modaliases: every storage controller counts as a disk controller, "
         "and one NIC that can be driven is enough"]


def _pci_label(slot: str, vendor: str, device: str, cls: str) -> str:
    return f"{slot} {vendor}:{device} ({cls})".strip()


def from_inventory(inv: dict[str, Any], where: str) -> tuple[list[Device], list[str]]:
    notes: list[str] = []
    with_disks = {d.get("controller") for d in inv.get("disks") or [] if isinstance(d, dict)}
    install = str(inv.get("install_nic") or "").lower()
    nic_slots = {n.get("pci"): n for n in inv.get("nics") or [] if isinstance(n, dict)}
    install_slot = next((slot for slot, n in nic_slots.items()
                         if install and install in (str(n.get("mac", "")).lower(),
                                                    str(n.get("name", "")))), None)
    if not install:
        notes.append("the inventory names no install NIC: one NIC that can be driven is "
                      "enough")
    devices = []
    for i, p in enumerate(inv["pci"]):
        if not isinstance(p, dict) or not isinstance(p.get("modalias"), str):
            raise ConfigError(f"{where}: pci[{i}] has no modalias")
        kind = PCI_KINDS.get(str(p.get("class", ""))[:2])
        if kind is None:
            continue
        slot = str(p.get("slot", ""))
        if kind == "storage":
            needed = slot in with_disks or not with_disks
        else:
            needed = bool(install) and slot == install_slot
        aliases = (p["modalias"], *[c for c in p.get("children") or [] if isinstance(c, str)])
        devices.append(Device(kind, _pci_label(slot, str(p.get("vendor", "")),
                                               str(p.get("device", "")),
                                               str(p.get("class", ""))),
                              tuple(a for a in aliases if a), needed, kind == "network",
                              normalize(str(p.get("driver") or ""))))
    return devices, notes


def from_modaliases(lines: Sequence[str], where: str) -> list[Device]:
    devices = []
    for number, raw in enumerate(lines, 1):
        alias = raw.strip()
        if not alias or alias.startswith("#"):
            continue
        if not _MODALIAS_RE.match(alias):
            raise ConfigError(f"{where}: line {number}: {alias[:60]!r} is not a modalias",
                              hint="one per line, as `cat /sys/bus/*/devices/*/modalias` "
                                   "prints them, or an inventory JSON")
        kind = _alias_kind(alias)
        if kind:
            devices.append(Device(kind, alias, (alias,), kind == "storage", kind == "network"))
    return devices


def _alias_kind(alias: str) -> str | None:
    m = re.match(r"^pci:v[0-9A-F]{8}d[0-9A-F]{8}sv[0-9A-F]{8}sd[0-9A-F]{8}bc([0-9A-F]{2})",
                 alias)
    if m:
        return PCI_KINDS.get(m.group(1).lower())
    m = re.match(r"^virtio:d([0-9A-F]{8})v", alias)
    if m:
        return VIRTIO_KINDS.get(int(m.group(1), 16))
    return None


# ------------------------------------------------------------ check ---

@dataclass(frozen=True)
class Carried:
    """What a boot environment's manifest says it can drive."""

    aliases: AliasTable
    builtin: frozenset[str]
    firmware_missing: dict[str, tuple[str, ...]]
    kver: str
    kernel_name: str
    kernel_path: str

    @classmethod
    def from_manifest(cls, manifest: dict[str, Any], where: str) -> Carried:
        mods = manifest.get("modules")
        if not isinstance(mods, dict) or not isinstance(mods.get("list"), list) \
                or (mods["list"] and not isinstance(mods["list"][0], dict)):
            raise ConfigError(f"{where}: no driver list (a manifest from before bootenv "
                              "check existed)", hint="rebuild it with sysclone bootenv build")
        pairs = [(a, m["name"]) for m in mods["list"] for a in m.get("aliases", ())]
        pairs += [(a, m["name"]) for m in mods.get("builtin", ()) for a in m.get("aliases", ())]
        kernel = manifest.get("kernel") or {}
        return cls(AliasTable(tuple(pairs)), frozenset(mods.get("builtin_names", ())),
                   {m["name"]: tuple(m.get("firmware_missing", ())) for m in mods["list"]
                    if m.get("firmware_missing")},
                   str(kernel.get("version", "")), str(kernel.get("name", "")),
                   str(kernel.get("path", "")))


def check(devices: Sequence[Device], carried: Carried, full: AliasTable | None
          ) -> CheckResult:
    rows = []
    for d in devices:
        drivers: list[str] = []
        lacking: list[tuple[str, tuple[str, ...]]] = []
        for i, alias in enumerate(d.aliases):
            here = carried.aliases.lookup(alias)
            if not here and i == 0 and d.driver in carried.builtin:
                # Built-in drivers rarely export their device table
                # (modules.builtin.modinfo); the one bound on the machine is proof.
                here = [d.driver]
            if here:
                drivers += [m for m in here if m not in drivers]
                continue
            would = tuple(full.lookup(alias)) if full is not None else ()
            # A child no module of the kernel claims (a virtio balloon's
            # virtio:...) is not the boot environment's fault.
            if i == 0 or would:
                lacking.append((alias, would))
        fw = tuple(f for m in drivers for f in carried.firmware_missing.get(m, ()))
        shown = tuple(f"{m} (built in)" if m in carried.builtin else m for m in drivers)
        rows.append(Row(d, shown, tuple(lacking), fw))
    problems = [f"{r.device.kind} {r.device.label}: {r.verdict()}"
                for r in rows if r.device.needed and not r.ok]
    nics = [r for r in rows if r.device.nic]
    if not nics:
        problems.append("no NIC in the inventory: the install fetches the image from the "
                        "image server over the network")
    if nics and not any(r.device.needed for r in nics) and not any(r.ok for r in nics):
        problems.append("no NIC can be driven: the install needs one")
    return CheckResult(tuple(rows), tuple(problems))


def load_manifest(bootenv: Path) -> dict[str, Any]:
    f = bootenv / "manifest.json"
    try:
        data = json.loads(f.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{bootenv}: no manifest.json",
                          hint="a directory `sysclone bootenv build --output` wrote") from None
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{f}: cannot read it: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{f}: not a boot environment manifest")
    return data


def full_kernel_aliases(carried: Carried, kernels_dir: Path, kernel: str | None
                        ) -> tuple[AliasTable | None, str]:
    """The full kernel's alias table, found by name or path (the manifest's
    by default); None and why when the manifest's is not at hand.  One
    named (`kernel`) must be there: ConfigError if not."""
    if kernel:
        return _named_kernel(carried, kernels_dir, kernel)
    candidates = []
    if carried.kernel_name:
        candidates.append(kernels_dir / carried.kernel_name)
    if carried.kernel_path:
        candidates.append(Path(carried.kernel_path))
    for c in candidates:
        mdir = c / "lib" / "modules" / carried.kver
        if (mdir / "modules.alias").is_file():
            return kernel_aliases(mdir), str(c)
    return None, ("the full kernel is not at hand "
                  f"({', '.join(map(str, candidates)) or 'not named'}): missing drivers "
                  "are not named")


def _named_kernel(carried: Carried, kernels_dir: Path, kernel: str) -> tuple[AliasTable, str]:
    """--kernel: the one asked for, or an error (a typo must not quietly
    turn into a check that names no missing driver)."""
    c = Path(kernel) if "/" in kernel else kernels_dir / kernel
    if not c.is_dir():
        raise ConfigError(f"--kernel {kernel}: no such kernel ({c})",
                          hint="a name `sysclone kernel list` shows, or a kernel tree directory")
    mdir = c / "lib" / "modules" / carried.kver
    if not (mdir / "modules.alias").is_file():
        raise ConfigError(f"--kernel {kernel}: no modules.alias for {carried.kver}, the boot "
                          f"environment's kernel, in {mdir}",
                          hint="the kernel the boot environment was built from")
    return kernel_aliases(mdir), str(c)
