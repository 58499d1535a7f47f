"""The hardware QEMU can emulate, installed with the standard boot
environment and booted: every disk controller (virtio-blk, virtio-scsi,
SATA/AHCI, NVMe) and every NIC model (virtio-net, e1000, e1000e, rtl8139)
at least once, paired into as few machines as cover them; plus one cell
with a UYOK `--modules loaded` boot environment built from a captured
golden VM, installing the same machine it recorded.

Each cell checks, without trusting the agent: the install finished, the
inventory event names the driver the hardware needs, `bootenv check
--client` agrees before any other boot, and the installed disk boots to a
login prompt.  The golden image of the SATA and rtl8139 cells carries
Debian's generic kernel: the demo image's cloud kernel has no ahci module
(its own first boot from SATA could not find its root), and the image's
kernel is the image's business, not the boot environment's.

CI covers the virtio-blk + virtio-net cell with the main install
(tests/e2e/test_install_vm.py checks its inventory and `bootenv check`);
the cells here are marked `matrix_full` and deselected unless
SYSCLONE_MATRIX=full:

    SYSCLONE_MATRIX=full .venv/bin/pytest tests/e2e/test_hardware_matrix.py
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from agent.markers import DONE_MARKER
from ci.qemu import Vm, VmSpec, blank_disk
from imageserver.bootstrap import DEFAULT_PACKAGES, BootstrapSpec, bootstrap_image
from imageserver.store import ImageStore
from kernels.aptsources import find_debian_mirror
from sysclone.demo import INSTALL_FAILED, pxe_vm
from tests.e2e.conftest import IMAGE, Installer, sysclone

LAYOUTS = Path(__file__).resolve().parents[1] / "unit" / "data" / "layouts"

INSTALL_TIMEOUT = 2400
BOOT_TIMEOUT = 900
GENERIC_IMAGE = "golden-generic"


@dataclass(frozen=True)
class Cell:
    name: str
    disk: str  # virtio-blk | virtio-scsi | sata | nvme
    nic: str  # QEMU -device model
    nic_driver: str  # the module the inventory must show
    disk_driver: str
    image: str = IMAGE


CELLS = [
    Cell("vblk-vnet", "virtio-blk", "virtio-net-pci", "virtio_net", "virtio_blk"),
    Cell("nvme-e1000e", "nvme", "e1000e", "e1000e", "nvme"),
    Cell("sata-e1000", "sata", "e1000", "e1000", "ahci", GENERIC_IMAGE),
    Cell("vscsi-rtl8139", "virtio-scsi", "rtl8139", "8139too", "virtio_scsi", GENERIC_IMAGE),
]
FAST: set[str] = set()  # none: test_install_vm.py is the virtio cell in CI


def _spec(spec: VmSpec, cell: Cell, disk: Path) -> VmSpec:
    """The machine of a cell: its disk controller and NIC model."""
    if cell.disk == "virtio-scsi":
        # ci.qemu has no virtio-scsi bus: the controller and disk by hand
        # (not "sd0": QEMU's own name for the first SD card drive).
        return replace(spec, disks=(), nic_model=cell.nic, extra=(
            *spec.extra, "-device", "virtio-scsi-pci,id=scsi0",
            "-drive", f"if=none,id=vscsidisk0,format=raw,file={disk},cache=unsafe",
            "-device", "scsi-hd,drive=vscsidisk0,bus=scsi0.0,bootindex=1"))
    bus = {"virtio-blk": "virtio", "sata": "sata", "nvme": "nvme"}[cell.disk]
    return replace(spec, disk_bus=bus, nic_model=cell.nic)


@pytest.fixture(scope="module")
def generic_image(installer: Installer) -> str:
    """The golden image with Debian's generic kernel instead of the cloud one."""
    state = installer.state
    if not ImageStore(state).exists(GENERIC_IMAGE):
        packages = tuple("linux-image-amd64" if p == "linux-image-cloud-amd64" else p
                         for p in DEFAULT_PACKAGES)
        bootstrap_image(state, GENERIC_IMAGE, BootstrapSpec(mirror=find_debian_mirror().uri,
                                                            packages=packages))
    return GENERIC_IMAGE


def install_and_boot(installer: Installer, cell: Cell, bootenv: Path, hostname: str) -> dict:
    """Install `cell`'s machine, check its inventory, boot its disk; returns
    the inventory the agent sent."""
    state = installer.state
    disk = blank_disk(state.vms / f"{hostname}.img", 4 << 30)
    append = installer.append(hostname, cell.image)
    spec = _spec(pxe_vm(state, f"{hostname}-install", bootenv, disk, append), cell, disk)
    with Vm(spec) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    inv = next(e["inventory"] for e in installer.events_of(hostname)
               if e.get("kind") == "inventory")
    drivers = {n["driver"] for n in inv["nics"]} | {
        p["driver"] for p in inv["pci"] if p["driver"]} | set(inv["modules"])
    assert cell.nic_driver.replace("_", "-") in {d.replace("_", "-") for d in drivers}, inv
    assert any(cell.disk_driver in m for m in inv["modules"]) or cell.disk_driver in drivers
    assert [d["bus"] for d in inv["disks"]], inv["disks"]
    # What the monitor kept is what `bootenv check` reads: it must agree.
    r = sysclone(state, "bootenv", "check", str(bootenv), "--client", hostname, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    boot = _spec(VmSpec(name=f"{hostname}-boot", workdir=state.vms, disks=(disk,), boot="c",
                        mac=spec.mac), cell, disk)
    with Vm(boot) as vm:
        _, prompt = vm.wait_for(r"login:", BOOT_TIMEOUT)
        assert prompt.strip().startswith(f"{hostname} login:")
        assert vm.powerdown(300) == 0
    return inv


def _cells() -> list[object]:
    return [pytest.param(c, id=c.name, marks=() if c.name in FAST
                         else (pytest.mark.matrix_full,)) for c in CELLS]


@pytest.mark.parametrize("cell", _cells())
def test_cell(installer: Installer, request: pytest.FixtureRequest, cell: Cell) -> None:
    if cell.image == GENERIC_IMAGE:
        request.getfixturevalue("generic_image")
    install_and_boot(installer, cell, installer.bootenv, f"mx-{cell.name}")


@pytest.mark.matrix_full
def test_uyok_loaded_cell(installer: Installer, golden_ssh: str, ssh_key: Path,
                          tmp_path: Path) -> None:
    """A golden VM (virtio-blk + virtio-net) is installed and booted,
    captured over SSH (its /proc/modules recorded), and its own kernel
    with only the modules it had loaded installs the same machine."""
    state = installer.state
    cell = Cell("uyok", "virtio-blk", "virtio-net-pci", "virtio_net", "virtio_blk", golden_ssh)
    golden = "mx-uyok-golden"
    disk = blank_disk(state.vms / f"{golden}.img", 4 << 30)
    spec = pxe_vm(state, f"{golden}-install", installer.bootenv, disk,
                  installer.append(golden, golden_ssh))
    with Vm(spec) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    from imageserver.serve import free_port

    port = free_port()
    boot = VmSpec(name=f"{golden}-boot", workdir=state.vms, disks=(disk,), boot="c",
                  forwards=((port, 22),))
    with Vm(boot) as vm:
        vm.wait_for(r"login:", BOOT_TIMEOUT)
        sysclone(state, "image", "capture", "uyok-src", "--from",
                 f"ssh://root@127.0.0.1:{port}", "--ssh-key", str(ssh_key),
                 "--ssh-option", "StrictHostKeyChecking=no", timeout=3600)
        assert vm.powerdown(300) == 0
    versions = state.images / ".versions" / "uyok-src"
    recorded = max(versions.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else 0)
    assert "virtio_blk" in (recorded / "modules").read_text()
    sysclone(state, "kernel", "add", "uyok-k", "--from-image", "uyok-src")
    out = tmp_path / "uyok"
    sysclone(state, "bootenv", "build", "--kernel", "uyok-k", "--modules", "loaded",
             "--output", str(out))
    uyok = json.loads((out / "manifest.json").read_text())
    standard = json.loads((installer.bootenv / "manifest.json").read_text())
    drivers = {k: m["contents"]["modules"] + m["contents"]["firmware"]
               for k, m in (("uyok", uyok), ("standard", standard))}
    assert drivers["uyok"] <= drivers["standard"] / 4
    assert uyok["contents"]["total"] < standard["contents"]["total"]
    # The golden VM had no md arrays: no mdadm, and a RAID layout is refused
    # at plan time with the rebuild that would allow it.
    assert uyok["storage"]["ext4"]["can"] and not uyok["storage"]["raid"]["can"]
    assert "/usr/sbin/mdadm" not in uyok["tools"]
    r = sysclone(state, "layout", "plan", str(LAYOUTS / "raid1-lvm.toml"), "--disk", "8G,8G",
                 "--bootenv", str(out), check=False)
    assert r.returncode == 1 and "has no mdadm" in r.stderr and "--add-modules md_mod" in \
        r.stderr, r.stderr
    # The recorded machine passes before it boots; virtio-scsi would not.
    r = sysclone(state, "bootenv", "check", str(out), "--client", golden, check=False)
    assert r.returncode == 0, r.stdout
    install_and_boot(installer, cell, out, "mx-uyok-clone")
