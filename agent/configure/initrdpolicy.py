"""Whether the image's own initrd can boot this machine, or must be rebuilt.

Regenerating the initrd is by far the slowest step of an install on a slow
machine (thousands of short-lived processes), and needless when the image
already carries a generic one.  `si.initrd=auto` (the default) keeps the
image's initrd only when that is provably enough:

- there is one for every installed kernel;
- it was built generic, not for the golden client's hardware alone
  (initramfs-tools MODULES=most; dracut without host-only mode), as recorded
  inside the initrd itself;
- it holds what this install's storage stack needs to mount root: the root
  filesystem's module, the disk controllers' drivers, md/LVM/LUKS modules
  and tools when the layout uses them (each either built into the kernel or
  present in the initrd);
- nothing it embeds names the old disks: every UUID or device in its resume,
  crypttab, mdadm.conf and kernel command line files belongs to this plan.

Otherwise it is regenerated with the image's own tool.  `keep` and
`regenerate` force the choice.  The decision and every reason are reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.initramfs import Listing, module_name

# Filesystem/LUKS UUIDs, FAT volume ids and mdadm's array UUIDs (a:b:c:d).
UUID_RE = re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-"
                     r"[0-9a-fA-F]{12}\b|\b[0-9a-fA-F]{4}-[0-9a-fA-F]{4}\b|"
                     r"\b[0-9a-fA-F]{8}(?::[0-9a-fA-F]{8}){3}\b")
# Files inside an initrd that name disks (initramfs-tools, then dracut).
DISK_NAMING_FILES = (
    "conf/conf.d/resume", "conf/conf.d/zz-resume-auto", "conf/param.conf",
    "cryptroot/crypttab", "etc/crypttab", "etc/mdadm/mdadm.conf", "etc/mdadm.conf",
    "etc/cmdline.d/", "etc/conf.d/", "etc/fstab",
)
# Kernel modules of storage features, by what the plan uses.
FEATURE_MODULES = {"md": ("md_mod",), "lvm": ("dm_mod",), "luks": ("dm_mod", "dm_crypt")}
FEATURE_TOOLS = {"md": ("mdadm",), "lvm": ("lvm",), "luks": ("cryptsetup",)}
RAID_MODULES = {"raid0": "raid0", "raid1": "raid1", "raid4": "raid456", "raid5": "raid456",
                "raid6": "raid456", "raid10": "raid10"}


def is_disk_naming(path: str) -> bool:
    return any(path == f or (f.endswith("/") and path.startswith(f))
               for f in DISK_NAMING_FILES)


def wanted_in_initrd(path: str) -> bool:
    """The files of an initrd whose contents the policy reads: what names
    disks, and how it was built."""
    return is_disk_naming(path) or path.startswith("conf/") or path.endswith(
        "build-parameter.txt")


@dataclass(frozen=True)
class StorageNeeds:
    """What the new system's initrd must hold to mount its root."""

    modules: frozenset[str]  # canonical module names
    tools: frozenset[str]  # binaries (mdadm, lvm, cryptsetup)
    identifiers: frozenset[str]  # UUIDs and devices of this plan, lower-case
    # What the initrd must name to bring root up: the LUKS volumes it unlocks
    # (its crypttab), the md arrays it assembles (its mdadm.conf).
    must_name: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, list[str]]:
        return {"modules": sorted(self.modules), "tools": sorted(self.tools)}


def _norm(ident: str) -> str:
    """UUIDs compared without their separators: mdadm writes a:b:c:d."""
    return ident.lower().replace("-", "").replace(":", "")


def storage_needs(root_fs: str, disk_drivers: list[str], features: set[str],
                  raid_levels: set[str], identifiers: set[str],
                  must_name: set[str] | None = None) -> StorageNeeds:
    mods = {module_name(root_fs)} | {module_name(m) for m in disk_drivers}
    tools: set[str] = set()
    for f in features:
        mods |= set(FEATURE_MODULES.get(f, ()))
        tools |= set(FEATURE_TOOLS.get(f, ()))
    mods |= {RAID_MODULES[lvl] for lvl in raid_levels if lvl in RAID_MODULES}
    return StorageNeeds(frozenset(mods), frozenset(tools),
                        frozenset(i.lower() for i in identifiers),
                        frozenset(i.lower() for i in must_name or ()))


@dataclass(frozen=True)
class Decision:
    regenerate: bool
    policy: str
    reasons: tuple[str, ...] = field(default=())

    @property
    def action(self) -> str:
        return "regenerate" if self.regenerate else "keep"

    def describe(self) -> str:
        why = "; ".join(self.reasons) if self.reasons else "no reason given"
        return f"{self.action} the image's initrd (si.initrd={self.policy}): {why}"

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "policy": self.policy, "reasons": list(self.reasons)}


@dataclass(frozen=True)
class InitrdFacts:
    """What was found about one kernel's initrd in the image."""

    kver: str
    path: Path | None  # None: there is none
    listing: Listing | None
    builtin: frozenset[str]  # modules built into that kernel
    problem: str | None = None  # why it could not be read


def builtin_modules(root: Path, kver: str) -> frozenset[str]:
    for base in ("lib/modules", "usr/lib/modules"):
        p = root / base / kver / "modules.builtin"
        if p.is_file():
            return frozenset(module_name(line) for line in p.read_text().split() if line)
    return frozenset()


def _generic_problem(tool: str, listing: Listing) -> str | None:
    """Why this initrd is host-only (None when it is generic)."""
    if tool == "initramfs-tools":
        modules = _shell_var(listing, "MODULES")
        if modules is None:
            return "its initramfs.conf is missing, so how it was built is unknown"
        if modules != "most":
            return f"it was built with MODULES={modules} (host-only), not MODULES=most"
        return None
    if tool == "dracut":
        for p in ("usr/lib/dracut/hostonly-kernel-modules.txt",
                  "lib/dracut/hostonly-kernel-modules.txt"):
            if listing.has(p):
                return "dracut built it in host-only mode"
        return None
    return f"{tool} initrds are not inspected"


def _shell_var(listing: Listing, name: str) -> str | None:
    """The last assignment of `name` in the initrd's initramfs-tools config
    (conf/initramfs.conf, then conf/conf.d/* in order, as mkinitramfs reads)."""
    files = ["conf/initramfs.conf",
             *sorted(p for p in listing.contents if p.startswith("conf/conf.d/"))]
    value = None
    rx = re.compile(rf"^\s*{name}=[\"']?([^\"'\s#]*)", re.M)
    for f in files:
        text = listing.text(f)
        if text is None:
            continue
        for m in rx.finditer(text):
            value = m.group(1)
    return value


def _stale_names(listing: Listing, needs: StorageNeeds) -> list[str]:
    out = []
    for path in sorted(listing.contents):
        if not is_disk_naming(path):
            continue
        text = listing.text(path) or ""
        body = "\n".join(line for line in text.splitlines()
                         if line.strip() and not line.lstrip().startswith("#"))
        known = {_norm(i) for i in needs.identifiers}
        for token in UUID_RE.findall(body):
            if _norm(token) not in known:
                out.append(f"{path} names UUID {token}, not a device of this install")
        m = re.search(r"^\s*RESUME=[\"']?(/dev/\S+?)[\"']?\s*$", body, re.M)
        if m and m.group(1).lower() not in needs.identifiers:
            out.append(f"{path} names {m.group(1)}, not a device of this install")
    return out


def _unnamed(listing: Listing, needs: StorageNeeds) -> set[str]:
    text = _norm(" ".join(listing.text(p) or "" for p in listing.contents if is_disk_naming(p)))
    return {m for m in needs.must_name if _norm(m) not in text}


def decide(policy: str, tool: str | None, facts: list[InitrdFacts],
           needs: StorageNeeds) -> Decision:
    if tool is None:
        return Decision(False, policy, ("the image has no initrd tool sysclone knows",))
    if policy == "keep":
        return Decision(False, policy, ("si.initrd=keep",))
    if policy == "regenerate":
        return Decision(True, policy, ("si.initrd=regenerate",))
    reasons: list[str] = []
    for f in facts:
        if f.path is None or f.listing is None:
            reasons.append(f.problem or f"there is no initrd for kernel {f.kver}")
            continue
        problem = _generic_problem(tool, f.listing)
        if problem:
            reasons.append(f"{f.path.name}: {problem}")
        have = f.listing.module_names() | f.builtin
        missing = sorted(needs.modules - have)
        if missing:
            reasons.append(f"{f.path.name} lacks module(s) {', '.join(missing)}")
        tools = sorted(t for t in needs.tools
                       if not any(f.listing.has(f"{d}/{t}") for d in
                                  ("sbin", "usr/sbin", "bin", "usr/bin")))
        if tools:
            reasons.append(f"{f.path.name} lacks {', '.join(tools)}")
        reasons += [f"{f.path.name}: {s}" for s in _stale_names(f.listing, needs)]
        reasons += [f"{f.path.name} does not name {m}, which root needs at boot"
                    for m in sorted(_unnamed(f.listing, needs))]
    if reasons:
        return Decision(True, policy, tuple(reasons))
    kinds = ", ".join(sorted(needs.modules))
    return Decision(False, policy, (
        f"generic initrd for {', '.join(f.kver for f in facts)} already holds {kinds}"
        + (f" and {', '.join(sorted(needs.tools))}" if needs.tools else "")
        + ", and names no old disk",))
