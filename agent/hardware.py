"""Hardware detection: which devices the machine has and which kernel
modules drive them.

Every device the kernel knows publishes a `modalias` in sysfs; libkmod maps
it to modules through the boot environment's modules.alias.  Loading a bus
driver (virtio_pci) makes new devices appear (the virtio NIC and disk), so
the scan repeats until a pass loads nothing new.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from concurrent.futures import Executor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PciDevice:
    slot: str  # 0000:00:03.0
    vendor: str  # 0x1af4
    device: str
    subsystem_vendor: str
    subsystem_device: str
    pci_class: str  # 0x020000
    modalias: str
    driver: str | None

    @property
    def class_name(self) -> str:
        return PCI_CLASSES.get(self.pci_class[2:4], "other")


# PCI base classes (the first byte of the class code) an installer cares about.
PCI_CLASSES = {"01": "storage", "02": "network", "03": "display", "06": "bridge",
               "0c": "serial-bus"}


@dataclass
class HardwareReport:
    pci: list[PciDevice] = field(default_factory=list)
    loaded: dict[str, list[str]] = field(default_factory=dict)  # modalias -> modules
    unmatched: list[str] = field(default_factory=list)  # modaliases no module claims
    failed: dict[str, str] = field(default_factory=dict)  # module -> error

    def modules(self) -> list[str]:
        """Modules loaded for the devices found (failed loads left out)."""
        return sorted({m for mods in self.loaded.values() for m in mods} - set(self.failed))

    def to_dict(self) -> dict[str, object]:
        return {
            "pci": [
                {"slot": d.slot, "vendor": d.vendor, "device": d.device, "class": d.pci_class,
                 "kind": d.class_name, "driver": d.driver} for d in self.pci
            ],
            "modules": self.modules(),
            "unmatched": self.unmatched,
            "failed": self.failed,
        }


def _read(p: Path) -> str:
    try:
        return p.read_text().strip()
    except OSError:
        return ""


def pci_devices(sysfs: Path = Path("/sys")) -> list[PciDevice]:
    devs: list[PciDevice] = []
    base = sysfs / "bus/pci/devices"
    if not base.is_dir():
        return devs
    for d in sorted(base.iterdir()):
        drv = d / "driver"
        devs.append(PciDevice(
            slot=d.name, vendor=_read(d / "vendor"), device=_read(d / "device"),
            subsystem_vendor=_read(d / "subsystem_vendor"),
            subsystem_device=_read(d / "subsystem_device"), pci_class=_read(d / "class"),
            modalias=_read(d / "modalias"),
            driver=os.path.basename(os.readlink(drv)) if drv.is_symlink() else None,
        ))
    return devs


def modaliases(sysfs: Path = Path("/sys")) -> list[str]:
    """Every modalias of every device on every bus (sorted, unique)."""
    return ModaliasScan(sysfs)()


class ModaliasScan:
    """modaliases(), again and again over one coldplug: a device keeps its
    modalias, so a rescan reads only those of the devices that appeared
    since (and of those that had none yet: sysfs shows a device's directory
    a moment before its attributes).  Reading every device's took 0.14 s a
    pass under TCG; the coldplug's last passes, which find a few devices or
    none, are on the hardware phase's critical path."""

    def __init__(self, sysfs: Path = Path("/sys")) -> None:
        self.bus = os.fspath(sysfs / "bus")
        self.known: dict[str, str] = {}  # "bus/device" -> its modalias

    def __call__(self) -> list[str]:
        try:
            buses = os.listdir(self.bus)
        except OSError:
            return []
        for b in buses:
            devices = f"{self.bus}/{b}/devices"
            try:
                names = os.listdir(devices)
            except OSError:  # a bus without devices/ (or not a directory)
                continue
            for n in names:
                key = f"{b}/{n}"
                if key not in self.known:
                    alias = _read(Path(devices, n, "modalias"))
                    if alias:
                        self.known[key] = alias
        return sorted(set(self.known.values()))


Lookup = Callable[[str], list[str]]
Load = Callable[[str], None]


# USB mass storage drivers.  usb-storage scans a stick's SCSI bus in a work
# item of its own, delay_use (1 s) after it bound the interface, and the
# scan itself is asynchronous (uas's too): a pass right after finds no disk
# yet.  Nothing else would load sd_mod for it (the boot environment's udev
# loads no modules), so the stick, and a USB disk's local.cfg, were never
# seen.
USB_STORAGE_DRIVERS = ("usb-storage", "uas")
USB_SCAN_TIMEOUT = 15.0  # seconds; delay_use is 1 s, a slow stick or emulation takes longer


def unscanned_usb_hosts(sysfs: Path = Path("/sys")) -> list[str]:
    """SCSI hosts of USB storage with no device on their bus yet: their
    scan is still to come (hostN under the interface, targetN:C:T/N:C:T:L
    under it once a LUN answered)."""
    out: list[str] = []
    for drv in USB_STORAGE_DRIVERS:
        d = sysfs / "bus/usb/drivers" / drv
        if not d.is_dir():
            continue
        for intf in sorted(d.iterdir()):
            if ":" not in intf.name:  # bind, unbind, module, uevent
                continue
            for host in sorted(intf.glob("host*")):
                if not any(host.glob("target*/*:*:*:*")):
                    out.append(host.name)
    return out


def wait_for_usb_scans(sysfs: Path, timeout: float, given_up: set[str],
                       sleep: Callable[[float], None] = time.sleep,
                       clock: Callable[[], float] = time.monotonic) -> bool:
    """Wait until every USB storage host (but those in `given_up`) has a
    device; True if one was waited for (another pass is due).  Hosts still
    empty at the timeout go into `given_up`: a stick that never answers
    costs the wait once."""
    pending = [h for h in unscanned_usb_hosts(sysfs) if h not in given_up]
    if not pending:
        return False
    deadline = clock() + timeout
    while pending and clock() < deadline:
        sleep(0.1)
        pending = [h for h in unscanned_usb_hosts(sysfs) if h not in given_up]
    if pending:
        log.warning("USB storage %s: no device after %.0f s", ", ".join(pending), timeout)
        given_up.update(pending)
    return True


def coldplug(lookup: Lookup, load: Load, sysfs: Path = Path("/sys"),
             max_passes: int = 5, settle: Callable[[], object] | None = None,
             usb_scan_timeout: float = USB_SCAN_TIMEOUT,
             sleep: Callable[[float], None] = time.sleep,
             clock: Callable[[], float] = time.monotonic, workers: int = 1) -> HardwareReport:
    """Load the modules for every device, repeating while new devices appear
    (or a USB stick's SCSI scan is still to come); `workers` devices' at a
    time."""
    report = HardwareReport()
    tried: set[str] = set()
    given_up: set[str] = set()
    scan = ModaliasScan(sysfs)
    with ExitStack() as stack:
        pool = None
        if workers > 1:
            from concurrent.futures import ThreadPoolExecutor

            # One pool for every pass: its threads keep what `load` set up
            # in each (a libkmod context apiece, agent.drivers).
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=workers,
                                                          thread_name_prefix="modules"))
        for _ in range(max_passes):
            new = [a for a in scan() if a not in tried]
            if not new and wait_for_usb_scans(sysfs, usb_scan_timeout, given_up,
                                                  sleep, clock):
                new = [a for a in scan() if a not in tried]
            if not new:
                break
            jobs = []
            for alias in new:
                tried.add(alias)
                mods = lookup(alias)
                if not mods:
                    report.unmatched.append(alias)
                    continue
                report.loaded[alias] = mods
                jobs.append(mods)
            _load_devices(load, jobs, report, pool)
            if settle:
                settle()
    report.pci = pci_devices(sysfs)
    return report


def _load_devices(load: Load, jobs: list[list[str]], report: HardwareReport,
                  pool: Executor | None) -> None:
    """Each device's modules in order, in one thread (two drivers that match
    one device bind it in the order modules.alias gives), the devices side
    by side: a driver's load waits for its probe (ahci's SATA link resets,
    half a second under emulation, mostly asleep), and another device's
    load goes on meanwhile.  `load` must allow that many callers at once."""
    def one(mods: list[str]) -> None:
        for m in mods:
            _load_one(load, m, report)
    if pool is None or len(jobs) <= 1:
        for mods in jobs:
            one(mods)
    else:
        list(pool.map(one, jobs))


def _load_one(load: Load, module: str, report: HardwareReport) -> None:
    if module in report.failed:
        return
    t0 = time.monotonic()
    try:
        load(module)
        log.debug("module %s: %.2fs", module, time.monotonic() - t0)
    except Exception as e:  # a driver that fails to load must not stop the install
        log.warning("loading %s failed: %s", module, e)
        report.failed[module] = str(e)


def load_named(load: Load, names: Iterable[str], report: HardwareReport) -> None:
    """Modules asked for by name (filesystems, si.modules=...)."""
    for n in names:
        _load_one(load, n, report)


def block_driver_modules(disk: str, sysfs: Path = Path("/sys")) -> list[str]:
    """The kernel modules a block device depends on, from the disk up to the
    bus it hangs off: for a virtio disk [virtio_blk, virtio_pci], for a SATA
    disk [sd_mod, ahci].  Built-in drivers have no module and are left out;
    the installed system's initrd must carry the rest to find its root."""
    start = sysfs / "class/block" / disk / "device"
    if not start.exists():
        return []
    out: list[str] = []
    node = Path(os.path.realpath(start))
    devices_top = Path(os.path.realpath(sysfs / "devices"))
    while node != devices_top and devices_top in node.parents:
        mod = node / "driver" / "module"
        if mod.exists():
            name = os.path.basename(os.path.realpath(mod))
            if name not in out:
                out.append(name)
        node = node.parent
    return out
