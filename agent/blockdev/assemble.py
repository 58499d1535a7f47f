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
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from agent.blockdev import luks, lvm, md
from agent.partition import wait_for_devices
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


def _wipe(devices: list[str]) -> None:
    for d in devices:
        run(["wipefs", "--all", "--force", d])


def _crypt(c: CryptPlan, keys: Mapping[str, bytes], key_dir: Path) -> None:
    key = keys.get(c.name)
    if key is None:  # the plan phase fetched every key; this is a bug
        raise AssembleError(f"no key for LUKS volume {c.name}")
    _wipe([c.device])
    with luks.key_file(key_dir, c.name, key) as kf:
        run(luks.format_argv(c, kf), env=DM_ENV)
        run(luks.open_argv(c, kf), env=DM_ENV)


def assemble(plan: InstallPlan, say: Callable[[str], None], key_dir: Path = KEY_DIR
             ) -> list[str]:
    """Create everything above the partitions; returns the devices made."""
    made: list[str] = []
    for a in plan.arrays:
        _wipe([m for m in a.members if m != "missing"])
        run(md.create_argv(a))
        made.append(a.name)
        say(f"{a.name}: {a.level} of {' '.join(a.members)}")
    lv_paths = {lv.path for g in plan.groups for lv in g.volumes}
    early = [c for c in plan.crypts if c.device not in lv_paths]
    for c in early:
        _crypt(c, plan.keys, key_dir)
        made.append(c.path)
        say(f"{c.path}: LUKS2 on {c.device}")
    for g in plan.groups:
        for pv in g.pvs:
            _wipe([pv])
            run(lvm.pvcreate_argv(pv), env=DM_ENV)
        run(lvm.vgcreate_argv(g), env=DM_ENV)
        for lv in g.volumes:
            run(lvm.lvcreate_argv(g, lv), env=DM_ENV)
            made.append(lv.path)
        say(f"volume group {g.name} on {' '.join(g.pvs)}: "
            + ", ".join(lv.name for lv in g.volumes))
    for c in plan.crypts:
        if c not in early:
            _crypt(c, plan.keys, key_dir)
            made.append(c.path)
            say(f"{c.path}: LUKS2 on {c.device}")
    if made:
        wait_for_devices(made)
    return made
