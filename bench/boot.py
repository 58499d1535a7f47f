"""Boot benchmark: time from VM start to the agent being ready, next to the
time a plain busybox initramfs takes to reach userspace on the same kernel
and VM.  Both boot with -kernel/-initrd (no PXE), same memory, same CPU."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.baseline import BASELINE_MARKER, busybox_initramfs
from ci.qemu import INSTALLER_ARGS, Vm, VmSpec

# The same kernel command line for both, as sysclone's boot media write it.
APPEND = f"console=ttyS0,115200 panic=-1 {INSTALLER_ARGS} si.dry-run IMAGESERVER=192.0.2.1"


@dataclass(frozen=True)
class BootTimes:
    baseline: list[float]
    agent: list[float]
    # VM start to the kernel starting /init: the same kernel's own work,
    # plus unpacking each initramfs.
    baseline_init: list[float]
    agent_init: list[float]

    @property
    def ratio(self) -> float:
        return statistics.median(self.agent) / statistics.median(self.baseline)


def time_to_marker(name: str, kernel: Path, initrd: Path, marker: str, workdir: Path,
                   memory: int = 512, timeout: float = 300) -> tuple[float, float]:
    """Seconds from VM start to the kernel running /init, and to `marker`."""
    spec = VmSpec(name=name, workdir=workdir, memory_mib=memory, kernel=kernel, initrd=initrd,
                  append=APPEND, watchdog=False)
    with Vm(spec) as vm:
        t_init, _ = vm.wait_for(r"Run /init as init process", timeout)
        t, _ = vm.wait_for(marker, timeout)
    return t_init, t


def run(bootenv: Path, runs: int = 3) -> BootTimes:
    from agent.report import READY_MARKER

    kernel, initrd = bootenv / "kernel", bootenv / "initrd.img"
    with tempfile.TemporaryDirectory(prefix="sysclone-bench-") as tmp:
        work = Path(tmp)
        bb = busybox_initramfs(work, work / "busybox.cpio")
        base, agent = [], []
        for i in range(runs):
            base.append(time_to_marker(f"baseline{i}", kernel, bb, BASELINE_MARKER, work))
            agent.append(time_to_marker(f"agent{i}", kernel, initrd, READY_MARKER, work))
    return BootTimes([b[1] for b in base], [a[1] for a in agent], [b[0] for b in base],
                     [a[0] for a in agent])


if __name__ == "__main__":
    import sys

    t0 = time.monotonic()
    res = run(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    print(f"busybox initramfs to userspace: {res.baseline}")
    print(f"agent ready:                    {res.agent}")
    print(f"ratio (median): {res.ratio:.2f}  ({time.monotonic() - t0:.0f}s)")
