"""mdadm: creating the plan's arrays, and the mdadm.conf lines that name
them.  The array UUID is the plan's (mdadm --uuid), so mdadm.conf is known
before the array exists and the installed system assembles it by UUID
under the name the layout gave it."""

from __future__ import annotations

from agent.plan import ArrayPlan


def create_argv(a: ArrayPlan) -> list[str]:
    argv = ["mdadm", "--create", a.name, "--run", f"--metadata={a.metadata}",
            f"--level={a.level}", f"--raid-devices={a.raid_devices}"]
    if a.spares:
        argv.append(f"--spare-devices={a.spares}")
    if a.chunk:
        argv.append(f"--chunk={a.chunk}")
    if a.layout:
        argv.append(f"--layout={a.layout}")
    if a.rounding:
        argv.append(f"--rounding={a.rounding}K")
    argv += [f"--uuid={a.uuid}", f"--homehost={a.homehost}"]
    if not a.metadata.startswith("0"):  # 0.90 superblocks have no name
        argv.append(f"--name={a.md_name}")
    return [*argv, *a.members]


def array_line(a: ArrayPlan) -> str:
    """mdadm.conf's ARRAY line, as `mdadm --detail --brief` would print it."""
    name = "" if a.metadata.startswith("0") else f" name={a.homehost}:{a.md_name}"
    return f"ARRAY {a.name} metadata={a.metadata} UUID={a.uuid}{name}"
