"""The assemble phase: the plan's arrays, LUKS volumes and LVM, in the one
order that works for every stack the layout may describe

    md arrays (on partitions)
      -> LUKS volumes on partitions and arrays
        -> LVM physical volumes, groups, logical volumes
          -> LUKS volumes on logical volumes

Every device that receives a header (array member, LUKS device, physical
volume) is wiped of old signatures first: a new partition at the place of
an old one would otherwise still carry the last install's md superblock or
LVM label, and mdadm, cryptsetup or pvcreate would stop to ask about it.
The partitions among them are wiped by one wipefs before anything is
created (each command costs about 0.1 s to start under emulation); a LUKS
volume's device made here (an array, a logical volume) is wiped when it
exists, just before its header is written, and pvcreate -ff -y wipes a
physical volume made here itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.blockdev import luks, lvm, md
from agent.partition import wait_for_devices, wipe
from agent.plan import CryptPlan, InstallPlan
from sysclone.errors import SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

KEY_DIR = Path("/run/sysclone/keys")
# libdevmapper (under cryptsetup and lvm) makes its own device nodes instead
# of waiting for udev to confirm them: the boot environment's udev lacks the
# rules that would (95-dm-notify), and a wait without them never ends.
DM_ENV = {"DM_DISABLE_UDEV": "1"}


class AssembleError(SyscloneError):
    pass


def _made_here(plan: InstallPlan) -> set[str]:
    """The devices assemble itself creates."""
    return {a.name for a in plan.arrays} | {c.path for c in plan.crypts} \
        | {lv.path for g in plan.groups for lv in g.volumes}


def _headers_on_partitions(plan: InstallPlan, made: set[str]) -> list[str]:
    """Every device that gets a header and exists before assemble starts
    (is not `made` by it), in the order the headers are written, each once."""
    devices = [*(m for a in plan.arrays for m in a.members if m != "missing"),
               *(c.device for c in plan.crypts), *(pv for g in plan.groups for pv in g.pvs)]
    return list(dict.fromkeys(d for d in devices if d not in made))


def _crypt(c: CryptPlan, keys: Mapping[str, bytes], key_dir: Path, made: set[str]) -> None:
    key = keys.get(c.name)
    if key is None:  # the plan phase fetched every key; this is a bug
        raise AssembleError(f"no key for LUKS volume {c.name}")
    if c.device in made:
        wipe([c.device])
    with luks.key_file(key_dir, c.name, key) as kf:
        run(luks.format_argv(c, kf), env=DM_ENV)
        run(luks.open_argv(c, kf), env=DM_ENV)


def assemble(plan: InstallPlan, say: Callable[[str], None], key_dir: Path = KEY_DIR
             ) -> list[str]:
    """Create everything above the partitions; returns the devices made."""
    made: list[str] = []
    here = _made_here(plan)
    wipe(_headers_on_partitions(plan, here))
    for a in plan.arrays:
        run(md.create_argv(a))
        made.append(a.name)
        say(f"{a.name}: {a.level} of {' '.join(a.members)}")
    lv_paths = {lv.path for g in plan.groups for lv in g.volumes}
    early = [c for c in plan.crypts if c.device not in lv_paths]
    for c in early:
        _crypt(c, plan.keys, key_dir, here)
        made.append(c.path)
        say(f"{c.path}: LUKS2 on {c.device}")
    for g in plan.groups:
        # pvcreate -ff -y wipes what blkid finds on a device made here
        # (lvm's use_blkid_wiping, as wipefs does): no wipefs of its own.
        run(lvm.pvcreate_argv(list(g.pvs)), env=DM_ENV)
        run(lvm.vgcreate_argv(g), env=DM_ENV)
        for lv in g.volumes:
            run(lvm.lvcreate_argv(g, lv), env=DM_ENV)
            made.append(lv.path)
        say(f"volume group {g.name} on {' '.join(g.pvs)}: "
            + ", ".join(lv.name for lv in g.volumes))
    for c in plan.crypts:
        if c not in early:
            _crypt(c, plan.keys, key_dir, here)
            made.append(c.path)
            say(f"{c.path}: LUKS2 on {c.device}")
    if made:
        wait_for_devices(made)
    return made
