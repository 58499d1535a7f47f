"""A blank QEMU machine with 256 MiB of RAM is installed over the network
(by a cloud-kernel boot environment narrowed to the virtio drivers)
and must then boot from its own disk.  The result is checked without
trusting the agent: rsync's itemized dry run against the image (which also
proves the image's generic initrd was kept untouched), blkid against fstab
and the resume setting, the installed system's own boot, and the DHCP lease
its network config got."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.markers import DONE_MARKER, FAILED_MARKER
from agent.phases import PHASES
from bootenv.standard import build_bootenv
from ci.qemu import Vm, VmSpec, allocated_bytes, blank_disk
from sysclone.demo import INSTALL_FAILED
from sysclone.ui import Ui
from tests.e2e.conftest import IMAGE, Installer, sysclone
from tests.verify import blkid_uuid, fstab_uuids, itemized_differences, sh

HOSTNAME = "e2e-node1"
INSTALL_TIMEOUT = 2400  # hard limit; TCG is slow
# MiB: the 128 MiB client of issue 5.  With the cloud kernel's virtio-only
# boot environment the initrd unpacks in it; swap stays on to the end of
# the install (swapoff livelocked in reclaim here).
MEMORY = 128


@contextmanager
def attached(disk: Path, partitions: int) -> Iterator[str]:
    """The disk image on a read-only loop device, its partition nodes there."""
    dev = sh("losetup", "--find", "--show", "--partscan", "--read-only", str(disk)).strip()
    try:
        for _ in range(50):  # partition nodes may appear late, or only with partx
            if Path(f"{dev}p{partitions}").exists():
                break
            sh("partx", "-a", dev, check=False)
            time.sleep(0.1)
        yield dev
    finally:
        sh("losetup", "-d", dev)


@contextmanager
def mounted_disk(disk: Path, partition: int, where: Path) -> Iterator[Path]:
    with attached(disk, partition) as dev:
        where.mkdir(parents=True, exist_ok=True)
        sh("mount", "-o", "ro", f"{dev}p{partition}", str(where))
        try:
            yield where
        finally:
            sh("umount", str(where))


# A VM fleet's boot environment: Debian's cloud kernel narrowed to the
# virtio drivers (`bootenv build --flavor cloud-amd64 --modules ...`).  The
# standard one cannot install in 128 MiB: its generic kernel with the
# bare-metal drivers and their firmware (a 31 MiB initrd) cannot even be
# unpacked there, and the generic kernel alone leaves too little for the
# agent (measured: the OOM killer stops it while drivers load).
VM_FLAVOR = "cloud-amd64"
VM_MODULES = "filesystems,watchdog,virtio_blk,virtio_net,virtio_pci,af_packet"


@pytest.fixture(scope="module")
def vm_bootenv(installer: Installer) -> Path:
    out = installer.state.root / "bootenv-vm"
    return build_bootenv(installer.state, Ui(quiet=True), output=out, flavor=VM_FLAVOR,
                         modules_arg=VM_MODULES).kernel.parent


# cluster.xml puts this one machine in a group with an override; the host
# has one of its own, which wins where both hold a file (imageserver.cluster).
CLUSTER = f"""<xml><name>all</name>
  <group><name>e2e-group</name><override>e2e-group</override><node>{HOSTNAME}</node></group>
</xml>
"""
OVERRIDES = {HOSTNAME: {"etc/sysclone-override": "the host's\n"},
             "e2e-group": {"etc/sysclone-override": "the group's\n",
                           "etc/sysclone-group-only": "the group's only\n"}}


@pytest.fixture(scope="module")
def installed(installer: Installer, vm_bootenv: Path) -> Path:
    """Install HOSTNAME once; the tests below inspect the result."""
    installer.state.scripts.mkdir(parents=True, exist_ok=True)
    (installer.state.scripts / "cluster.xml").write_text(CLUSTER)
    for name, files in OVERRIDES.items():
        for rel, text in files.items():
            (installer.state.overrides / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (installer.state.overrides / name / rel).write_text(text)
    disk = blank_disk(installer.state.vms / f"{HOSTNAME}.img", 4 << 30)
    with installer.boot(f"{HOSTNAME}-install", disk, installer.append(HOSTNAME),
                        memory=MEMORY, bootenv=vm_bootenv) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0  # the agent powered the machine off
    return disk


def test_agent_reported_every_phase(installer: Installer, installed: Path) -> None:
    events = installer.events_of(HOSTNAME)
    done = [e["phase"] for e in events if e.get("kind") == "phase" and e["status"] == "done"]
    # initrd and bootloader run side by side: their order may vary.
    assert sorted(done) == sorted(p.name for p in PHASES) and len(done) == len(PHASES)
    assert done[:9] == [p.name for p in PHASES[:9]] and done[-1] == "finish"
    progress = [e for e in events if e.get("kind") == "progress"]
    assert progress and progress[-1]["bytes"] > 100 << 20 and progress[-1]["rate"] > 0
    final = [e for e in events if e.get("kind") == "done"]
    assert len(final) == 1 and set(final[0]["timings"]) == set(done)
    # The golden image's initrd is generic and holds what this install needs.
    initrd = [e for e in events if e.get("kind") == "initrd"]
    assert len(initrd) == 1 and initrd[0]["action"] == "keep", initrd
    assert {"ext4", "virtio_blk"} <= set(initrd[0]["needs"]["modules"])


def test_installed_files_match_the_image(installer: Installer, installed: Path,
                                         tmp_path: Path) -> None:
    golden = installer.state.images / IMAGE
    kver = next((golden / "lib/modules").iterdir()).name
    with mounted_disk(installed, 2, tmp_path / "root") as root:
        diffs = itemized_differences(golden, root)
        fstab = (root / "etc/fstab").read_text()
        resume = (root / "etc/initramfs-tools/conf.d/resume").read_text()
        netfiles = sorted(p.name for p in (root / "etc/network/interfaces.d").iterdir())
        overridden = {rel: (root / rel).read_text()
                      for rel in ("etc/sysclone-override", "etc/sysclone-group-only")}
    # What the configure and bootloader steps are meant to write, and
    # nothing else: the initrd was kept, byte for byte.
    # And the overrides cluster.xml gives this host, the host's own winning.
    expected = {"etc/fstab", "etc/hostname", "etc/hosts", "etc/initramfs-tools/conf.d/resume",
                "lost+found", *(f"etc/network/interfaces.d/{n}" for n in netfiles),
                "etc/sysclone-override", "etc/sysclone-group-only"}
    assert overridden == {"etc/sysclone-override": "the host's\n",
                          "etc/sysclone-group-only": "the group's only\n"}
    unexpected = {p for p in diffs if p not in expected and not p.startswith("boot/grub/")}
    assert not unexpected, {p: diffs[p] for p in unexpected}
    assert f"boot/initrd.img-{kver}" not in diffs
    assert "boot/grub/grub.cfg" in diffs and "boot/grub/i386-pc/core.img" in diffs
    assert netfiles == ["enp0s2"]  # the name udev gives the NIC on the installed system
    # fstab names the new filesystems by the UUIDs blkid reads off the disk.
    uuids = fstab_uuids(fstab)
    assert set(uuids) == {"/", "swap"}
    with attached(installed, 3) as dev:
        assert blkid_uuid(f"{dev}p2") == uuids["/"]
        assert blkid_uuid(f"{dev}p3") == uuids["swap"]
    assert resume == f"RESUME=UUID={uuids['swap']}\n"


def test_installed_machine_boots_from_its_own_disk(installer: Installer, installed: Path,
                                                   tmp_path: Path) -> None:
    # 512 MiB to boot: the installer needs less, but Debian's own
    # initramfs-tools image (12.7 MiB, unpacked whole) does not fit there.
    spec = VmSpec(name=f"{HOSTNAME}-boot", workdir=installer.state.vms, disks=(installed,),
                  boot="c")
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", 900)
        assert prompt.strip().startswith(f"{HOSTNAME} login:")
        # Let the network come up, then press the power button (logind acts on it).
        time.sleep(20)
        assert vm.powerdown(300) == 0
    # The network configuration the agent wrote worked: the installed system
    # got a DHCP lease on the predicted interface name.
    with mounted_disk(installed, 2, tmp_path / "root") as root:
        leases = (root / "var/lib/dhcp/dhclient.enp0s2.leases").read_text()
    assert re.search(r"fixed-address 10\.0\.2\.15;", leases), leases


def test_inventory_and_bootenv_check_agree(installer: Installer, installed: Path,
                                           vm_bootenv: Path, tmp_path: Path) -> None:
    """The hardware matrix's virtio-blk + virtio-net cell, on this install:
    the inventory the agent sent names the drivers, `bootenv check --client`
    passes on what the monitor kept (for the boot environment it installed
    with and the standard one), and the same machine with a virtio-scsi
    controller added fails the virtio boot environment, naming virtio_scsi
    (the standard one drives it)."""
    state = installer.state
    inv = next(e["inventory"] for e in installer.events_of(HOSTNAME)
               if e.get("kind") == "inventory")
    assert "virtio_net" in {n["driver"].replace("-", "_") for n in inv["nics"]}, inv["nics"]
    assert "virtio_blk" in inv["modules"] or any(
        p["driver"] == "virtio_blk" for p in inv["pci"]), inv
    assert [d["bus"] for d in inv["disks"]] == ["virtio"], inv["disks"]
    for bootenv in (vm_bootenv, installer.bootenv):
        r = sysclone(state, "bootenv", "check", str(bootenv), "--client", HOSTNAME, check=False)
        assert r.returncode == 0, r.stdout + r.stderr
    kept = json.loads((state.logs / f"{HOSTNAME}.inventory.json").read_text())
    kept["pci"].append({"slot": "0000:00:09.0", "vendor": "1af4", "device": "1004",
                        "class": "010000", "driver": None,
                        "modalias": "pci:v00001AF4d00001004sv00001AF4sd00000008bc01sc00i00",
                        "children": ["virtio:d00000008v00001AF4"]})
    kept["disks"].append({"name": "sda", "controller": "0000:00:09.0"})
    f = tmp_path / "inv.json"
    f.write_text(json.dumps(kept))
    r = sysclone(state, "bootenv", "check", str(vm_bootenv), "--inventory", str(f),
                 check=False)
    assert r.returncode == 1 and "virtio_scsi would drive it" in r.stdout, r.stdout
    r = sysclone(state, "bootenv", "check", str(installer.bootenv), "--inventory", str(f),
                 check=False)
    assert r.returncode == 0, r.stdout


# --------------------------------------------------------- bad parameters ---

def expect_failure(installer: Installer, name: str, disk: Path, append: str,
                   timeout: float = 600) -> str:
    """Boot the installer, wait for its failure line, return it."""
    with installer.boot(name, disk, append) as vm:
        _, line = vm.wait_for(FAILED_MARKER, timeout, fail=DONE_MARKER, partial=False)
        # /init speaks once the agent has exited, i.e. after it has flushed
        # its reports to the monitor: only then may the machine be killed.
        vm.wait_for(r"agent exited with status 1", 180)
        console = vm.console_text()
    assert allocated_bytes(disk) == 0, "the disk was written to"
    assert "Traceback" not in console, console
    return line


def failed_event(installer: Installer, hostname: str) -> dict:
    for _ in range(50):
        found = [e for e in installer.events_of(hostname) if e.get("kind") == "failed"]
        if found:
            return found[-1]
        time.sleep(0.1)
    raise AssertionError(f"no failure reported by {hostname}")


def test_unknown_image(installer: Installer) -> None:
    disk = blank_disk(installer.state.vms / "bad-image.img", 4 << 30)
    line = expect_failure(installer, "bad-image", disk,
                          installer.append("bad-image", image="nosuchimage"))
    assert "unknown image 'nosuchimage'" in line and IMAGE in line
    ev = failed_event(installer, "bad-image")
    assert ev["phase"] == "instructions" and "unknown image 'nosuchimage'" in ev["message"]


def test_unreachable_server(installer: Installer) -> None:
    from imageserver.serve import free_port

    disk = blank_disk(installer.state.vms / "bad-server.img", 4 << 30)
    port = free_port()  # nothing listens there
    line = expect_failure(installer, "bad-server", disk,
                          installer.append("bad-server", http_port=port))
    assert f"image server 10.0.2.2:{port} is unreachable" in line


def test_disk_too_small(installer: Installer) -> None:
    disk = blank_disk(installer.state.vms / "small-disk.img", 300 << 20)
    line = expect_failure(installer, "small-disk", disk, installer.append("small-disk"))
    assert "disk /dev/vda is too small for its partitions even scaled down" in line
    assert "the image data and the smallest filesystem each holds" in line
    ev = failed_event(installer, "small-disk")
    assert ev["phase"] == "plan" and "too small" in ev["message"]


