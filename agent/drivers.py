"""The hardware phase's work: load the drivers of the devices found, with
udev starting beside them.

Started before the agent's imports, in a thread of its own, it saved
nothing measurable under emulation (2 vCPUs, TCG): the imports, the
coldplug's sysfs walk and, after it, the network phase's import of
pyroute2 all want the one interpreter lock, so the phase runs in order.
"""

from __future__ import annotations

import threading
from pathlib import Path

from agent import hardware
from agent.kmod import Kmod
from sysclone.background import in_background
from sysclone.run import run

UDEV_CONTROL = Path("/run/udev/control")  # udevd's socket: there while it runs

# What the install asks udev for: block devices (/dev/disk/by-*, md, dm,
# btrfs: the boot environment's rules are for those) and the buses disks and
# NICs hang off, whose records the inventory reads.  Not the rest -- ACPI,
# platform, tty, cpu, memory: hundreds of events on a server, each one
# udevd's workers process before `settle` returns, slowly under emulation.
UDEV_SUBSYSTEMS = ("block", "net", "pci", "scsi", "nvme", "usb", "virtio")


LOADERS = 2  # devices whose drivers load side by side (agent.hardware._load_devices)


class KmodPerThread:
    """Kmod.load for several threads at once: libkmod contexts are not
    shared between threads, so each thread that loads gets its own."""

    def __init__(self, main: Kmod) -> None:
        self._local = threading.local()
        self._local.kmod = main
        self._made: list[Kmod] = []
        self._lock = threading.Lock()

    def load(self, name: str) -> None:
        kmod = getattr(self._local, "kmod", None)
        if kmod is None:
            kmod = self._local.kmod = Kmod()
            with self._lock:
                self._made.append(kmod)
        kmod.load(name)

    def close(self) -> None:
        for kmod in self._made:
            kmod.close()


def load_drivers() -> hardware.HardwareReport:
    """Load the modules of every device (coldplug) while udev starts."""
    kmod = Kmod()
    loaders = KmodPerThread(kmod)
    # Between passes, udev settles -- when it ran before the agent (a
    # reinstall from a running system: its rules may load modules too).
    # In the boot environment it starts now, beside the coldplug, and is
    # settled once at the end.
    udev_ran = UDEV_CONTROL.exists()
    udev = None if udev_ran else in_background(start_udev, "udev")
    try:
        report = hardware.coldplug(
            kmod.lookup, loaders.load,
            settle=(lambda: run(["udevadm", "settle", "--timeout=10"], check=False))
            if udev_ran else None, workers=LOADERS)
        # The DHCP client's raw socket.  Filesystem drivers are not loaded
        # here: the install loads those its plan uses (agent.flow.
        # preload_filesystems); most installs never use xfs, 4 MB to verify
        # and load, a second under emulation.
        hardware.load_named(kmod.load, ("af_packet",), report)
    finally:
        loaders.close()
        kmod.close()
        if udev is not None:
            udev()  # raises what starting it raised
    if udev is not None:
        run(["udevadm", "settle", "--timeout=10"], check=False)
    return report


def start_udev() -> None:
    """udevd, and its coldplug trigger, run beside the module loading (in
    the background: load_drivers).  udev maintains /dev/disk/by-* and
    device properties (pyudev, blkid, the inventory), which nothing needs
    before the drivers are loaded.  Started after them, its start and the
    processing of every device's event came on top of the phase (0.5 s of
    its 2.0 under TCG); beside them, udevd's workers run while ahci and
    sr_mod wait for their probes.  Nothing is lost in between: a device
    that appears before udevd listens is in sysfs when the trigger (which
    runs after that) walks it, and one that appears later sends its own
    event."""
    # --daemon forks; the parent returns once udevd listens.
    run(["/usr/lib/systemd/systemd-udevd", "--daemon", "--resolve-names=never"], capture=False)
    run(["udevadm", "trigger", "--action=add",
         *(f"--subsystem-match={m}" for m in UDEV_SUBSYSTEMS)], check=False)
