"""Every boot medium, really booted: a blank QEMU machine starts the boot
environment from it, installs an image onto its disk, powers off, and
then boots that disk to a login prompt with its new host name.

  a  the ISO as a CD-ROM on UEFI with Secure Boot enforced (OVMF with
     Microsoft's keys enrolled): shim -> Debian's signed GRUB -> Debian's
     signed kernel.  The installed system boots with Secure Boot on too,
     through the shim and signed GRUB the image carries.
  b  the same kind of ISO as a CD-ROM on BIOS (isolinux).
  c  the USB disk image as a stick on UEFI (xHCI), the install parameters
     split between the kernel command line and the stick's local.cfg; the
     agent's log must land on the stick, and the stick must stay untouched
     otherwise (it is removable and mounted: never an install target).
  d  UEFI network boot from a `media pxe` tree through QEMU's TFTP: shim
     -> GRUB's netboot image -> the kernel and initrd over TFTP, with
     Secure Boot enforced as well.

Nothing is taken from the agent's word alone: the kernel's own
"Secure boot enabled" line, the monitor's events, the disks' partition
tables read with sfdisk, the stick's files read with mtools, and the
installed system's own boot.

CI runs (a), the one cell that proves shim and Secure Boot (2.7 minutes on
a two-core TCG machine, the golden-media image's bootstrap included); (b),
(c) and (d) are marked `e2e_full` (SYSCLONE_E2E=full): all four passed in
one run there, in 6 minutes."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import pytest

from agent.markers import DONE_MARKER, READY_MARKER
from agent.phases import PHASES
from ci.qemu import INSTALLER_ARGS, Vm, VmSpec, blank_disk
from mkmedia.fat import Fat
from sysclone.demo import INSTALL_FAILED
from tests.e2e.conftest import Installer, sysclone
from tests.verify import sh

# The golden image with what a UEFI machine (and one with Secure Boot on)
# needs to boot its disk: GRUB for EFI, Debian's signed GRUB and shim.
IMAGE = "golden-media"
IMAGE_PACKAGES = ("grub-efi-amd64-bin", "grub-efi-amd64-signed", "shim-signed", "efibootmgr")
INSTALL_TIMEOUT = 2400
BOOT_TIMEOUT = 900
# The standard boot environment (Debian's generic kernel, signed, with the
# bare-metal drivers: USB, AHCI, the CD-ROM) needs more than the virtio one.
MEMORY = 512
SECURE_BOOT_LINE = r"[Ss]ecure boot enabled"
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
GRUB_DROP_IN = "/etc/default/grub.d/sysclone-e2e-verbose.cfg"


@pytest.fixture(scope="module")
def image(installer: Installer) -> str:
    if IMAGE not in sysclone(installer.state, "image", "list").stdout:
        args = [a for pkg in IMAGE_PACKAGES for a in ("--include", pkg)]
        sysclone(installer.state, "image", "bootstrap", IMAGE, *args, timeout=3600)
        # Debian's "quiet" (GRUB_CMDLINE_LINUX_DEFAULT) keeps the installed
        # kernel's info lines, "Secure boot enabled" among them, off the
        # console: without this, (a) could not see the installed system
        # boot with Secure Boot on.  A drop-in, read after /etc/default/grub
        # by the update-grub the install runs.
        sysclone(installer.state, "image", "chroot", IMAGE, "--", "sh", "-c",
                 f"echo 'GRUB_CMDLINE_LINUX_DEFAULT=\"\"' > {GRUB_DROP_IN}")
    return IMAGE


def minutes_since(start: float) -> str:
    return f"{(time.monotonic() - start) / 60:.1f} min"


def install(installer: Installer, spec: VmSpec, host: str) -> str:
    """Boot `spec` from its medium, wait for the agent to install and power
    the machine off; the console text."""
    start = time.monotonic()
    with Vm(spec) as vm:
        vm.wait_for(READY_MARKER, 600, fail=INSTALL_FAILED)
        vm.wait_for(DONE_MARKER, INSTALL_TIMEOUT, fail=INSTALL_FAILED)
        assert vm.wait_exit(180) == 0  # the agent powered the machine off
        console = vm.console_text()
    print(f"{spec.name}: installed in {minutes_since(start)}")
    events = installer.events_of(host)
    done = {e["phase"] for e in events if e.get("kind") == "phase" and e["status"] == "done"}
    assert done == {p.name for p in PHASES}, done
    assert [e for e in events if e.get("kind") == "done"], events[-3:]
    assert "Traceback" not in console
    return console


def boots_to_login(installer: Installer, name: str, host: str, disk: Path, *,
                   firmware: str = "bios", secure_boot: bool = False,
                   nvram_of: str | None = None) -> str:
    """Boot the installed disk alone (the medium is gone) to its login
    prompt; with `nvram_of`, on the variables the install left in that
    machine's firmware.  The console text."""
    if nvram_of:
        suffix = "OVMF_VARS.ms.fd" if secure_boot else "OVMF_VARS.fd"
        shutil.copyfile(installer.state.vms / f"{nvram_of}.{suffix}",
                        installer.state.vms / f"{name}.{suffix}")
    spec = VmSpec(name=name, workdir=installer.state.vms, memory_mib=MEMORY, disks=(disk,),
                  firmware=firmware, secure_boot=secure_boot, boot="c")
    start = time.monotonic()
    with Vm(spec) as vm:
        _, prompt = vm.wait_for(r"login:", BOOT_TIMEOUT)
        assert prompt.strip().startswith(f"{host} login:"), prompt
        console = vm.console_text()
        vm.powerdown(300)
    print(f"{name}: booted to login in {minutes_since(start)}")
    return console


def secure_boot_seen(console: str) -> bool:
    """The kernel's own word that the firmware booted it with Secure Boot
    enforced (so shim, GRUB and the kernel all passed its checks)."""
    return re.search(SECURE_BOOT_LINE, console) is not None


def partitions(disk: Path) -> list[dict]:
    return json.loads(sh("sfdisk", "-J", str(disk)))["partitiontable"]["partitions"]


def media_append(installer: Installer, host: str, image: str) -> list[str]:
    return ["--append", installer.append(host, image)]


def iso_and_blank_disk(installer: Installer, host: str, image: str,
                       tmp_path: Path) -> tuple[Path, Path]:
    """`sysclone media iso` that installs `host` from `image`, and its blank disk."""
    iso = tmp_path / "sysclone.iso"
    sysclone(installer.state, "media", "iso", "--output", str(iso),
             "--bootenv", str(installer.bootenv), *media_append(installer, host, image))
    return iso, blank_disk(installer.state.vms / f"{host}.img", 4 << 30)


# -- a: ISO, UEFI, Secure Boot enforced ------------------------------------------------------

# In CI's default set: the one cell that proves shim and Secure Boot.
def test_iso_on_uefi_with_secure_boot_installs_and_boots(installer: Installer, image: str,
                                                         tmp_path: Path) -> None:
    host = "e2e-iso-sb"
    iso, disk = iso_and_blank_disk(installer, host, image, tmp_path)
    name = f"{host}-install"
    (installer.state.vms / f"{name}.OVMF_VARS.ms.fd").unlink(missing_ok=True)
    spec = VmSpec(name=name, workdir=installer.state.vms, memory_mib=MEMORY, disks=(disk,),
                  cdrom=iso, firmware="uefi", secure_boot=True, boot_order=("cdrom", "disk0"))
    console = install(installer, spec, host)
    # The kernel says so itself: the firmware enforced Secure Boot, so
    # shim, GRUB and the kernel all passed its checks.
    assert secure_boot_seen(console), "no 'Secure boot enabled' on the console"
    assert partitions(disk)[0]["type"] == ESP_TYPE
    # The NVRAM entry the install made starts shim, read in the firmware's
    # own variable store (signed GRUB only reads EFI/debian/grub.cfg).
    store = (installer.state.vms / f"{name}.OVMF_VARS.ms.fd").read_bytes()
    assert "\\EFI\\debian\\shimx64.efi".encode("utf-16-le") in store
    # The installed system, with Secure Boot still on: its own shim and
    # signed GRUB, entered through the NVRAM entry the install made.
    console = boots_to_login(installer, f"{host}-boot", host, disk, firmware="uefi",
                             secure_boot=True, nvram_of=name)
    assert secure_boot_seen(console)


# -- b: ISO, BIOS --------------------------------------------------------------------------------

@pytest.mark.e2e_full
def test_iso_on_bios_installs_and_boots(installer: Installer, image: str,
                                        tmp_path: Path) -> None:
    host = "e2e-iso-bios"
    iso, disk = iso_and_blank_disk(installer, host, image, tmp_path)
    spec = VmSpec(name=f"{host}-install", workdir=installer.state.vms, memory_mib=MEMORY,
                  disks=(disk,), cdrom=iso, boot="d")
    console = install(installer, spec, host)
    assert "ISOLINUX" in console  # isolinux itself booted the disc (its banner)
    assert partitions(disk)[0]["type"] != ESP_TYPE
    boots_to_login(installer, f"{host}-boot", host, disk)


# -- c: USB stick, UEFI --------------------------------------------------------------------------

@pytest.mark.e2e_full
def test_usb_stick_on_uefi_installs_and_boots(installer: Installer, image: str,
                                              tmp_path: Path) -> None:
    """The server and ports on the kernel command line, the host name and
    the image in the stick's local.cfg (as someone would edit it)."""
    host = "e2e-usb"
    cfg = tmp_path / "local.cfg"
    cfg.write_text(f"HOSTNAME={host}\nIMAGENAME={image}\n")
    srv = installer.server.config
    append = (f"console=ttyS0,115200 panic=5 {INSTALLER_ARGS} IMAGESERVER=10.0.2.2 "
              f"si.server-port={srv.http_port} si.rsync-port={srv.rsync_port} "
              "si.post-action=poweroff")
    stick = tmp_path / "stick.img"
    sysclone(installer.state, "media", "usb", "--output", str(stick), "--bootenv",
             str(installer.bootenv), "--append", append, "--local-cfg", str(cfg))
    before = partitions(stick)
    disk = blank_disk(installer.state.vms / f"{host}.img", 4 << 30)
    name = f"{host}-install"
    (installer.state.vms / f"{name}.OVMF_VARS.fd").unlink(missing_ok=True)
    spec = VmSpec(name=name, workdir=installer.state.vms, memory_mib=MEMORY, disks=(disk,),
                  usb_disks=(stick,), firmware="uefi", boot_order=("usb0", "disk0"))
    install(installer, spec, host)
    # The stick was not installed on (removable, and mounted by the agent):
    # same partitions, and the agent's log is on its data partition.
    assert partitions(stick) == before
    data = next(p for p in before if p["name"] == "sysclone-data")
    logs = Fat(stick, data["start"] * 512).listing("/logs")
    assert len(logs) == 1 and logs[0].startswith(f"/logs/{host}-"), logs
    assert partitions(disk)[0]["type"] == ESP_TYPE
    boots_to_login(installer, f"{host}-boot", host, disk, firmware="uefi", nvram_of=name)


# -- d: network boot, UEFI (shim + GRUB over TFTP) --------------------------------------------

@pytest.mark.e2e_full
def test_uefi_pxe_with_secure_boot_installs_and_boots(installer: Installer, image: str,
                                                      tmp_path: Path) -> None:
    host = "e2e-pxe-uefi"
    tftp = tmp_path / "tftp"
    sysclone(installer.state, "media", "pxe", "--output", str(tftp), "--loaders", "grub",
             "--no-switch", "--bootenv", str(installer.bootenv),
             *media_append(installer, host, image))
    disk = blank_disk(installer.state.vms / f"{host}.img", 4 << 30)
    name = f"{host}-install"
    (installer.state.vms / f"{name}.OVMF_VARS.ms.fd").unlink(missing_ok=True)
    spec = VmSpec(name=name, workdir=installer.state.vms, memory_mib=MEMORY, disks=(disk,),
                  firmware="uefi", secure_boot=True, tftp_root=tftp, bootfile="bootx64.efi",
                  boot_order=("net", "disk0"),
                  # OVMF's own PXE, as a real UEFI machine's: shim cannot
                  # fetch GRUB through QEMU's iPXE ROM (ci.qemu.VmSpec.nic_rom).
                  nic_rom=False)
    console = install(installer, spec, host)
    assert secure_boot_seen(console)
    # GRUB told the agent which NIC it booted from (BOOTIF from $net_default_mac).
    assert f"BOOTIF=01-{spec.mac.replace(':', '-')}" in console
    boots_to_login(installer, f"{host}-boot", host, disk, firmware="uefi", secure_boot=True,
                   nvram_of=name)
