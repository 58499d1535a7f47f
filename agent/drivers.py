"""The hardware phase's work: load the drivers of the devices found, then
start udev -- and the same work started before the rest of the agent is
imported.

In the boot environment the agent's imports (agent.flow and what it
needs: a few hundred modules read from the squashfs) take seconds under
emulation, nearly all Python on one CPU, while loading the drivers is
mostly the kernel's work (libkmod's calls release the interpreter lock)
and udev's.  So agent.main starts `Early` first, when nothing can ask to
stop before the drivers load, and the hardware phase then only waits for
its result: the two overlap on the machine's two CPUs.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent import hardware
from agent.kmod import Kmod
from sysclone.run import run

UDEV_CONTROL = Path("/run/udev/control")  # udevd's socket: there while it runs

# What the install asks udev for: block devices (/dev/disk/by-*, md, dm,
# btrfs: the boot environment's rules are for those) and the buses disks and
# NICs hang off, whose records the inventory reads.  Not the rest -- ACPI,
# platform, tty, cpu, memory: hundreds of events on a server, each one
# udevd's workers process before `settle` returns, slowly under emulation.
UDEV_SUBSYSTEMS = ("block", "net", "pci", "scsi", "nvme", "usb", "virtio")


def load_drivers() -> hardware.HardwareReport:
    """Load the modules of every device (coldplug), then start udev."""
    kmod = Kmod()
    try:
        # Between passes, udev settles -- when it runs already (a reinstall
        # from a running system); in the boot environment it starts below,
        # and each udevadm run is ~0.3 s under emulation.
        udev_runs = UDEV_CONTROL.exists()
        report = hardware.coldplug(
            kmod.lookup, kmod.load,
            settle=(lambda: run(["udevadm", "settle", "--timeout=10"], check=False))
            if udev_runs else None)
        # The DHCP client's raw socket.  Filesystem drivers are not loaded
        # here: the install loads those its plan uses (agent.flow.
        # preload_filesystems); most installs never use xfs, 4 MB to verify
        # and load, a second under emulation.
        hardware.load_named(kmod.load, ("af_packet",), report)
    finally:
        kmod.close()
    start_udev()
    return report


def start_udev() -> None:
    """udev maintains /dev/disk/by-* and device properties (pyudev, blkid)."""
    if UDEV_CONTROL.exists():
        return
    # --daemon forks; the parent returns once udevd listens.
    run(["/usr/lib/systemd/systemd-udevd", "--daemon", "--resolve-names=never"],
        capture=False)
    run(["udevadm", "trigger", "--action=add",
         *(f"--subsystem-match={m}" for m in UDEV_SUBSYSTEMS)], check=False)
    run(["udevadm", "settle", "--timeout=10"], check=False)


def may_start_early(cmdline: str, local_cfg: Path) -> bool:
    """Whether the drivers may load before the parameters are read: not
    when anything could ask to stop before they do -- a break on the kernel
    command line (si.break, SI_BREAK, in any spelling) or a local.cfg in
    the boot environment (which may hold one)."""
    return "break" not in cmdline.lower() and not local_cfg.exists()


class Early:
    """load_drivers() in a thread of its own, started at once."""

    def __init__(self) -> None:
        self._report: hardware.HardwareReport | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="drivers", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        try:
            self._report = load_drivers()
        except BaseException as e:  # raised again in the hardware phase, reported there
            self._error = e

    def result(self) -> hardware.HardwareReport:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._report is not None
        return self._report
