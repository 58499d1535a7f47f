"""Shared fakes for the agent's unit tests: a sysfs tree under tmp_path that
mirrors the kernel's own layout (real relative symlinks, so the code under
test resolves them the way it does on a machine), a controllable clock, and
sample data captured from real tools (tests/unit/data/agent/README.md)."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

DATA = Path(__file__).resolve().parent / "data" / "agent"


def sample(name: str) -> str:
    """A captured sample as a text-mode pipe would deliver it: what
    subprocess.Popen(text=True) reads, universal newlines included (rsync's
    carriage-return progress updates become one line each)."""
    return io.TextIOWrapper(io.BytesIO((DATA / name).read_bytes()), encoding="utf-8").read()


class FakeClock:
    """time.monotonic/time.time/time.sleep for a module under test: sleeping
    advances the clock instead of waiting; each monotonic() call may also
    advance it by `tick`."""

    def __init__(self, start: float = 1000.0, tick: float = 0.0) -> None:
        self.now = start
        self.tick = tick
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _write(d: Path, **attrs: str) -> None:
    d.mkdir(parents=True, exist_ok=True)
    for k, v in attrs.items():
        (d / k).write_text(v + "\n")


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


class FakeSysfs:
    """A /sys below `root`: devices under devices/, bus and class entries as
    relative symlinks to them, drivers as symlinks to bus/*/drivers/*."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _driver(self, dev: Path, bus: str, driver: str | None) -> None:
        if driver:
            d = self.root / "bus" / bus / "drivers" / driver
            d.mkdir(parents=True, exist_ok=True)
            _link(dev / "driver", d)

    def pci(self, slot: str, *, vendor: str, device: str, subsystem_vendor: str,
            subsystem_device: str, pci_class: str, modalias: str,
            driver: str | None = None) -> Path:
        d = self.root / "devices/pci0000:00" / slot
        _write(d, vendor=vendor, device=device, subsystem_vendor=subsystem_vendor,
               subsystem_device=subsystem_device, modalias=modalias, **{"class": pci_class})
        _link(self.root / "bus/pci/devices" / slot, d)
        self._driver(d, "pci", driver)
        return d

    def virtio(self, name: str, parent_slot: str, modalias: str,
               driver: str | None = None) -> Path:
        d = self.root / "devices/pci0000:00" / parent_slot / name
        _write(d, modalias=modalias)
        _link(self.root / "bus/virtio/devices" / name, d)
        self._driver(d, "virtio", driver)
        return d

    def usb_interface(self, controller_slot: str, port: str, interface: str,
                      driver: str | None = None) -> Path:
        d = self.root / "devices/pci0000:00" / controller_slot / "usb2" / port / interface
        _write(d, modalias="usb:v0BDAp8153d3000dc00dsc00dp00icFFiscFFip00in00")
        _link(self.root / "bus/usb/devices" / interface, d)
        self._driver(d, "usb", driver)
        return d

    def usb_storage(self, controller_slot: str, port: str, interface: str, host: str,
                    driver: str = "usb-storage") -> Path:
        """A USB mass storage interface bound to `driver`, with the SCSI host
        it made and nothing scanned on its bus yet; its hostN directory."""
        d = self.root / "devices/pci0000:00" / controller_slot / "usb2" / port / interface
        _write(d, modalias="usb:v46F4p0001d0000dc00dsc00dp00ic08isc06ip50in00")
        if not (self.root / "bus/usb/devices" / interface).is_symlink():  # found unbound
            _link(self.root / "bus/usb/devices" / interface, d)
        self._driver(d, "usb", driver)
        _link(self.root / "bus/usb/drivers" / driver / interface, d)
        _write(self.root / "bus/usb/drivers" / driver, bind="")
        (d / host).mkdir()
        return d / host

    def scsi_device(self, host: Path, hctl: str, modalias: str = "scsi:t-0x00") -> Path:
        """A LUN found by the scan of `host` (hostN/targetN:C:T/N:C:T:L)."""
        target = host / ("target" + hctl.rsplit(":", 1)[0])
        d = target / hctl
        _write(d, modalias=modalias)
        _link(self.root / "bus/scsi/devices" / hctl, d)
        return d

    def net(self, name: str, *, address: str, device: Path | None = None, type: str = "1",
            carrier: str | None = None) -> Path:
        d = (device / "net" / name) if device else self.root / "devices/virtual/net" / name
        attrs = {"address": address, "type": type}
        if carrier is not None:
            attrs["carrier"] = carrier
        _write(d, **attrs)
        if device:
            _link(d / "device", device)
        _link(self.root / "class/net" / name, d)
        return d

    @classmethod
    def captured(cls, root: Path, with_virtio: bool = True) -> FakeSysfs:
        """The machine in sysfs-vm-virtio.json (a KVM guest: Intel host bridge,
        five virtio PCI functions, eth0 on virtio_net, two ifb devices, lo)."""
        data: dict[str, Any] = json.loads((DATA / "sysfs-vm-virtio.json").read_text())
        fs = cls(root)
        for p in data["pci"]:
            fs.pci(p["slot"], vendor=p["vendor"], device=p["device"],
                   subsystem_vendor=p["subsystem_vendor"],
                   subsystem_device=p["subsystem_device"], pci_class=p["class"],
                   modalias=p["modalias"], driver=p["driver"])
        if with_virtio:
            fs.add_virtio(data)
        return fs

    def add_virtio(self, data: dict[str, Any] | None = None) -> None:
        """The virtio devices (and their NICs): what appears once virtio_pci
        is loaded."""
        if data is None:
            data = json.loads((DATA / "sysfs-vm-virtio.json").read_text())
        devs = {}
        for v in data["virtio"]:
            devs[v["name"]] = self.virtio(v["name"], v["parent"], v["modalias"], v["driver"])
        for name, n in data["net"].items():
            dev = None
            if n["device"]:
                dev = devs[os.path.basename(n["device"])]
            self.net(name, address=n["address"], device=dev, type=n["type"],
                     carrier=n["carrier"])
