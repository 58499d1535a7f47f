"""The layouts real servers use and the other configuration styles, each
installed on blank QEMU machines and booted from disk.  Three machines
cover it all:

  A  BIOS, two disks, msdos tables with logical partitions, RAID1 /boot and
     RAID1 under LUKS2 under btrfs subvolumes (/ and /home); an image with
     NetworkManager.  Boots with both disks, then with either one alone.
  B  UEFI (OVMF, fresh NVRAM), GPT with an ESP, a separate /boot, LVM root
     on xfs; an image with dracut and systemd-networkd.  The NVRAM entry is
     checked in the firmware's own variable store; booted, it is updated by
     updateclient to a newer version with an LVM snapshot of its root as
     the rollback point (room is left in the group), and rolled back from
     it; then the disk boots again with empty NVRAM through the removable
     fallback path.
  C  BIOS, the built-in layout; an image with netplan.

Each image carries sshd and the test's key, made the way an admin would:
`image bootstrap --include ...` then `image chroot`.  What the installed
systems run is asked of them over SSH (their network came up by DHCP, or
SSH through QEMU's port forward would not answer).

CI runs machine B through its boot from disk, update and rollback (the
chroot and loop-device integration tests cover md, LVM, LUKS and every
network style without a VM); A, C and B's boot with an empty NVRAM, about a quarter of
an hour each under emulation (A's LUKS initrd is built by the client), are
marked `e2e_full` and run with SYSCLONE_E2E=full."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.markers import DONE_MARKER
from ci.qemu import Vm, VmSpec, blank_disk
from imageserver.names import ImageRef
from imageserver.serve import free_port
from imageserver.store import ImageStore
from sysclone.demo import HOST_FROM_GUEST, INSTALL_FAILED
from tests.e2e.conftest import Installer, sysclone
from tests.verify import itemized_differences, sh

HERE = Path(__file__).parent
INSTALL_TIMEOUT = 3000
LUKS_KEY = "sysclone-e2e-luks-key-0123456789"

VARIANTS = {
    "golden-nm": ("network-manager", "openssh-server", "mdadm", "cryptsetup-initramfs",
                  "btrfs-progs"),
    # rsync: machine B is also updated (updateclient needs it, as any
    # client it updates does).
    "golden-dracut": ("dracut", "systemd-networkd", "systemd-resolved", "lvm2", "xfsprogs",
                      "openssh-server", "grub-efi-amd64-bin", "efibootmgr", "rsync"),
    "golden-netplan": ("netplan.io", "systemd-resolved", "openssh-server"),
}


def variant(installer: Installer, name: str, key: Path) -> str:
    if name not in sysclone(installer.state, "image", "list").stdout:
        args = [a for pkg in VARIANTS[name] for a in ("--include", pkg)]
        sysclone(installer.state, "image", "bootstrap", name, *args, timeout=3600)
        pub = key.with_suffix(".pub").read_text().strip()
        sysclone(installer.state, "image", "chroot", name, "--", "sh", "-c",
                 f"install -d -m 700 /root/.ssh && echo '{pub}' > /root/.ssh/authorized_keys")
    return name


def disks(installer: Installer, name: str, count: int) -> tuple[Path, ...]:
    return tuple(blank_disk(installer.state.vms / f"{name}-{i}.img", 4 << 30)
                 for i in range(count))


def ssh(key: Path, port: int, command: str) -> str:
    return sh("ssh", "-i", str(key), "-p", str(port), "-o", "BatchMode=yes",
              "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
              "-o", "ConnectTimeout=30", "root@127.0.0.1", command)


def wait_for_ssh(key: Path, port: int, deadline: float = 240) -> None:
    end = time.monotonic() + deadline
    while True:
        try:
            ssh(key, port, "true")
            return
        except AssertionError:
            if time.monotonic() > end:
                raise
            time.sleep(3)


@contextmanager
def booted(installer: Installer, name: str, disk_files: tuple[Path, ...], *,
           firmware: str = "bios", ssh_port: int | None = None) -> Iterator[Vm]:
    spec = VmSpec(name=name, workdir=installer.state.vms, disks=disk_files, boot="c",
                  firmware=firmware, forwards=((ssh_port, 22),) if ssh_port else ())
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", 900)
        assert prompt.strip().startswith(f"{name.split('-boot')[0]} login:"), prompt
        try:
            yield vm
        finally:
            vm.powerdown(300)


# -- A: BIOS, msdos + logical, RAID1, LUKS2, btrfs subvolumes, NetworkManager ------------------

@pytest.fixture(scope="module")
def machine_a(installer: Installer, ssh_key: Path) -> tuple[Path, ...]:
    host = "e2e-raid1"
    image = variant(installer, "golden-nm", ssh_key)
    scripts = installer.state.scripts
    (scripts / "disks-layouts").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "layouts/raid1-luks-btrfs.toml", scripts / f"disks-layouts/{host}.toml")
    (scripts / "luks-keys").mkdir(parents=True, exist_ok=True)
    (scripts / f"luks-keys/{host}.key").write_text(LUKS_KEY + "\n")
    d = disks(installer, host, 2)
    with installer.boot(f"{host}-install", d[0], installer.append(host, image),
                        more_disks=d[1:]) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    return d


@pytest.mark.e2e_full
def test_raid1_luks_btrfs_boots_and_runs_network_manager(installer: Installer,
                                                        machine_a: tuple[Path, ...],
                                                        ssh_key: Path) -> None:
    port = free_port()
    with booted(installer, "e2e-raid1-boot", machine_a, ssh_port=port):
        wait_for_ssh(ssh_key, port)
        mounts = ssh(ssh_key, port, "findmnt -rn -o TARGET,SOURCE,FSTYPE,OPTIONS")
        root = next(line for line in mounts.splitlines() if line.startswith("/ "))
        assert "/dev/mapper/cryptroot" in root and "btrfs" in root and "subvol=/@" in root
        assert any(line.startswith("/home ") and "subvol=/@home" in line
                   for line in mounts.splitlines())
        assert any(line.startswith("/boot /dev/md") for line in mounts.splitlines())
        mdstat = ssh(ssh_key, port, "cat /proc/mdstat")
        arrays = [ln for ln in mdstat.splitlines() if ln.startswith("md")]
        # (the "Personalities : [raid1]" line names raid1 too)
        assert len(arrays) == 2 and all("active raid1" in ln for ln in arrays), mdstat
        assert mdstat.count("[UU]") == 2, mdstat
        assert "crypto_LUKS" in ssh(ssh_key, port, "lsblk -no FSTYPE /dev/md1")
        assert ssh(ssh_key, port, "systemctl is-active NetworkManager").strip() == "active"
        active = ssh(ssh_key, port, "nmcli -t -f NAME,DEVICE con show --active")
        assert "sysclone" in active, active
        assert "10.0.2.15" in ssh(ssh_key, port, "ip -4 -o addr")
    events = installer.events_of("e2e-raid1")
    layout_ev = [e for e in events if e.get("kind") == "plan"]
    assert layout_ev and len(layout_ev[-1]["plan"]["arrays"]) == 2


@pytest.mark.e2e_full
@pytest.mark.parametrize("keep", [0, 1])
def test_raid1_boots_from_either_disk_alone(installer: Installer, machine_a: tuple[Path, ...],
                                            keep: int) -> None:
    spec = VmSpec(name=f"e2e-raid1-degraded{keep}", workdir=installer.state.vms,
                  disks=(machine_a[keep],), boot="c")
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", 900)
        assert prompt.strip().startswith("e2e-raid1 login:")
        vm.powerdown(300)


# -- B: UEFI, GPT + ESP, /boot, LVM root on xfs, dracut + systemd-networkd ----------------------

@pytest.fixture(scope="module")
def machine_b(installer: Installer, ssh_key: Path) -> tuple[Path, ...]:
    host = "e2e-uefi"
    image = variant(installer, "golden-dracut", ssh_key)
    scripts = installer.state.scripts
    (scripts / "disks-layouts").mkdir(parents=True, exist_ok=True)
    shutil.copy(HERE / "layouts/uefi-lvm-xfs.toml", scripts / f"disks-layouts/{host}.toml")
    d = disks(installer, host, 1)
    with installer.boot_uefi(f"{host}-install", d, installer.append(host, image)) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    return d


def test_uefi_nvram_has_the_boot_entry(installer: Installer, machine_b: tuple[Path, ...]) -> None:
    """Read in the firmware's own variable store, not by asking the agent."""
    store = (installer.state.vms / "e2e-uefi-install.OVMF_VARS.fd").read_bytes()
    assert "sysclone".encode("utf-16-le") in store


def test_uefi_lvm_xfs_boots_and_runs_networkd(installer: Installer,
                                             machine_b: tuple[Path, ...], ssh_key: Path) -> None:
    # The machine keeps its NVRAM: the entry the install wrote boots it.
    shutil.copy(installer.state.vms / "e2e-uefi-install.OVMF_VARS.fd",
                installer.state.vms / "e2e-uefi-boot.OVMF_VARS.fd")
    port = free_port()
    with booted(installer, "e2e-uefi-boot", machine_b, firmware="uefi", ssh_port=port):
        wait_for_ssh(ssh_key, port)
        mounts = ssh(ssh_key, port, "findmnt -rn -o TARGET,SOURCE,FSTYPE")
        assert any(line.startswith("/ /dev/mapper/sys-root xfs") for line in mounts.splitlines())
        assert any(line.startswith("/boot/efi ") and "vfat" in line for line in mounts.splitlines())
        assert "sysclone" in ssh(ssh_key, port, "efibootmgr")
        assert ssh(ssh_key, port, "systemctl is-active systemd-networkd").strip() == "active"
        assert "routable" in ssh(ssh_key, port, "networkctl list --no-legend")
        assert "dracut" in ssh(ssh_key, port, "lsinitrd 2>/dev/null | head -20 || true") or \
            ssh(ssh_key, port, "test -x /usr/bin/dracut && echo yes").strip() == "yes"
        update_and_roll_back_on_lvm(installer, ssh_key, port)
    built = [e for e in installer.events_of("e2e-uefi") if e.get("kind") == "initrd"]
    assert built and built[0]["tool"] == "dracut", built


# What changes on a running machine between two comparisons, and the
# mounts below / that are not the root volume.
CHURN = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var/tmp", "/var/log", "/var/cache",
         "/var/lib/systemd", "/var/lib/private", "/var/lib/sysclone", "/root", "/boot/efi",
         "/etc/lvm/backup", "/etc/lvm/archive")


def vm_differences(installer: Installer, key: Path, port: int, image: str, version: int
                   ) -> dict[str, str]:
    """rsync's own itemized comparison of the VM's root with a stored
    version (size and time, checksums for what differs)."""
    tree = ImageStore(installer.state).tree(ImageRef(image, version))
    rsh = (f"ssh -i {key} -p {port} -o BatchMode=yes -o StrictHostKeyChecking=no "
           "-o UserKnownHostsFile=/dev/null")
    return itemized_differences(tree, "root@127.0.0.1:", extra=(
        "-e", rsh, *(f"--exclude={p}" for p in CHURN)))


def update_and_roll_back_on_lvm(installer: Installer, key: Path, port: int) -> None:
    """updateclient on a root that is a logical volume with room left in its
    group: the rollback point is a real LVM snapshot of the mounted xfs,
    and --rollback puts the machine back from it, checked against the
    stored version by rsync, not by updateclient."""
    image, store = "golden-dracut", ImageStore(installer.state)
    installed = store.versions.numbers(image)[-1]
    sysclone(installer.state, "image", "chroot", image, "--", "sh", "-c",
             "echo 'e2e: the next version' >> /etc/motd && echo new > /etc/e2e-next "
             "&& rm /etc/issue.net")
    nxt = store.versions.numbers(image)[-1]
    assert nxt == installed + 1
    # Before: what the install itself made differ from the image.
    before = vm_differences(installer, key, port, image, installed)
    for p in ("etc/motd", "etc/issue.net", "etc/e2e-next"):
        assert p not in before, (p, before)
    http = installer.server.config.http_port
    ssh(key, port, "python3 -c 'import urllib.request,sys; sys.stdout.buffer.write(urllib."
                   f"request.urlopen(\"http://{HOST_FROM_GUEST}:{http}/v1/client/"
                   "updateclient.py\").read())' > /root/updateclient.py")
    client = f"python3 /root/updateclient.py --server {HOST_FROM_GUEST} --port {http}"
    out = ssh(key, port, f"{client} --image {image}@{nxt} 2>&1")
    assert "rollback point taken (lvm," in out, out
    assert "root-sysclone-rollback" in ssh(key, port, "lvs --noheadings -o lv_name sys"), out
    # The update: the stored next version, as rsync sees it.
    after = vm_differences(installer, key, port, image, nxt)
    assert after == before, (after, before)
    assert ssh(key, port, "cat /etc/e2e-next").strip() == "new"
    # Back from the snapshot (mounted read-only, nouuid: it is a second
    # xfs with the root's UUID), which then goes.
    out = ssh(key, port, f"{client} --rollback 2>&1")
    assert f"rolled back the update to {image}@{nxt}" in out, out
    assert vm_differences(installer, key, port, image, installed) == before
    assert "rollback" not in ssh(key, port, "lvs --noheadings -o lv_name sys")


@pytest.mark.e2e_full
def test_uefi_boots_with_empty_nvram_through_the_fallback_path(
        installer: Installer, machine_b: tuple[Path, ...]) -> None:
    (installer.state.vms / "e2e-uefi-fresh.OVMF_VARS.fd").unlink(missing_ok=True)
    spec = VmSpec(name="e2e-uefi-fresh", workdir=installer.state.vms, disks=machine_b,
                  firmware="uefi", boot="c")
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", 900)
        assert prompt.strip().startswith("e2e-uefi login:")
        vm.powerdown(300)


# -- C: BIOS, the built-in layout, netplan --------------------------------------------------------

@pytest.mark.e2e_full
def test_netplan_image_gets_its_lease(installer: Installer, ssh_key: Path) -> None:
    host = "e2e-netplan"
    image = variant(installer, "golden-netplan", ssh_key)
    d = disks(installer, host, 1)
    with installer.boot(f"{host}-install", d[0], installer.append(host, image)) as vm:
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0
    said = [e.get("message", "") for e in installer.events_of(host)]
    assert said
    port = free_port()
    with booted(installer, f"{host}-boot", d, ssh_port=port):
        wait_for_ssh(ssh_key, port)
        assert "sysclone" in ssh(ssh_key, port, "ls /etc/netplan")
        assert "10.0.2.15" in ssh(ssh_key, port, "ip -4 -o addr")
        assert ssh(ssh_key, port, "systemctl is-active systemd-networkd").strip() == "active"
