"""Machine inventories at the command line: `sysclone client inventory`
(this machine's, as the agent reports it) and the text `sysclone clients
show NAME` prints of a client's last one."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from imageserver.clientinventory import ZIPAPP_PATH
from sysclone.paths import StateRoot
from sysclone.ui import Ui

Handler = Callable[[argparse.Namespace, StateRoot, Ui], int]
Add = Callable[..., argparse.ArgumentParser]

INVENTORY_HELP = ("print this machine's inventory as the agent reports it (PCI devices, "
                  "disks, NICs, CPU, memory, firmware, DMI: JSON), for `sysclone bootenv "
                  "check --inventory`; without sysclone: curl -fsSo inventory.pyz "
                  f"http://SERVER:8181{ZIPAPP_PATH} && python3 inventory.pyz")


def cmd_client_inventory(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    import json

    from agent import inventory
    from sysclone.errors import SyscloneError

    try:
        records = inventory.snapshot()
    except Exception as e:  # no libudev, no pyudev, no sysfs: one line, not a traceback
        raise SyscloneError(f"cannot read udev's device database: {e}",
                            hint="needs libudev (systemd's udev) and /sys") from None
    print(inventory.records_to_json(records) if a.records else json.dumps(
        inventory.build(records, collector="sysclone client inventory"), indent=1,
        sort_keys=True))
    return 0


def add_inventory_command(csub: Any, add: Add) -> None:
    p = add(csub, "inventory", cmd_client_inventory, INVENTORY_HELP)
    p.add_argument("--records", action="store_true",
                   help="udev's raw device records instead (test data)")


def _size(n: Any) -> str:
    if not isinstance(n, int):
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return "?"


def render(client: str, inv: dict[str, Any]) -> str:
    """A client's inventory for people."""
    import io

    from sysclone.ui import print_table

    dmi = inv.get("dmi") or {}
    cpu = inv.get("cpu") or {}
    lines = [
        f"client    {client} (host name {inv.get('hostname', '?')}, kernel "
        f"{inv.get('kernel', '?')}, by {inv.get('collector', '?')})",
        f"machine   {dmi.get('sys_vendor', '?')} {dmi.get('product_name', '')} "
        f"serial {dmi.get('product_serial', '?')}, firmware {inv.get('firmware', '?')}",
        f"cpu       {cpu.get('model', '?')}, {cpu.get('threads', '?')} threads",
        f"memory    {_size(inv.get('memory_bytes'))}",
        "",
    ]
    pci = [{"slot": p.get("slot"), "id": f"{p.get('vendor')}:{p.get('device')}",
            "class": p.get("class"), "kind": p.get("kind"), "driver": p.get("driver") or "-"}
           for p in inv.get("pci") or []]
    disks = [{"disk": d.get("name"), "size": _size(d.get("size_bytes")),
              "model": d.get("model") or "-", "serial": d.get("serial") or "-",
              "wwn": d.get("wwn") or "-", "rot": {True: "yes", False: "no"}.get(
                  d.get("rotational"), "?"), "bus": d.get("bus"),
              "by-path": ", ".join(x.rsplit("/", 1)[-1] for x in d.get("by_path") or []) or "-"}
             for d in inv.get("disks") or []]
    nics = [{"nic": n.get("name"), "mac": n.get("mac"), "driver": n.get("driver") or "-",
             "link": {True: "up", False: "down"}.get(n.get("link"), "?"),
             "speed": f"{n['speed_mbps']} Mb/s" if n.get("speed_mbps") else "-",
             "install": "*" if n.get("mac") and n.get("mac") == inv.get("install_nic") else ""}
            for n in inv.get("nics") or []]
    for title, rows, cols in (
            ("PCI devices", pci, ["slot", "id", "class", "kind", "driver"]),
            ("disks", disks, ["disk", "size", "model", "serial", "wwn", "rot", "bus", "by-path"]),
            ("NICs", nics, ["nic", "mac", "driver", "link", "speed", "install"])):
        lines.append(f"{title}:")
        buf = io.StringIO()
        print_table(rows, cols, buf)
        lines += [f"  {x.rstrip()}" for x in buf.getvalue().splitlines()] if rows \
            else ["  (none)"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
