"""LVM: physical volumes, groups and logical volumes, as the plan sizes them.

Every call carries its own configuration: udev neither synchronises with
nor creates the device nodes (the boot environment's udev has no LVM
rules), so LVM makes /dev/<vg>/<lv> and /dev/mapper nodes itself, and the
command returns once they exist.
"""

from __future__ import annotations

import shlex

from agent.plan import GroupPlan, LvPlan

LVM_CONFIG = ("activation { udev_sync = 0 udev_rules = 0 } "
              "devices { obtain_device_list_from_udev = 0 }")


def _lvm(command: str, *args: str) -> list[str]:
    return ["lvm", command, "--config", LVM_CONFIG, *args]


def pvcreate_argv(pvs: list[str]) -> list[str]:
    # -ff -y: a leftover LVM label from an earlier install is overwritten.
    # One command for a group's physical volumes: lvm's start is the cost.
    return _lvm("pvcreate", "-ff", "-y", *pvs)


def vgcreate_argv(g: GroupPlan) -> list[str]:
    args = ["-s", f"{g.extent // 1024}k"]
    if g.max_lv:
        args += ["-l", str(g.max_lv)]
    if g.max_pv:
        args += ["-p", str(g.max_pv)]
    return _lvm("vgcreate", *args, g.name, *g.pvs)


def lvcreate_argv(g: GroupPlan, lv: LvPlan) -> list[str]:
    size = ["-l", "100%FREE"] if lv.extents is None else ["-l", str(lv.extents)]
    return _lvm("lvcreate", "-y", "-W", "y", "-Z", "y", "-n", lv.name, *size,
                *shlex.split(lv.options or ""), g.name)
