"""Hardware detection on a fake sysfs built from a real VM's: PCI devices,
modaliases, the coldplug loop (loading virtio_pci makes the virtio devices
appear), and the libkmod binding where it needs no module to be loaded."""

from __future__ import annotations

import ctypes
import fnmatch
from pathlib import Path

import pytest

from agent import hardware
from agent.hardware import HardwareReport, coldplug, load_named, modaliases, pci_devices
from agent.kmod import Kmod, KmodError
from tests.unit.agentfakes import FakeClock, FakeSysfs

# Lines of a modules.alias (as the kernel's modules declare them) for the
# captured VM's devices.  The Intel host bridge has no driver module.
MODULES_ALIAS = """\
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias virtio:d00000001v* virtio_net
alias virtio:d00000002v* virtio_blk
alias virtio:d00000004v* virtio_rng
alias virtio:d00000005v* virtio_balloon
alias virtio:d00000013v* vmw_vsock_virtio_transport
"""


def alias_lookup(alias: str) -> list[str]:
    """What libkmod's lookup does with modules.alias: fnmatch, in file order."""
    out = []
    for line in MODULES_ALIAS.splitlines():
        _, pattern, module = line.split()
        if fnmatch.fnmatchcase(alias, pattern) and module not in out:
            out.append(module)
    return out


class FakeKernel:
    """Loads modules into a fake sysfs: virtio_pci makes the virtio devices
    appear, as the real driver does; modules in `broken` fail to load."""

    def __init__(self, sysfs: FakeSysfs, broken: tuple[str, ...] = ()) -> None:
        self.sysfs = sysfs
        self.broken = broken
        self.loads: list[str] = []
        self.loaded: set[str] = set()
        self.settles = 0

    def load(self, module: str) -> None:
        self.loads.append(module)
        if module in self.broken:
            raise KmodError(f"loading module {module} failed: No such device")
        if module == "virtio_pci" and module not in self.loaded:
            self.sysfs.add_virtio()
        self.loaded.add(module)

    def settle(self) -> None:
        self.settles += 1


def test_pci_devices_of_the_captured_vm(tmp_path: Path) -> None:
    FakeSysfs.captured(tmp_path / "sys")
    devs = pci_devices(tmp_path / "sys")
    assert [d.slot for d in devs] == ["0000:00:00.0", "0000:00:01.0", "0000:00:02.0",
                                      "0000:00:03.0", "0000:00:04.0", "0000:00:05.0"]
    bridge, balloon, blk, net = devs[:4]
    assert (bridge.vendor, bridge.device, bridge.class_name, bridge.driver) == \
        ("0x8086", "0x0d57", "bridge", None)
    assert (blk.pci_class, blk.class_name, blk.driver) == ("0x018000", "storage", "virtio-pci")
    assert (net.class_name, net.subsystem_vendor, net.subsystem_device) == \
        ("network", "0x1af4", "0x1041")
    assert net.modalias == "pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00"
    assert balloon.class_name == "other"  # class 0xffff00: unclassified


def test_no_pci_bus_means_no_devices(tmp_path: Path) -> None:
    assert pci_devices(tmp_path) == []
    assert modaliases(tmp_path) == []


def test_modaliases_cover_every_bus_sorted_and_unique(tmp_path: Path) -> None:
    fs = FakeSysfs.captured(tmp_path / "sys")
    # A second identical device: one alias, listed once.
    fs.pci("0000:00:06.0", vendor="0x1af4", device="0x1041", subsystem_vendor="0x1af4",
           subsystem_device="0x1041", pci_class="0x020000",
           modalias="pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00")
    # A device without a modalias (an ACPI container) is not an error.
    (tmp_path / "sys/bus/container/devices/PNP0A05:00").mkdir(parents=True)
    aliases = modaliases(tmp_path / "sys")
    assert aliases == sorted(set(aliases))
    assert len([a for a in aliases if a.startswith("pci:")]) == 6
    assert "virtio:d00000001v00001AF4" in aliases
    assert len(aliases) == 11


def test_a_rescan_reads_only_the_devices_that_came_since(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """ModaliasScan: known devices are not read again; a device whose
    directory came before its modalias (sysfs makes the directory first) is
    read again until it has one."""
    fs = FakeSysfs.captured(tmp_path / "sys", with_virtio=False)
    reads: list[str] = []
    read = hardware._read

    def counted(p: Path) -> str:
        reads.append(p.parent.name)
        return read(p)

    monkeypatch.setattr(hardware, "_read", counted)
    scan = hardware.ModaliasScan(tmp_path / "sys")
    first = scan()
    assert first == modaliases(tmp_path / "sys")
    reads.clear()
    assert scan() == first and reads == []  # nothing new: nothing read
    fs.virtio("virtio7", "0000:00:03.0", "virtio:d00000001v00001AF4")
    half = tmp_path / "sys/bus/virtio/devices/virtio8"
    half.mkdir()  # its attributes are not there yet
    assert scan() == sorted([*first, "virtio:d00000001v00001AF4"])
    assert sorted(reads) == ["virtio7", "virtio8"]
    reads.clear()
    (half / "modalias").write_text("virtio:d00000002v00001AF4\n")
    assert "virtio:d00000002v00001AF4" in scan() and reads == ["virtio8"]


def test_coldplug_loads_bus_driver_then_the_devices_it_reveals(tmp_path: Path) -> None:
    fs = FakeSysfs.captured(tmp_path / "sys", with_virtio=False)
    kernel = FakeKernel(fs, broken=("vmw_vsock_virtio_transport",))
    report = coldplug(alias_lookup, kernel.load, tmp_path / "sys", settle=kernel.settle)

    # Pass 1 loads virtio_pci (once per virtio PCI function), pass 2 the
    # drivers of the virtio devices that appeared; pass 3 finds nothing new.
    assert kernel.settles == 2
    assert kernel.loads[:5] == ["virtio_pci"] * 5
    assert sorted(kernel.loads[5:]) == ["virtio_balloon", "virtio_blk", "virtio_net",
                                        "virtio_rng", "vmw_vsock_virtio_transport"]
    assert report.loaded["virtio:d00000001v00001AF4"] == ["virtio_net"]
    assert report.loaded["pci:v00001AF4d00001042sv00001AF4sd00001042bc01sc80i00"] == \
        ["virtio_pci"]
    assert report.unmatched == ["pci:v00008086d00000D57sv00000000sd00000000bc06sc00i00"]
    assert report.failed == {
        "vmw_vsock_virtio_transport": "loading module vmw_vsock_virtio_transport failed: "
                                      "No such device"}
    assert len(report.pci) == 6

    d = report.to_dict()
    # Modules that failed to load are not reported as loaded.
    assert d["modules"] == ["virtio_balloon", "virtio_blk", "virtio_net", "virtio_pci",
                            "virtio_rng"]
    pci = d["pci"]
    assert isinstance(pci, list)
    assert pci[3] == {"slot": "0000:00:03.0", "vendor": "0x1af4", "device": "0x1041",
                      "class": "0x020000", "kind": "network", "driver": "virtio-pci"}
    assert d["failed"] == report.failed
    assert d["unmatched"] == report.unmatched


def test_coldplug_loads_two_devices_side_by_side_each_devices_modules_in_order(
        tmp_path: Path) -> None:
    """workers=2: ahci waits for its SATA probe while another device's driver
    loads; the two drivers matching one device load in modules.alias order,
    in one thread."""
    import threading

    fs = FakeSysfs(tmp_path / "sys")
    fs.pci("0000:00:1f.2", vendor="0x8086", device="0x2922", subsystem_vendor="0x1af4",
           subsystem_device="0x1100", pci_class="0x010601", modalias="pci:sata")
    fs.pci("0000:00:01.1", vendor="0x8086", device="0x7010", subsystem_vendor="0x1af4",
           subsystem_device="0x1100", pci_class="0x010180", modalias="pci:ide")
    met = threading.Barrier(2, timeout=5)
    done: list[tuple[str, str]] = []

    def load(module: str) -> None:
        if module in ("ahci", "ata_piix"):
            met.wait()  # both devices' first drivers are loading at once
        done.append((threading.current_thread().name, module))

    lookup = {"pci:sata": ["ahci"], "pci:ide": ["ata_piix", "ata_generic"]}
    report = coldplug(lambda a: lookup.get(a, []), load, tmp_path / "sys", workers=2)
    assert sorted(m for _, m in done) == ["ahci", "ata_generic", "ata_piix"]
    ide = [(t, m) for t, m in done if m.startswith("ata")]
    assert [m for _, m in ide] == ["ata_piix", "ata_generic"] and ide[0][0] == ide[1][0]
    assert all(t.startswith("modules") for t, _ in done)
    assert report.loaded == {"pci:sata": ["ahci"], "pci:ide": ["ata_piix", "ata_generic"]}


def test_a_loader_per_thread() -> None:
    """agent.drivers: each thread loads through a libkmod context of its own."""
    import threading

    from agent import drivers

    made: list[object] = []

    class FakeKmod:
        def __init__(self) -> None:
            made.append(self)
            self.used_by: set[str] = set()
            self.closed = False

        def load(self, name: str) -> None:
            self.used_by.add(threading.current_thread().name)

        def close(self) -> None:
            self.closed = True

    main = FakeKmod()
    orig = drivers.Kmod
    drivers.Kmod = FakeKmod  # type: ignore[assignment,misc]
    try:
        loaders = drivers.KmodPerThread(main)  # type: ignore[arg-type]
        loaders.load("a")
        threads = [threading.Thread(target=loaders.load, args=("b",), name=f"t{i}")
                   for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        loaders.close()
    finally:
        drivers.Kmod = orig  # type: ignore[misc]
    assert main.used_by == {threading.current_thread().name} and not main.closed
    assert len(made) == 3 and all(k.closed and len(k.used_by) == 1 for k in made[1:])


def test_coldplug_gives_up_after_max_passes(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    counter = iter(range(100))

    def load(module: str) -> None:  # every load reveals one more device
        n = next(counter)
        fs.virtio(f"virtio{n}", "0000:00:09.0", f"virtio:d{n:08d}v00001AF4")

    fs.virtio("virtio-start", "0000:00:09.0", "virtio:dstart")
    settles: list[int] = []
    report = coldplug(lambda a: ["endless"], load, tmp_path / "sys", max_passes=3,
                      settle=lambda: settles.append(1))
    assert len(settles) == 3
    assert len(report.loaded) == 3


# -- a USB stick: its SCSI disk appears a while after usb-storage bound it -----------------------

XHCI = "pci:v00001B36d0000000Dsv00001AF4sd00001100bc0Csc03i30"
STICK = "usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00"
USB_ALIAS = {XHCI: ["xhci_pci"], STICK: ["usb_storage"], "scsi:t-0x00": ["sd_mod"]}


def test_coldplug_waits_for_a_usb_sticks_scan_and_loads_sd_mod(tmp_path: Path) -> None:
    """What QEMU's xHCI stick did under the standard boot environment: the
    pass after usb_storage found nothing new (the scan comes delay_use
    later), and sd_mod was never loaded, so its local.cfg was never read."""
    fs = FakeSysfs(tmp_path / "sys")
    fs.pci("0000:00:02.0", vendor="0x1b36", device="0x000d", subsystem_vendor="0x1af4",
           subsystem_device="0x1100", pci_class="0x0c0330", modalias=XHCI)
    clock = FakeClock()
    hosts: list[Path] = []
    loads: list[str] = []

    def load(module: str) -> None:
        loads.append(module)
        if module == "xhci_pci":
            fs.usb_interface("0000:00:02.0", "2-1", "2-1:1.0")
            (tmp_path / "sys/bus/usb/devices/2-1:1.0/modalias").write_text(STICK + "\n")
        if module == "usb_storage":  # binds it: a SCSI host, not scanned yet
            hosts.append(fs.usb_storage("0000:00:02.0", "2-1", "2-1:1.0", "host6"))

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if clock.sleeps == [0.1] * 12:  # the scan, 1.2 s after the bind
            fs.scsi_device(hosts[0], "6:0:0:0")

    report = coldplug(lambda a: USB_ALIAS.get(a, []), load, tmp_path / "sys",
                      sleep=sleep, clock=clock.monotonic)
    assert loads == ["xhci_pci", "usb_storage", "sd_mod"]
    assert report.loaded["scsi:t-0x00"] == ["sd_mod"]
    assert len(clock.sleeps) == 12


def test_a_usb_stick_that_never_answers_is_waited_for_once(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    fs.usb_storage("0000:00:02.0", "2-1", "2-1:1.0", "host6")
    fs.usb_storage("0000:00:02.0", "2-2", "2-2:1.0", "host7", driver="uas")
    clock = FakeClock()
    given_up: set[str] = set()
    assert hardware.unscanned_usb_hosts(tmp_path / "sys") == ["host6", "host7"]
    assert hardware.wait_for_usb_scans(tmp_path / "sys", 2.0, given_up, clock.sleep,
                                       clock.monotonic)
    assert given_up == {"host6", "host7"}
    assert 19 <= len(clock.sleeps) <= 21  # the timeout, in steps of 0.1 s
    # the next pass does not wait again
    assert not hardware.wait_for_usb_scans(tmp_path / "sys", 2.0, given_up, clock.sleep,
                                           clock.monotonic)
    assert 19 <= len(clock.sleeps) <= 21


def test_no_usb_storage_no_wait(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    host = fs.usb_storage("0000:00:02.0", "2-1", "2-1:1.0", "host6")
    fs.scsi_device(host, "6:0:0:0")  # scanned already
    clock = FakeClock()
    assert hardware.unscanned_usb_hosts(tmp_path / "sys") == []
    assert not hardware.wait_for_usb_scans(tmp_path / "sys", 2.0, set(), clock.sleep,
                                           clock.monotonic)
    assert hardware.unscanned_usb_hosts(tmp_path / "nothing") == []
    assert clock.sleeps == []


def test_a_failed_module_is_not_retried(tmp_path: Path) -> None:
    attempts: list[str] = []

    def load(module: str) -> None:
        attempts.append(module)
        if module == "nouveau":
            raise OSError("Invalid argument")

    report = HardwareReport()
    load_named(load, ["ext4", "nouveau", "xfs", "nouveau"], report)
    assert attempts == ["ext4", "nouveau", "xfs"]
    assert report.failed == {"nouveau": "Invalid argument"}


def test_same_failing_module_for_two_devices_is_tried_once(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "sys")
    for n in (1, 2):
        fs.pci(f"0000:00:0{n}.0", vendor="0x10de", device="0x1c82", subsystem_vendor="0x1043",
               subsystem_device=f"0x861{n}", pci_class="0x030000",
               modalias=f"pci:v000010DEd00001C82sv00001043sd0000861{n}bc03sc00i00")
    tries: list[str] = []

    def load(module: str) -> None:
        tries.append(module)
        raise KmodError("loading module nouveau failed: Invalid argument")

    report = coldplug(lambda a: ["nouveau"], load, tmp_path / "sys")
    assert tries == ["nouveau"]
    assert len(report.loaded) == 2
    assert [d.class_name for d in report.pci] == ["display", "display"]


# -- libkmod, where no module is loaded ------------------------------------------------------

def _have_libkmod() -> bool:
    try:
        ctypes.CDLL("libkmod.so.2")
    except OSError:
        return False
    return True


needs_libkmod = pytest.mark.skipif(not _have_libkmod(), reason="libkmod.so.2 not installed")


def test_kmod_without_the_library_says_so() -> None:
    with pytest.raises(KmodError, match=r"cannot load libsysclone-nothing\.so\.9"):
        Kmod(libname="libsysclone-nothing.so.9")


@needs_libkmod
def test_kmod_over_an_empty_modules_dir(tmp_path: Path) -> None:
    with Kmod(tmp_path) as k:
        assert k.lookup("pci:v00001AF4d00001041sv00001AF4sd00001041bc02sc00i00") == []
        assert k.lookup("sysclone_no_such_module") == []
        assert k.is_builtin("sysclone_no_such_module") is False
        with pytest.raises(KmodError, match="module sysclone_no_such_module is not in this "
                                            "boot environment"):
            k.load("sysclone_no_such_module")
    assert k._ctx is None


def test_pci_class_names() -> None:
    assert hardware.PCI_CLASSES["02"] == "network"
    dev = hardware.PciDevice("0000:01:00.0", "0x8086", "0x10d3", "0x8086", "0xa01f",
                             "0x0c0330", "pci:...", "xhci_hcd")
    assert dev.class_name == "serial-bus"
