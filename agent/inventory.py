"""The machine's inventory: PCI devices, disks, NICs, CPU, memory, firmware
and DMI, found through udev (pyudev) after `udevadm trigger`.

The agent sends it to the image server in an `inventory` event; on any
running Linux system with Python 3.9+ and libudev, `sysclone client
inventory` prints the same JSON (the image server serves this very file,
with pyudev, as a zipapp: imageserver/prepare).  So it uses nothing but the
standard library and pyudev, and nothing newer than Python 3.9.

udev is asked once (`snapshot`): each device as a plain record (subsystem,
name, sysfs path, driver, properties, the few attributes we read); the
inventory is built from those records by pure functions, which the tests
feed with records captured on real machines.  `bootenv check` reads the
result: each storage controller and NIC with the modaliases of it and its
children (a virtio PCI device's virtio one), to say which module drives it.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

FORMAT = 1

# Attributes read per subsystem (pyudev reads them from sysfs on demand).
ATTRIBUTES = {
    "pci": ("vendor", "device", "subsystem_vendor", "subsystem_device", "class"),
    "block": ("size", "removable", "ro", "queue/rotational", "device/model", "wwid"),
    "net": ("address", "carrier", "speed", "type"),
}
DMI_FIELDS = ("sys_vendor", "product_name", "product_serial", "board_vendor", "board_name",
              "bios_vendor", "bios_version")
# Block devices that are not disks of the machine.
NOT_DISKS = ("loop", "ram", "zram", "nbd", "dm-", "md", "sr", "fd")
# PCI base classes (the first byte of the class code).
PCI_KINDS = {"01": "storage", "02": "network", "03": "display", "06": "bridge",
             "0c": "serial-bus"}


@dataclass(frozen=True)
class Record:
    """One udev device, as read once."""

    subsystem: str
    name: str  # sys_name: 0000:00:03.0, sda, eth0
    path: str  # sys_path
    driver: str | None = None
    properties: dict[str, str] = field(default_factory=dict)
    attributes: dict[str, str] = field(default_factory=dict)


def _attr(device: Any, name: str) -> str | None:
    try:
        value = device.attributes.get(name)
    except (OSError, KeyError, ValueError):
        return None
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def snapshot(context: Any = None) -> list[Record]:
    """Every device udev knows, as records (one pass over its database)."""
    import pyudev

    context = context or pyudev.Context()
    out = []
    for d in context.list_devices():
        subsystem = d.subsystem or ""
        attrs: dict[str, str] = {}
        for name in ATTRIBUTES.get(subsystem, ()):
            value = _attr(d, name)
            if value is not None:
                attrs[name] = value
        out.append(Record(subsystem, d.sys_name, d.sys_path, d.driver,
                          {k: str(v) for k, v in d.properties.items()}, attrs))
    return out


def _hex(value: str | None, width: int = 4) -> str:
    v = (value or "").lower()
    return v[2:] if v.startswith("0x") else v.zfill(width) if v else ""


def _under(path: str, parent: str) -> bool:
    return path.startswith(parent.rstrip("/") + "/")


def _pci_parent(record: Record, pci: list[Record]) -> Record | None:
    best = None
    for p in pci:
        if _under(record.path, p.path) and (best is None or len(p.path) > len(best.path)):
            best = p
    return best


def pci_devices(records: list[Record]) -> list[dict[str, Any]]:
    pci = [r for r in records if r.subsystem == "pci"]
    out = []
    for r in sorted(pci, key=lambda r: r.name):
        cls = _hex(r.attributes.get("class"), 6)
        children = sorted({c.properties["MODALIAS"] for c in records
                           if c is not r and c.subsystem != "pci"
                           and c.properties.get("MODALIAS") and _under(c.path, r.path)
                           and _pci_parent(c, pci) is r})
        out.append({
            "slot": r.name,
            "vendor": _hex(r.attributes.get("vendor")),
            "device": _hex(r.attributes.get("device")),
            "subsystem_vendor": _hex(r.attributes.get("subsystem_vendor")),
            "subsystem_device": _hex(r.attributes.get("subsystem_device")),
            "class": cls,
            "kind": PCI_KINDS.get(cls[:2], "other"),
            "driver": r.driver,
            "modalias": r.properties.get("MODALIAS", ""),
            # What the PCI device carries: virtio-pci's virtio device is
            # driven by virtio_blk / virtio_net, not by virtio_pci itself.
            "children": children,
        })
    return out


def _links(r: Record, prefix: str) -> list[str]:
    return sorted(x for x in r.properties.get("DEVLINKS", "").split() if x.startswith(prefix))


def _bus(r: Record) -> str:
    name, path = r.name, r.path
    if name.startswith("nvme"):
        return "nvme"
    if name.startswith("vd") or "/virtio" in path:
        return "virtio"
    if name.startswith("mmcblk"):
        return "mmc"
    bus = r.properties.get("ID_BUS", "")
    if "/usb" in path:
        return "usb"
    return bus or ("scsi" if name.startswith("sd") else "other")


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value else None
    except ValueError:
        return None


def disks(records: list[Record]) -> list[dict[str, Any]]:
    pci = [r for r in records if r.subsystem == "pci"]
    out = []
    for r in records:
        if r.subsystem != "block" or r.properties.get("DEVTYPE") != "disk" \
                or r.name.startswith(NOT_DISKS):
            continue
        sectors = _int(r.attributes.get("size"))
        controller = _pci_parent(r, pci)
        rot = r.attributes.get("queue/rotational")
        out.append({
            "name": r.name,
            "path": "/dev/" + r.name,
            "size_bytes": sectors * 512 if sectors is not None else None,
            "model": (r.properties.get("ID_MODEL") or r.attributes.get("device/model")
                      or "").replace("_", " ").strip(),
            "serial": r.properties.get("ID_SERIAL_SHORT") or r.properties.get("ID_SERIAL") or "",
            "wwn": r.properties.get("ID_WWN_WITH_EXTENSION") or r.properties.get("ID_WWN")
            or r.attributes.get("wwid") or "",
            "rotational": None if rot is None else rot == "1",
            "removable": r.attributes.get("removable") == "1",
            "read_only": r.attributes.get("ro") == "1",
            "bus": _bus(r),
            "by_path": _links(r, "/dev/disk/by-path/"),
            "by_id": _links(r, "/dev/disk/by-id/"),
            "controller": controller.name if controller else None,
            "controller_driver": controller.driver if controller else None,
        })
    return sorted(out, key=lambda d: d["name"])


def nics(records: list[Record]) -> list[dict[str, Any]]:
    pci = [r for r in records if r.subsystem == "pci"]
    out = []
    for r in records:
        if r.subsystem != "net" or "/virtual/" in r.path or r.name == "lo":
            continue
        parent = _pci_parent(r, pci)
        owners = [x for x in records if x.driver and _under(r.path, x.path)]
        carrier = r.attributes.get("carrier")
        speed = _int(r.attributes.get("speed"))
        out.append({
            "name": r.name,
            "mac": r.attributes.get("address", ""),
            # The nearest device up the tree with a driver: virtio_net for
            # a virtio NIC (its PCI device has virtio-pci), e1000e for an Intel.
            "driver": max(owners, key=lambda x: len(x.path)).driver if owners else None,
            "link": None if carrier is None else carrier == "1",
            "speed_mbps": speed if speed is not None and speed > 0 else None,
            "pci": parent.name if parent else None,
            "path": r.properties.get("ID_PATH", ""),
        })
    return sorted(out, key=lambda n: n["name"])


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return ""


def cpu(cpuinfo: str) -> dict[str, Any]:
    model = ""
    sockets = set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "physical id":
            sockets.add(value.strip())
    return {"model": model, "threads": os.cpu_count() or 0, "sockets": len(sockets) or None}


def memory_bytes(meminfo: str) -> int | None:
    for line in meminfo.splitlines():
        if line.startswith("MemTotal:"):
            parts = line.split()
            return int(parts[1]) * 1024 if len(parts) > 1 and parts[1].isdigit() else None
    return None


def loaded(proc_modules: str) -> list[str]:
    return sorted(line.split()[0] for line in proc_modules.splitlines() if line.split())


def build(records: list[Record], *, sysfs: str = "/sys", proc: str = "/proc",
          collector: str = "sysclone") -> dict[str, Any]:
    """The inventory from udev's records plus /proc and DMI."""
    dmi = {f: _read(f"{sysfs}/class/dmi/id/{f}") for f in DMI_FIELDS}
    return {
        "format": FORMAT,
        "collector": collector,
        "hostname": socket.gethostname(),
        "kernel": platform.release(),
        "firmware": "uefi" if os.path.isdir(f"{sysfs}/firmware/efi") else "bios",
        "dmi": {k: v for k, v in dmi.items() if v},
        "cpu": cpu(_read(f"{proc}/cpuinfo")),
        "memory_bytes": memory_bytes(_read(f"{proc}/meminfo")),
        "pci": pci_devices(records),
        "disks": disks(records),
        "nics": nics(records),
        "modaliases": sorted({r.properties["MODALIAS"] for r in records
                              if r.properties.get("MODALIAS")}),
        "modules": loaded(_read(f"{proc}/modules")),
    }


def collect(collector: str = "sysclone") -> dict[str, Any]:
    return build(snapshot(), collector=collector)


def records_to_json(records: list[Record]) -> str:
    """For capturing test data: `python3 -c 'from agent import inventory as i;
    print(i.records_to_json(i.snapshot()))'`."""
    return json.dumps([asdict(r) for r in records], indent=1, sort_keys=True)


def records_from_json(text: str) -> list[Record]:
    return [Record(**r) for r in json.loads(text)]


def main(argv: list[str] | None = None) -> int:
    """`sysclone client inventory` on a machine without sysclone."""
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print("usage: inventory [--records]\n\nPrint this machine's inventory (PCI devices, "
              "disks, NICs, CPU, memory, firmware, DMI) as JSON, as the sysclone agent "
              "reports it; --records prints udev's raw records instead.")
        return 0
    try:
        records = snapshot()
    except ImportError as e:
        print(f"inventory: pyudev is missing: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"inventory: cannot read udev's database: {e} (is libudev installed?)",
              file=sys.stderr)
        return 1
    if args[:1] == ["--records"]:
        print(records_to_json(records))
        return 0
    print(json.dumps(build(records, collector="sysclone client inventory"), indent=1,
                     sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
