"""Storage benchmark: the agent's plan, partition, assemble and format
phases for a RAID1 + LVM layout on two disks, next to a shell script of the
bare commands doing the same in the same VM (same kernel, CPU, memory and
two blank disks), in the same run.

  agent     the agent installs with tests/unit/data/layouts/raid1-lvm.toml
            (a RAID1 /boot, the rest a RAID1 holding volume group sys with
            swap and root); its phase timings come from the monitor
  script    sfdisk x2, mdadm --create x2, pvcreate, vgcreate, lvcreate x2,
            mkfs.ext4 x2, mkswap: what an admin types by hand, timed from
            the first sfdisk to the last mkfs (bench.baseline's way: a
            boot environment whose /init is a shell script)

The ratio is agent (plan + partition + assemble + format) / script; the
agent's plan phase also checks the image and the disks, so the ratio
without it is printed too.  The image must hold mdadm and lvm2 (the plan
refuses a RAID/LVM layout for an image that could not boot from it):
without --image, an image `bench-storage` is bootstrapped with them.

    python -m bench.storage [--image NAME] [--runs N] [--memory MiB] [--json FILE]

Root and QEMU needed; state in $SYSCLONE_ROOT (default .state).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from agent.markers import DONE_MARKER
from sysclone.paths import StateRoot

REPO = Path(__file__).resolve().parent.parent
LAYOUT = REPO / "tests/unit/data/layouts/raid1-lvm.toml"
LAYOUT_NAME = "bench-storage.toml"
DISK_BYTES = 4 << 30
TIMEOUT = 3600
PHASES = ("plan", "partition", "assemble", "format")
IMAGE = "bench-storage"
IMAGE_PACKAGES = ("mdadm", "lvm2")
BENCH_DONE = "SYSCLONE-BENCH-DONE"
BENCH_FAILED = "SYSCLONE-BENCH-FAILED"
RAID_GUID = "A19D880F-05FC-4D3B-A006-743F0F84911E"
BIOS_BOOT_GUID = "21686148-6449-6E6F-744E-656564454649"

# The same storage as LAYOUT, by hand, with the same mkfs and LVM settings
# as the agent (no lazy init; LVM creating its own device nodes).
STORAGE_INIT = f"""#!/bin/sh
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
[ -c /dev/tty ] || mount -t devtmpfs devtmpfs /dev
mount -a
echo 4 > /proc/sys/kernel/printk
fail() {{ echo "{BENCH_FAILED}: $*"; poweroff -f; }}
modprobe -a virtio_pci virtio_blk md_mod raid1 dm_mod ext4 || fail modprobe
n=0
while [ ! -b /dev/vdb ]; do n=$((n + 1)); [ $n -gt 300 ] && fail "no /dev/vdb"; sleep 0.1; done
C='activation {{ udev_sync = 0 udev_rules = 0 }}'
read t0 rest < /proc/uptime
for d in /dev/vda /dev/vdb; do
    sfdisk -q "$d" <<EOF || fail sfdisk
label: gpt
size=1MiB, type={BIOS_BOOT_GUID}
size=512MiB, type={RAID_GUID}
type={RAID_GUID}
EOF
done
mdadm --create /dev/md0 --run --metadata=1.0 --level=raid1 --raid-devices=2 \\
    /dev/vda2 /dev/vdb2 2>/dev/null || fail mdadm md0
mdadm --create /dev/md1 --run --metadata=1.2 --level=raid1 --raid-devices=2 \\
    /dev/vda3 /dev/vdb3 2>/dev/null || fail mdadm md1
lvm pvcreate --config "$C" -ff -y /dev/md1 >/dev/null || fail pvcreate
lvm vgcreate --config "$C" sys /dev/md1 >/dev/null || fail vgcreate
lvm lvcreate --config "$C" -y -n swap -L 512M sys >/dev/null || fail lvcreate swap
lvm lvcreate --config "$C" -y -n root -l 100%FREE sys >/dev/null || fail lvcreate root
mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/sys/root || fail mkfs root
mkfs.ext4 -F -q -E lazy_itable_init=0,lazy_journal_init=0 /dev/md0 || fail mkfs boot
mkswap /dev/sys/swap >/dev/null || fail mkswap
read t1 rest < /proc/uptime
echo "{BENCH_DONE} mode=storage seconds=$(awk "BEGIN {{print $t1 - $t0}}")"
poweroff -f
"""


@dataclass(frozen=True)
class StorageRun:
    seconds: float  # plan + partition + assemble + format
    without_plan: float
    timings: dict[str, float]


def storage_seconds(events: list[dict[str, Any]]) -> StorageRun:
    """The storage phases' times from the monitor's events of one install."""
    done = next((e for e in events if e.get("kind") == "done"), None)
    if done is None:
        failed = next((e for e in events if e.get("kind") == "failed"), {})
        raise RuntimeError(f"the install did not finish: {failed.get('message', 'no report')}")
    timings = {k: float(v) for k, v in done["timings"].items()}
    missing = [p for p in PHASES if p not in timings]
    if missing:
        raise RuntimeError(f"the install reported no {', '.join(missing)} phase")
    total = sum(timings[p] for p in PHASES)
    return StorageRun(total, total - timings["plan"], {p: timings[p] for p in PHASES})


def script_seconds(line: str) -> float:
    m = re.search(rf"{BENCH_DONE} mode=storage seconds=([\d.]+)", line)
    if not m:
        raise RuntimeError(f"cannot read the script's result from {line!r}")
    return float(m.group(1))


def two_disks(state: StateRoot, name: str) -> tuple[Path, Path]:
    from ci.qemu import blank_disk

    return (blank_disk(state.vms / f"{name}-a.img", DISK_BYTES),
            blank_disk(state.vms / f"{name}-b.img", DISK_BYTES))


def run_agent(state: StateRoot, bootenv: Path, image: str, memory: int = 512) -> StorageRun:
    """One install by the agent with the RAID1 + LVM layout; its storage
    phases' times."""
    from ci.qemu import Vm
    from imageserver.instructions import LAYOUT_DIR
    from imageserver.serve import ServeConfig, free_port, serving
    from sysclone.demo import INSTALL_FAILED, install_append, pxe_vm

    layouts = state.scripts / LAYOUT_DIR
    layouts.mkdir(parents=True, exist_ok=True)
    (layouts / LAYOUT_NAME).write_text(LAYOUT.read_text())
    events: list[dict[str, Any]] = []
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port(), default_image=image)
    disks = two_disks(state, "bench-storage-agent")
    with serving(state, cfg) as srv:
        srv.monitor.subscribe(events.append)
        # Only the storage phases are timed: the image's own initrd is kept.
        append = install_append("bench-storage", image, cfg.http_port, cfg.rsync_port,
                                "poweroff", f"si.disks-layout={LAYOUT_NAME} si.initrd=keep")
        spec = pxe_vm(state, "bench-storage-agent", bootenv, disks[0], append,
                      memory_mib=memory)
        with Vm(replace(spec, disks=disks)) as vm:
            vm.wait_for(DONE_MARKER, TIMEOUT, fail=INSTALL_FAILED)
            vm.wait_exit(300)
    return storage_seconds(events)


def build_script_bootenv(state: StateRoot, out: Path) -> Path:
    """The script's boot environment: the standard kernel and tools (sfdisk
    from the debug group), /init the script above."""
    from bootenv import tools
    from bootenv.standard import build_bootenv
    from sysclone.ui import Ui

    groups = tuple(dict.fromkeys([*tools.DEFAULT_TOOLS, "debug"]))
    build_bootenv(state, Ui(quiet=True), output=out, init_script=STORAGE_INIT,
                  tool_groups=groups)
    return out


def run_script(state: StateRoot, bootenv: Path, memory: int = 512) -> float:
    from ci.qemu import INSTALLER_ARGS, Vm
    from sysclone.demo import pxe_vm

    disks = two_disks(state, "bench-storage-script")
    spec = pxe_vm(state, "bench-storage-script", bootenv, disks[0],
                  f"console=ttyS0,115200 panic=5 {INSTALLER_ARGS}", memory_mib=memory)
    with Vm(replace(spec, disks=disks)) as vm:
        _, line = vm.wait_for(BENCH_DONE, TIMEOUT, fail=BENCH_FAILED, partial=False)
        vm.wait_exit(120)
    return script_seconds(line)


def ensure_image(state: StateRoot, name: str) -> str:
    """An image with what RAID and LVM need at boot (the plan checks)."""
    from imageserver.store import ImageStore

    if ImageStore(state).exists(name):
        return name
    from imageserver.bootstrap import DEFAULT_PACKAGES, BootstrapSpec, bootstrap_image
    from kernels.aptsources import find_debian_mirror

    spec = BootstrapSpec(mirror=find_debian_mirror().uri,
                         packages=tuple(dict.fromkeys([*DEFAULT_PACKAGES, *IMAGE_PACKAGES])))
    bootstrap_image(state, name, spec)
    return name


def run(state: StateRoot, image: str | None = None, runs: int = 1,
        memory: int = 512) -> dict[str, Any]:
    """Both sides `runs` times; medians and their ratio."""
    from bootenv.standard import build_bootenv
    from sysclone.ui import Ui

    image = image or ensure_image(state, IMAGE)
    standard = state.bootenvs / "standard"
    if not (standard / "manifest.json").is_file():
        build_bootenv(state, Ui(quiet=True), output=standard)
    script_env = build_script_bootenv(state, state.bootenvs / "bench-storage-script")
    agent = [run_agent(state, standard, image, memory) for _ in range(runs)]
    script = [run_script(state, script_env, memory) for _ in range(runs)]
    a = statistics.median(r.seconds for r in agent)
    a_np = statistics.median(r.without_plan for r in agent)
    s = statistics.median(script)
    return {"agent": [{"seconds": r.seconds, "timings": r.timings} for r in agent],
            "script": script, "ratio": round(a / s, 3), "ratio_without_plan": round(a_np / s, 3),
            "agent_s": a, "script_s": s}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", help=f"an image with mdadm and lvm2 (default: {IMAGE}, "
                                    "bootstrapped when missing)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--memory", type=int, default=512, metavar="MiB")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    state = StateRoot.from_options(os.environ.get("SYSCLONE_ROOT") or Path(".state"))
    t0 = time.monotonic()
    r = run(state, a.image, a.runs, a.memory)
    last = r["agent"][-1]["timings"]
    print(f"storage  {r['ratio']:6.2f}  agent {r['agent_s']:.1f}s (plan+partition+assemble+"
          f"format) vs script {r['script_s']:.1f}s; without the plan phase "
          f"{r['ratio_without_plan']:.2f}")
    print("         agent phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in last.items()))
    print(f"         ({time.monotonic() - t0:.0f}s in all)")
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
