"""Making the install plan (agent.plan): the layout read and validated,
checked against the firmware, mapped onto this machine's disks, sized,
and every filesystem checked against the image it must hold.

The order is the order of the checks: what can be refused without the
disks is refused first, and nothing here writes anything.  Reading is
limited to what the layout asks for: `Probe.identify` when it selects disks
by WWN or by-path, `Probe.signature` for the filesystems it keeps.  The
disks it is given come with why each was chosen (agent.targets); a
si.disk rule that chose more of them than the layout uses is refused here.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from agent.bootenvinfo import BootenvInfo
from agent.disks import Disk, Probe
from agent.names import is_store_name
from agent.plan import (
    FS_FIXED_OVERHEAD,
    FS_MIN,
    FS_USABLE,
    IMAGE_GROWTH,
    MKFS_TOOLS,
    NOT_DEFERRED,
    SPARSE_ALL,
    SPARSE_MAX,
    DiskPlan,
    FsPlan,
    ImageRef,
    InstallPlan,
    MiB,
    default_swap_mib,
    deferred_path_ok,
)
from agent.planstack import boot_facts, plan_arrays, plan_crypts, plan_groups
from agent.storage import layoutfile
from agent.storage.defaults import default_layout
from agent.storage.geometry import PlannedPartition, plan_partitions
from agent.storage.mapping import map_disks
from agent.storage.model import (
    FAT_FS,
    FORMATTABLE_FS,
    BootFlavor,
    Bootloader,
    BootTarget,
    FsEntry,
    InstallType,
    LabelType,
    Layout,
)
from agent.storage.selectors import choose_disks
from agent.storage.stack import stack_sizes
from agent.storage.validate import check, validate
from agent.targets import DiskChoice, candidate
from sysclone.errors import ConfigError
from sysclone.run import which


def load_layout(instr_layout: dict[str, Any] | None, first_disk: Disk, fw: str,
                ram_bytes: int) -> tuple[Layout, str]:
    if instr_layout:
        name = str(instr_layout.get("name") or "server layout")
        fmt = instr_layout.get("format")
        if fmt not in layoutfile.FORMATS:
            raise ConfigError(f"layout {instr_layout.get('name')}: unknown format {fmt!r}",
                              hint="the image server sends " + " or ".join(layoutfile.FORMATS))
        layout = layoutfile.parse(instr_layout["text"], name, str(fmt))
    else:
        name = f"built-in default ({fw}, gpt)"
        layout = default_layout(first_disk.path, firmware=fw, label="gpt", root_fs="ext4",
                                swap_mib=default_swap_mib(first_disk.size, ram_bytes))
    validate(layout)
    return layout, name


def check_firmware(layout: Layout, name: str, fw: str) -> None:
    """A layout for the other firmware cannot boot: say so now, not after
    the disks are written.  Without a <bootloader>, the machine's firmware
    decides, and the layout must have what it needs (an ESP on UEFI, a BIOS
    boot partition for grub on a GPT disk)."""
    bl = layout.bootloader
    if bl is not None:
        wants = "uefi" if bl.install_type is InstallType.EFI else "bios"
        if wants != fw:
            raise ConfigError(
                f"layout {name} is for {wants.upper()} machines (install_type="
                f"\"{bl.install_type.value}\"), but this machine booted {fw.upper()}",
                hint=f"boot the machine in {wants.upper()} mode, or use a layout for "
                     f"{fw.upper()} (install_type=\"{'efi' if fw == 'uefi' else 'legacy'}\")")
        return
    synthetic = Bootloader(BootFlavor.GRUB2,
                           InstallType.EFI if fw == "uefi" else InstallType.LEGACY,
                           targets=(BootTarget(layout.disks[0].dev),))
    problems = check(replace(layout, bootloader=synthetic))
    if problems:
        raise ConfigError(f"layout {name} has no <bootloader>, so it is installed for this "
                          f"machine's firmware ({fw.upper()}): {problems[0].message}",
                          hint=problems[0].hint)


def _exclusive_usage(usage: dict[str, int], mountpoints: list[str]) -> dict[str, int]:
    """Bytes of the image under each mountpoint, minus deeper mountpoints'."""
    out = {}
    for mp in mountpoints:
        total = usage.get(mp)
        if total is None:
            # Deeper than the server's usage map: its data is counted in its parent.
            out[mp] = 0
            continue
        inner = [m for m in mountpoints if m != mp and (mp == "/" or m.startswith(mp + "/"))]
        # Only the outermost of nested children is subtracted.
        outer = [m for m in inner if not any(o != m and m.startswith(o + "/") for o in inner)]
        out[mp] = max(0, total - sum(usage.get(m, 0) for m in outer))
    return out


def _fs_capacity(fs: str, size: int) -> int:
    return int(size * FS_USABLE.get(fs, 0.97)) - (FS_FIXED_OVERHEAD if fs in FS_USABLE else 0)


def _fs_minimum(fs: str, need: int) -> int:
    """The smallest device `fs` holding `need` bytes of image fits on."""
    least = FS_MIN.get(fs, MiB)
    if need and fs in FS_USABLE:
        least = max(least, int((need + FS_FIXED_OVERHEAD) / FS_USABLE[fs]) + MiB)
    return least


def _new_uuid(fs: str) -> str:
    if fs in FAT_FS:
        v = uuid.uuid4().hex[:8].upper()
        return f"{v[:4]}-{v[4:]}"
    return str(uuid.uuid4())


def _family(fs: str) -> str:
    return "vfat" if fs in FAT_FS else fs


def _choose(layout: Layout, name: str, targets: list[Disk], probe: Probe,
            choices: Sequence[DiskChoice]) -> tuple[list[Disk], tuple[DiskChoice, ...]]:
    """The disks the layout's disks are, in its order, and the choices
    (agent.targets) told what became of each target."""
    if not layout.uses_selectors:
        if len(targets) < len(layout.disks):
            raise ConfigError(f"layout {name} needs {len(layout.disks)} disks, this machine "
                              f"has {len(targets)} usable: "
                              + ", ".join(d.path for d in targets))
        used = targets[: len(layout.disks)]
    else:
        known = probe.identify(targets)
        by_path = {d.path: d for d in known}
        used = [by_path[c.path] for c in choose_disks(layout, [candidate(d) for d in known])]
        targets = known
    # Leftover targets are fine when every layout disk selected its own;
    # otherwise taking the first of a rule's matches would be a guess.
    if not all(d.select is not None for d in layout.disks):
        _check_rules(name, len(layout.disks), targets, used, choices)
    return used, _account(layout, name, used, choices)


def _check_rules(name: str, wanted: int, targets: list[Disk], used: list[Disk],
                 choices: Sequence[DiskChoice]) -> None:
    """A si.disk rule that chose more disks than the layout uses is refused,
    naming the disks, so that one can be told apart."""
    unused = {d.path for d in targets} - {d.path for d in used}
    rule = next((c.rule for c in choices if c.rule and c.disk in unused), None)
    if rule is None:
        return
    ruled = {c.disk for c in choices if c.rule == rule}
    hits = [d for d in targets if d.path in ruled]
    raise ConfigError(
        f"si.disk chooses {len(targets)} disks for layout {name}, which uses {wanted}: "
        f"rule {rule} matches {', '.join(d.path for d in hits)}",
        hint="add conditions to the rule (+serial=..., +model=..., +size>=...) or name "
             "the disk: " + "; ".join(candidate(d).describe() for d in hits))


def _account(layout: Layout, name: str, used: list[Disk],
             choices: Sequence[DiskChoice]) -> tuple[DiskChoice, ...]:
    """The choices, with what the layout made of each chosen disk."""
    role = {d.path: ld for ld, d in zip(layout.disks, used, strict=True)}
    out = []
    for c in choices:
        ld = role.get(c.disk)
        if not c.chosen:
            out.append(c)
        elif ld is None:
            out.append(replace(c, chosen=False, why=f"{c.why}, but layout {name} uses "
                                                    f"{len(layout.disks)} disk(s)"))
        else:
            if ld.select is not None:
                c = replace(c, why=f"{c.why}; layout disk {ld.dev} selects it by "
                                   f"{ld.select.describe()}")
            elif ld.dev != c.disk:
                c = replace(c, why=f"{c.why}; for layout disk {ld.dev}")
            out.append(c)
    # Used disks first, in the layout's order: the order they are shown in.
    order = {d.path: i for i, d in enumerate(used)}
    return tuple(sorted(out, key=lambda c: order.get(c.disk, len(order))))


def _existing(ld: Any, disk: Disk, name: str, probe: Probe) -> tuple[PlannedPartition, ...]:
    """The partitions a label_type="none" disk already has, as the layout
    lists them: each must be there; their sizes are what they are."""
    out = []
    for p in sorted(ld.partitions, key=lambda p: p.number):
        dev = ld.partition_path(p.number)
        sig = probe.signature(dev)
        if sig is None or sig.part_size is None:
            raise ConfigError(f"layout {name}: {dev} does not exist on {disk.path}",
                              hint='label_type="none" keeps the partition table as it is: '
                                   "the partitions it lists must be there already")
        out.append(PlannedPartition(number=p.number, kind=p.kind, start=sig.part_start or 0,
                                    size=sig.part_size, device=dev, partition=p))
    return tuple(out)


def _check_kept(e: FsEntry, dev: str, fs: str, name: str, probe: Probe) -> tuple[str, str]:
    """A filesystem kept with format="no" must be the one the layout
    records: its type and its UUID or label, read off the disk now.
    Returns its (uuid, label)."""
    sig = probe.signature(dev)
    if sig is None:
        raise ConfigError(f"layout {name} keeps {dev} (format=\"no\"), which does not exist")
    hint = "the layout keeps the filesystem it records; is this the right machine and disk?"
    if _family(sig.fstype) != _family(fs):
        raise ConfigError(f"layout {name} keeps {fs} on {dev} (format=\"no\"), but it holds "
                          f"{sig.fstype or 'no filesystem'}", hint=hint)
    if e.fs_uuid is not None and sig.uuid != e.fs_uuid:
        raise ConfigError(f"layout {name} keeps {dev} with UUID {e.fs_uuid}, but its {fs} has "
                          f"UUID {sig.uuid or 'none'}", hint=hint)
    if e.fs_label is not None and sig.label != e.fs_label:
        raise ConfigError(f"layout {name} keeps {dev} labelled {e.fs_label!r}, but its "
                          f"{fs} is labelled {sig.label or 'nothing'!r}", hint=hint)
    return sig.uuid, sig.label


def make_plan(*, instructions: dict[str, Any], server: str, hostname: str,
              targets: list[Disk], fw: str, ram_bytes: int,
              have_tool: Any = which, probe: Probe | None = None,
              choices: Sequence[DiskChoice] = (),
              bootenv: BootenvInfo | None = None,
              have_module: Callable[[str], bool] | None = None) -> InstallPlan:
    """`bootenv`: what the boot environment says of the tools it lacks (the
    running one's when None), for the refusal.  `have_module`: whether the
    boot environment's kernel has a module (the agent passes the running
    kernel's; None checks nothing)."""
    probe = probe or Probe()
    img = instructions.get("image") or {}
    if not img.get("name"):
        raise ConfigError("the server's instructions name no image")
    image = ImageRef(name=img["name"], module=img.get("module") or img["name"], server=server,
                     rsync_port=int(img.get("rsync_port") or 873), bytes=img.get("bytes"),
                     files=img.get("files"), usage=dict(img.get("usage") or {}),
                     transfer_bytes=img.get("transfer_bytes"), version=img.get("version"),
                     deferred=_deferred(img.get("deferred")),
                     sparse=_sparse(img.get("sparse")))
    if not targets:
        raise ConfigError("no disk to install on")
    layout, layout_name = load_layout(instructions.get("layout"), targets[0], fw, ram_bytes)
    check_firmware(layout, layout_name, fw)
    disks, disk_choice = _choose(layout, layout_name, targets, probe, choices)
    layout = map_disks(layout, [d.path for d in disks])

    # Pseudo, network and removable-media lines (proc, nfs, a DVD drive) are
    # mounted by the installed system, never created here; so are kept
    # filesystems outside the layout (format="no" on another disk).
    owned = {d.partition_path(p.number) for d, p in layout.partitions()} | \
        {r.name for r in layout.raids} | {c.path for c in layout.crypts} | \
        {lv for lv in _lv_paths(layout)}
    entries = [e for e in layout.fstab() if not e.is_comment and e.real_dev
               and (e.fs or "").lower() in FORMATTABLE_FS
               and (e.format is not False or e.real_dev in owned)]
    made = [e for e in entries if e.format is not False]
    if any(e.mountpoint == "/" and e.format is False for e in entries):
        raise ConfigError(f"layout {layout_name}: / is kept (format=\"no\"); the image "
                          "cannot be installed into an existing root filesystem",
                          hint="keep data filesystems only")
    mps = [e.mountpoint for e in made if e.mountpoint and e.mountpoint.startswith("/")]
    if "/" not in mps:
        raise ConfigError(f"layout {layout_name}: no filesystem is mounted on /")
    needs = _exclusive_usage(image.usage, mps)

    def need_of(e: FsEntry) -> int:
        mp = e.mountpoint
        return int(needs.get(mp, 0) * IMAGE_GROWTH) if mp and e.format is not False else 0

    # What each partition holding a filesystem directly must keep when a
    # layout for a bigger disk is scaled down.
    minimums: dict[str, dict[int, int]] = {}
    for e in made:
        hit = layout.find_partition(e.real_dev or "")
        if hit is not None:
            per = minimums.setdefault(hit[0].dev, {})
            per[hit[1].number] = per.get(hit[1].number, 0) + \
                _fs_minimum((e.fs or "").lower(), need_of(e))

    disk_plans = []
    sizes: dict[str, int] = {}
    notes: list[str] = []
    for ld, disk in zip(layout.disks, disks, strict=True):
        if ld.label is LabelType.NONE:
            parts = _existing(ld, disk, layout_name, probe)
        else:
            parts = tuple(plan_partitions(ld, disk.size, minimums=minimums.get(ld.dev, {})))
        scaled = [p for p in parts if p.asked]
        if scaled:
            notes.append(f"{disk.path} is smaller than layout {layout_name} asks for: "
                         + ", ".join(f"{p.device} {(p.asked or 0) / MiB:,.0f} -> "
                                     f"{p.size / MiB:,.0f} MiB" for p in scaled))
        disk_plans.append(DiskPlan(disk, ld.label.value, parts))
        sizes.update({p.device: p.size for p in parts})
    sizes, groups = stack_sizes(layout, sizes)

    fs_plans: list[FsPlan] = []
    first_on: dict[str, FsPlan] = {}
    for e in entries:
        fs = (e.fs or "").lower()
        dev = e.real_dev
        assert dev is not None
        kept = e.format is False
        tool = MKFS_TOOLS.get(fs)
        if tool is None:
            raise ConfigError(f"layout {layout_name}: filesystem {fs!r} on {dev} is not "
                              "supported", hint="use one of " + ", ".join(sorted(MKFS_TOOLS)))
        if not kept and not have_tool(tool):
            raise _missing_tool(bootenv, tool, f"cannot create {fs}")
        size = sizes.get(dev)
        if size is None:
            raise ConfigError(f"layout {layout_name}: {dev} is not a device the layout creates")
        least = FS_MIN.get(fs, 0)
        if not kept and dev not in first_on and size < least:
            raise ConfigError(f"layout {layout_name}: {dev} is {size / MiB:,.1f} MiB, too small "
                              f"for {fs} (at least {least / MiB:,.0f} MiB)",
                              hint=f"make it bigger or use another filesystem than {fs}")
        mp = e.mountpoint if e.mountpoint and e.mountpoint.startswith("/") else None
        label = e.fs_label
        first = first_on.get(dev)
        if kept:
            fs_uuid, label = _check_kept(e, dev, fs, layout_name, probe)
        elif first is not None:  # a further subvolume of the same btrfs
            fs_uuid, label = first.uuid, first.label
        else:
            fs_uuid = e.fs_uuid or _new_uuid(fs)
        plan = FsPlan(e, dev, fs, fs_uuid, mp, size, need_of(e), label=label,
                      creates=not kept and first is None, kept=kept,
                      subvolume=e.subvolume, spec=e.mount_dev or "")
        fs_plans.append(plan)
        first_on.setdefault(dev, plan)
    _check_fit(fs_plans)

    arrays = plan_arrays(layout, sizes, hostname)
    crypts = plan_crypts(layout, sizes)
    group_plans = plan_groups(layout, groups)
    personalities = sorted({_personality(a.level) for a in arrays} - {""})
    for used, tool, need in ((arrays, "mdadm", personalities), (group_plans, "lvm", []),
                             (crypts, "cryptsetup", [])):
        if used and not have_tool(tool):
            raise _missing_tool(bootenv, tool, f"cannot build layout {layout_name}", need)
    if arrays and have_module is not None:
        # mdadm alone is not enough: a UYOK boot environment from a client
        # that ran RAID 1 carries raid1 only, and mdadm --create of a RAID 5
        # would fail with the disks already partitioned.
        lacking = [m for m in personalities if not have_module(m)]
        if lacking:
            levels = ", ".join(f"{a.name} ({a.level})" for a in arrays
                               if _personality(a.level) in lacking)
            raise ConfigError(f"layout {layout_name}: this boot environment's kernel has no "
                              f"{', '.join(lacking)} module, so it cannot build {levels}",
                              hint=f"rebuild it with --add-modules {','.join(lacking)}")
    boot = boot_facts(layout, fw, tuple(fs_plans), arrays, crypts, group_plans,
                      [d.path for d in disks])
    return InstallPlan(hostname=hostname, image=image, layout=layout, layout_name=layout_name,
                       disks=tuple(disk_plans), filesystems=tuple(fs_plans), firmware=fw,
                       boot_disks=boot.boot_disks,
                       overrides=_overrides(instructions.get("overrides")),
                       notes=tuple(notes), disk_choice=disk_choice, arrays=arrays,
                       crypts=crypts, groups=group_plans,
                       esp_mountpoint=boot.esp_mountpoint,
                       boot_raid_disks=boot.boot_raid_disks, kernel_args=boot.kernel_args,
                       root_stack=boot.root_stack)


def _overrides(value: Any) -> tuple[str, ...]:
    """The instructions' overrides, most important first: plain names."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 64:
        raise ConfigError("the server's instructions: overrides is not a list of names")
    for o in value:
        # It becomes the rsync module override.NAME: named as the store names.
        if not isinstance(o, str) or not is_store_name(o):
            raise ConfigError(f"the server's instructions: override {o!r} is not a plain name")
    return tuple(value)


def _deferred(value: Any) -> tuple[str, ...]:
    """The instructions' image.deferred: relative directory paths inside the
    image, each becoming an rsync exclude and a source path."""
    if value is None:
        return ()
    if not isinstance(value, list) or len(value) > 64:
        raise ConfigError("the server's instructions: image.deferred is not a list of paths")
    for p in value:
        if not isinstance(p, str) or not deferred_path_ok(p):
            raise ConfigError(f"the server's instructions: image.deferred entry {p!r} is not a "
                              "relative directory path inside the image")
        if p.split("/", 1)[0] in NOT_DEFERRED:
            # Fetched while /dev, /proc, /sys are bound into the target and
            # the bootloader writes /boot: never through those.
            raise ConfigError(f"the server's instructions: image.deferred entry {p!r} is under "
                              f"/{p.split('/', 1)[0]}, which the install needs before the rest")
    return tuple(value)


def _sparse(value: Any) -> tuple[str, ...] | None:
    """The instructions' image.sparse: relative paths of the image's sparse
    files, each becoming an rsync exclude and a source path; None for "all"
    and for an older server that does not say: every file comes with -S."""
    if value is None or value == SPARSE_ALL:
        return None
    if not isinstance(value, list) or len(value) > SPARSE_MAX:
        raise ConfigError(f"the server's instructions: image.sparse is neither a list of at "
                          f"most {SPARSE_MAX} paths nor {SPARSE_ALL!r}")
    for p in value:
        if not isinstance(p, str) or not deferred_path_ok(p):
            raise ConfigError(f"the server's instructions: image.sparse entry {p!r} is not a "
                              "relative file path inside the image")
    return tuple(value)


def _missing_tool(bootenv: BootenvInfo | None, tool: str, what: str,
                  modules: Sequence[str] = ()) -> ConfigError:
    """The refusal, with what the boot environment says of why it lacks
    `tool` -- read only then (the running one's when `bootenv` is None), not
    on every plan."""
    return (bootenv if bootenv is not None else BootenvInfo.load()).missing_tool(
        tool, what, modules)


def _personality(level: str) -> str:
    """The md module of a RAID level: raid1 for "raid1" or "1", raid456
    for levels 4, 5 and 6; "" for linear (md_mod itself)."""
    lvl = level.lower().removeprefix("raid")
    return {"4": "raid456", "5": "raid456", "6": "raid456"}.get(
        lvl, f"raid{lvl}" if lvl in ("0", "1", "10") else "")


def _lv_paths(layout: Layout) -> list[str]:
    from agent.storage.devices import lv_paths

    return [p for g in layout.volume_groups for lv in g.volumes for p in lv_paths(g.name,
                                                                                    lv.name)]


def _check_fit(plans: list[FsPlan]) -> None:
    """Does the image data of each filesystem fit it?  Subvolumes of one
    btrfs share its space."""
    by_dev: dict[str, list[FsPlan]] = {}
    for f in plans:
        if not f.kept:
            by_dev.setdefault(f.device, []).append(f)
    for dev, group in by_dev.items():
        f = group[0]
        need = sum(g.needs for g in group)
        if f.fs not in FS_USABLE or not need or need <= _fs_capacity(f.fs, f.size):
            continue
        mps = ", ".join(g.mountpoint or "" for g in group if g.needs)
        raise ConfigError(
            f"the image does not fit: {mps} needs {need / MiB:,.0f} MiB of image data but "
            f"{dev} ({f.size / MiB:,.0f} MiB {f.fs}) holds about "
            f"{max(0, _fs_capacity(f.fs, f.size)) / MiB:,.0f} MiB",
            hint="use a bigger disk or a layout with more room for " + mps)


__all__ = ["check_firmware", "load_layout", "make_plan"]
