"""agent.inventory from udev records: real ones of a virtio VM
(tests/unit/data/agent/udev-records-vm.json) and composed ones of a server
with an AHCI disk and an Intel NIC, as udev's rules name them; the
monitor keeping each client's last inventory; `sysclone clients show` and
the served zipapp."""

from __future__ import annotations

import ast
import io
import json
import zipfile

from agent import inventory
from agent.inventory import Record
from imageserver import clientinventory
from imageserver.monitor import Monitor, read_inventory
from sysclone.cli import main
from tests.unit.agentfakes import sample

VM = inventory.records_from_json(sample("udev-records-vm.json"))

SERVER = [
    Record("pci", "0000:00:17.0", "/sys/devices/pci0000:00/0000:00:17.0", "ahci",
           {"MODALIAS": "pci:v00008086d0000A352sv000017AAsd0000312Dbc01sc06i01"},
           {"vendor": "0x8086", "device": "0xa352", "class": "0x010601",
            "subsystem_vendor": "0x17aa", "subsystem_device": "0x312d"}),
    Record("scsi", "0:0:0:0",
           "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0", "sd",
           {"MODALIAS": "scsi:t-0x00"}),
    Record("block", "sda",
           "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block/sda", None,
           {"DEVTYPE": "disk", "ID_BUS": "ata", "ID_MODEL": "Samsung_SSD_870_EVO_1TB",
            "ID_SERIAL_SHORT": "S6PTNZ0R123456", "ID_WWN": "0x5002538f4133e1a2",
            "ID_PATH": "pci-0000:00:17.0-ata-1",
            "DEVLINKS": "/dev/disk/by-id/wwn-0x5002538f4133e1a2 "
                        "/dev/disk/by-path/pci-0000:00:17.0-ata-1 "
                        "/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_S6PTNZ0R123456"},
           {"size": "1953525168", "queue/rotational": "0", "removable": "0", "ro": "0"}),
    Record("block", "sda1", "/sys/devices/pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/"
           "0:0:0:0/block/sda/sda1", None, {"DEVTYPE": "partition"}, {}),
    Record("pci", "0000:00:1f.6", "/sys/devices/pci0000:00/0000:00:1f.6", "e1000e",
           {"MODALIAS": "pci:v00008086d000015BCsv000017AAsd0000312Dbc02sc00i00"},
           {"vendor": "0x8086", "device": "0x15bc", "class": "0x020000"}),
    Record("net", "eno1", "/sys/devices/pci0000:00/0000:00:1f.6/net/eno1", None,
           {"ID_PATH": "pci-0000:00:1f.6"},
           {"address": "98:fa:9b:00:11:22", "carrier": "1", "speed": "1000", "type": "1"}),
]


def test_a_virtio_vm():
    inv = inventory.build(VM, sysfs="/nonexistent", proc="/nonexistent")
    pci = {p["slot"]: p for p in inv["pci"]}
    blk = pci["0000:00:02.0"]
    assert (blk["vendor"], blk["device"], blk["class"], blk["kind"], blk["driver"]) == \
        ("1af4", "1042", "018000", "storage", "virtio-pci")
    assert blk["children"] == ["virtio:d00000002v00001AF4"]
    assert pci["0000:00:03.0"]["kind"] == "network"
    # loop and zram devices are not disks of the machine
    assert [d["name"] for d in inv["disks"]] == ["vda"]
    vda = inv["disks"][0]
    assert vda["size_bytes"] == 536870912 * 512 and vda["bus"] == "virtio"
    assert vda["controller"] == "0000:00:02.0" and vda["controller_driver"] == "virtio-pci"
    # virtual NICs (lo, ifb) are not NICs of the machine
    assert inv["nics"] == [{"name": "eth0", "mac": "02:fc:00:00:00:01", "driver": "virtio_net",
                            "link": True, "speed_mbps": None, "pci": "0000:00:03.0",
                            "path": ""}]
    assert "virtio:d00000001v00001AF4" in inv["modaliases"]
    assert inv["firmware"] == "bios" and inv["format"] == 1


def test_a_server_as_udev_names_it():
    inv = inventory.build(SERVER, sysfs="/nonexistent", proc="/nonexistent")
    (sda,) = inv["disks"]
    assert sda == {
        "name": "sda", "path": "/dev/sda", "size_bytes": 1953525168 * 512,
        "model": "Samsung SSD 870 EVO 1TB", "serial": "S6PTNZ0R123456",
        "wwn": "0x5002538f4133e1a2", "rotational": False, "removable": False,
        "read_only": False, "bus": "ata",
        "by_path": ["/dev/disk/by-path/pci-0000:00:17.0-ata-1"],
        "by_id": ["/dev/disk/by-id/ata-Samsung_SSD_870_EVO_1TB_S6PTNZ0R123456",
                  "/dev/disk/by-id/wwn-0x5002538f4133e1a2"],
        "controller": "0000:00:17.0", "controller_driver": "ahci"}
    (nic,) = inv["nics"]
    assert (nic["driver"], nic["link"], nic["speed_mbps"], nic["pci"]) == \
        ("e1000e", True, 1000, "0000:00:1f.6")
    assert inv["pci"][0]["children"] == ["scsi:t-0x00"]


def test_proc_and_dmi(tmp_path):
    (tmp_path / "class/dmi/id").mkdir(parents=True)
    (tmp_path / "class/dmi/id/sys_vendor").write_text("LENOVO\n")
    (tmp_path / "class/dmi/id/product_serial").write_text("PF3ABC12\n")
    (tmp_path / "firmware/efi").mkdir(parents=True)
    (tmp_path / "cpuinfo").write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R)\n"
                                      "physical id\t: 0\n\nprocessor\t: 1\nphysical id\t: 1\n")
    (tmp_path / "meminfo").write_text("MemTotal:        2030544 kB\nMemFree: 1 kB\n")
    (tmp_path / "modules").write_text(sample("../kernels/proc-modules.golden-vm"))
    inv = inventory.build([], sysfs=str(tmp_path), proc=str(tmp_path))
    assert inv["dmi"] == {"sys_vendor": "LENOVO", "product_serial": "PF3ABC12"}
    assert inv["firmware"] == "uefi"
    assert inv["cpu"]["model"] == "Intel(R) Xeon(R)" and inv["cpu"]["sockets"] == 2
    assert inv["memory_bytes"] == 2030544 * 1024
    assert "virtio_blk" in inv["modules"] and len(inv["modules"]) == 27


def test_the_monitor_keeps_each_clients_last_inventory(tmp_path, capsys):
    m = Monitor(tmp_path / "log")
    first = inventory.build(VM, sysfs="/x", proc="/x")
    m.record({"kind": "hello", "hostname": "node01", "mac": "02:fc:00:00:00:01",
              "inventory": first})
    m.record({"kind": "phase", "hostname": "node01", "phase": "plan"})
    second = {**first, "kernel": "6.1.0-50-amd64"}
    m.record({"kind": "hello", "hostname": "node01", "inventory": second})
    kept = read_inventory(tmp_path / "log", "node01")
    assert kept is not None and kept["kernel"] == "6.1.0-50-amd64"
    assert kept["install_nic"] is None  # the second hello named none
    assert m.snapshot()[0]["inventory_at"] is not None
    assert read_inventory(tmp_path / "log", "node02") is None
    # sysclone clients show
    root = tmp_path
    assert main(["--root", str(root), "clients", "show", "node01"]) == 0
    out = capsys.readouterr().out
    assert "vda" in out and "virtio_net" in out and "0000:00:02.0" in out
    assert main(["--root", str(root), "clients", "show", "node01", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["disks"][0]["name"] == "vda"
    assert main(["--root", str(root), "clients", "show", "node02"]) == 1
    assert "no inventory from client 'node02'" in capsys.readouterr().err
    assert main(["--root", str(root), "clients", "node01"]) == 1


def test_the_served_zipapp_runs_on_its_own(tmp_path):
    data = clientinventory.zipapp()
    assert data == clientinventory.zipapp()
    names = zipfile.ZipFile(io.BytesIO(data[data.index(b"PK"):])).namelist()
    assert {"__main__.py", "inventory.py", "pyudev/__init__.py", "pyudev/device/_device.py"} \
        <= set(names)
    app = tmp_path / "inventory.pyz"
    app.write_bytes(data)
    # Nothing of sysclone inside: it runs where sysclone is not installed,
    # with Python 3.9 (ast refuses newer syntax for that target).
    tree = ast.parse(zipfile.ZipFile(app).read("inventory.py").decode(), feature_version=(3, 9))
    imported = {n.module if isinstance(n, ast.ImportFrom) else a.name
                for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom)
                for a in n.names}
    assert imported <= {"__future__", "json", "os", "platform", "socket", "sys", "dataclasses",
                        "typing", "pyudev"}, imported


def test_inventory_main_help(capsys):
    assert inventory.main(["--help"]) == 0
    assert "inventory" in capsys.readouterr().out
