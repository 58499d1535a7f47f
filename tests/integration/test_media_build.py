"""Boot media made for real, read back with other tools than the ones that
made them: xorriso's own El Torito and partition reports, sfdisk, blkid,
mtools, grub-script-check on every GRUB configuration, and the bytes of
Debian's signed shim and GRUB compared with the packages' files.  Writing
a USB disk to a device is tried on loop devices (a fixed disk, a mounted
one).  Nothing is mounted: the host kernel need not know vfat or iso9660."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mkmedia import bootfiles
from mkmedia.fat import Fat
from mkmedia.pxe import ClientEntry, TreeInfo, build_tree
from mkmedia.secureboot import authenticode_signed as signed
from mkmedia.usb import DATA_LABEL
from tests.verify import sh

REPO = Path(__file__).resolve().parents[2]
SYSCLONE = [sys.executable, "-m", "sysclone.cli"]


def sysclone(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run([*SYSCLONE, "--root", str(root), *args], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
    if check and r.returncode != 0:
        raise AssertionError(f"sysclone {' '.join(args)}: {r.returncode}\n{r.stderr}")
    return r


@pytest.fixture
def root(tmp_path: Path, root_only: None) -> Path:
    """A state root with a boot environment: kernel and initrd stand-ins
    (no VM boots them here), the kernel a signed PE file like Debian's."""
    r = tmp_path / "state"
    be = r / "bootenv/standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(bootfiles.SHIM.find().read_bytes())  # any signed PE image
    (be / "initrd.img").write_bytes(os.urandom(300_000))
    return r


def grub_script_check(text: str, tmp_path: Path) -> None:
    f = tmp_path / "check.cfg"
    f.write_text(text)
    r = subprocess.run(["grub-script-check", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, f"{r.stdout}{r.stderr}\n{text}"


def iso_extract(iso: Path, inner: str, dest: Path) -> Path:
    sh("xorriso", "-osirrox", "on", "-indev", str(iso), "-extract", inner, str(dest))
    return dest


# ----------------------------------------------------------------------- ISO ---

def test_iso_boots_bios_and_uefi_from_disc_and_stick(root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "local.cfg"
    cfg.write_text("HOSTNAME=iso-node\nIMAGENAME=web\n")
    iso = tmp_path / "out/boot.iso"
    sysclone(root, "media", "iso", "--output", str(iso), "--append",
             "console=ttyS0,115200 IMAGESERVER=10.0.2.2", "--local-cfg", str(cfg))
    report = sh("xorriso", "-indev", str(iso), "-report_el_torito", "plain",
                "-report_system_area", "plain")
    assert "El Torito img path :   1  /isolinux/isolinux.bin" in report
    assert "El Torito img path :   2  /boot/efi.img" in report
    assert "System area summary: MBR isohybrid" in report and "GPT" in report
    # written raw to a stick: an MBR partition of type EF (the ESP) over efi.img
    table = json.loads(sh("sfdisk", "-J", str(iso)))["partitiontable"]
    assert [p["type"] for p in table["partitions"]] == ["0", "ef"]
    assert Path("/usr/lib/ISOLINUX/isohdpfx.bin").read_bytes()[:432] == \
        iso.read_bytes()[:432]

    ex = tmp_path / "ex"
    ex.mkdir()
    iso_extract(iso, "/", ex / "iso")
    tree = ex / "iso"
    assert (tree / "sysclone/local.cfg").read_text() == cfg.read_text()
    assert (tree / ".disk/info").is_file()
    markers = list((tree / "sysclone").glob("medium-*"))
    assert len(markers) == 1
    grub = (tree / "boot/grub/grub.cfg").read_text()
    assert f"--file /sysclone/{markers[0].name}" in grub
    grub_script_check(grub, tmp_path)
    iso_cfg = (tree / "isolinux/isolinux.cfg").read_text()
    assert "APPEND initrd=/sysclone/initrd.img,/sysclone/localcfg.img console=ttyS0,115200 " \
           "IMAGESERVER=10.0.2.2" in iso_cfg
    # the second initrd: a newc archive whose local.cfg is the given one, read with cpio
    names = subprocess.run(["cpio", "-it", "--quiet"], input=(tree / "sysclone/localcfg.img")
                           .read_bytes(), capture_output=True, check=True).stdout.decode()
    assert names.split() == ["local.cfg", "s1", "s1/local.cfg"]
    # UEFI: Debian's signed shim and disc GRUB, byte for byte
    efi = Fat(tree / "boot/efi.img")
    assert efi.listing() == ["/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/grub.cfg",
                             "/EFI/BOOT/grubx64.efi", "/EFI/BOOT/mmx64.efi"]
    shim = efi.read("/EFI/BOOT/BOOTX64.EFI")
    assert shim == bootfiles.SHIM.find().read_bytes() and signed(shim)
    grub_efi = efi.read("/EFI/BOOT/grubx64.efi")
    assert grub_efi == bootfiles.GRUB_EFI_CD.find().read_bytes() and signed(grub_efi)
    grub_script_check(efi.read("/EFI/BOOT/grub.cfg").decode(), tmp_path)


# ----------------------------------------------------------------------- USB ---

def offsets(image: Path) -> dict[str, int]:
    parts = json.loads(sh("sfdisk", "-J", str(image)))["partitiontable"]["partitions"]
    return {p["name"]: p["start"] * 512 for p in parts}


def test_usb_image(root: Path, tmp_path: Path) -> None:
    cfg = tmp_path / "local.cfg"
    cfg.write_text("IMAGESERVER=10.0.0.3\n")
    img = tmp_path / "stick.img"
    sysclone(root, "media", "usb", "--output", str(img), "--append", "console=ttyS0",
             "--local-cfg", str(cfg), "--data-size", "16")
    table = json.loads(sh("sfdisk", "-J", str(img)))["partitiontable"]
    assert table["label"] == "gpt"
    esp, data = table["partitions"]
    assert (esp["name"], esp["type"], esp["attrs"]) == (
        "sysclone-boot", "C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "LegacyBIOSBootable")
    assert (data["name"], data["size"] * 512) == ("sysclone-data", 16 << 20)
    sh("sfdisk", "--verify", str(img))
    assert img.read_bytes()[:440] == bootfiles.GPTMBR.find().read_bytes()[:440]
    at = offsets(img)
    blk = sh("blkid", "-p", "-o", "export", "-O", str(at["sysclone-data"]), str(img))
    assert f"LABEL={DATA_LABEL}" in blk.splitlines() and "TYPE=vfat" in blk.splitlines()
    espfs = Fat(img, at["sysclone-boot"])
    files = espfs.listing()
    for f in ("/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/grubx64.efi", "/EFI/debian/grub.cfg",
              "/syslinux/syslinux.cfg", "/syslinux/ldlinux.c32", "/sysclone/kernel",
              "/sysclone/initrd.img"):
        assert f in files, files
    # syslinux's installer put its boot sector and ldlinux.sys in (hidden files)
    assert "/syslinux/ldlinux.sys" in files
    assert espfs.read("/EFI/BOOT/grubx64.efi") == bootfiles.GRUB_EFI_DISK.find().read_bytes()
    grub = espfs.read("/EFI/debian/grub.cfg").decode()
    uuid = next(x.split("=", 1)[1] for x in sh("blkid", "-p", "-o", "export", "-O",
                                               str(at["sysclone-boot"]), str(img)).splitlines()
                if x.startswith("UUID="))
    assert f"search --no-floppy --set=root --fs-uuid {uuid}" in grub
    grub_script_check(grub, tmp_path)
    datafs = Fat(img, at["sysclone-data"])
    assert datafs.read("/local.cfg") == cfg.read_bytes()
    assert "/README.txt" in datafs.listing()


@pytest.fixture
def loop_disk(tmp_path: Path, root_only: None) -> Iterator[str]:
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(256 << 20)
    dev = sh("losetup", "--find", "--show", str(backing)).strip()
    try:
        yield dev
    finally:
        sh("umount", "-l", str(tmp_path / "mnt"), check=False)
        sh("losetup", "-d", dev, check=False)


def test_usb_device_refusals_and_write(root: Path, tmp_path: Path, loop_disk: str) -> None:
    r = sysclone(root, "media", "usb", "--device", loop_disk, check=False)
    assert r.returncode == 1
    assert f"--device {loop_disk} is not a removable disk" in r.stderr
    r = sysclone(root, "media", "usb", "--device", loop_disk, "--max-size", "1", "--force",
                 "--data-size", "8")
    table = json.loads(sh("sfdisk", "-J", loop_disk))["partitiontable"]
    assert [p["name"] for p in table["partitions"]] == ["sysclone-boot", "sysclone-data"]
    # the backup GPT was moved to the device's real end
    sh("sfdisk", "--verify", loop_disk)
    # mounted: refused even with --force
    sh("mkfs.ext4", "-q", "-F", loop_disk)
    (tmp_path / "mnt").mkdir()
    sh("mount", loop_disk, str(tmp_path / "mnt"))
    r = sysclone(root, "media", "usb", "--device", loop_disk, "--force", check=False)
    assert r.returncode == 1 and "is mounted on" in r.stderr


# ----------------------------------------------------------------------- PXE ---

def test_every_grub_configuration_of_a_pxe_tree_parses(tmp_path: Path, root_only: None
                                                       ) -> None:
    be = tmp_path / "be"
    be.mkdir()
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    out = build_tree(tmp_path / "tftp", be / "kernel", be / "initrd.img",
                     TreeInfo("IMAGESERVER=10.0.0.3 'quoted word' a=$b"),
                     [ClientEntry("01-52-54-00-12-34-56", append="HOSTNAME=x"),
                      ClientEntry("0A0000", mode="local")])
    cfgs = sorted((out / "grub").iterdir())
    assert [p.name for p in cfgs] == ["grub.cfg", "grub.cfg-01-52-54-00-12-34-56",
                                      "grub.cfg-0A0000"]
    for p in cfgs:
        grub_script_check(p.read_text(), tmp_path)
    assert (out / "bootx64.efi").read_bytes() == bootfiles.SHIM.find().read_bytes()
    assert (out / "grubx64.efi").read_bytes() == bootfiles.GRUB_EFI_NET.find().read_bytes()
