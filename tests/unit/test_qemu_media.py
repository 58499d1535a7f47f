"""ci.qemu's additions for media and boot-server tests: Secure Boot
firmware, USB sticks, a tap NIC and firmware boot order."""

from __future__ import annotations

import pytest

from ci import qemu
from ci.qemu import VmError, VmSpec, qemu_argv
from tests.unit.test_qemu_harness import opt


@pytest.fixture(autouse=True)
def _tcg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYSCLONE_QEMU_ACCEL", raising=False)
    monkeypatch.delenv("SYSCLONE_QEMU_CPU", raising=False)


@pytest.fixture
def ovmf(tmp_path, monkeypatch):
    d = tmp_path / "ovmf"
    d.mkdir()
    for name in ("CODE", "VARS", "CODE_MS", "VARS_MS"):
        (d / name).write_bytes(name.encode())
    monkeypatch.setattr(qemu, "OVMF_CODE", d / "CODE")
    monkeypatch.setattr(qemu, "OVMF_VARS", d / "VARS")
    monkeypatch.setattr(qemu, "OVMF_CODE_SECURE", d / "CODE_MS")
    monkeypatch.setattr(qemu, "OVMF_VARS_SECURE", d / "VARS_MS")
    return d


def test_secure_boot(tmp_path, ovmf):
    work = tmp_path / "w"
    work.mkdir()
    argv = qemu_argv(VmSpec("vm", work, firmware="uefi", secure_boot=True), work / "q")
    assert opt(argv, "-machine") == ["q35,smm=on"]
    assert opt(argv, "-global") == ["driver=cfi.pflash01,property=secure,value=on"]
    assert opt(argv, "-drive") == [
        f"if=pflash,format=raw,unit=0,readonly=on,file={ovmf / 'CODE_MS'}",
        f"if=pflash,format=raw,unit=1,file={work / 'vm.OVMF_VARS.ms.fd'}"]
    # Microsoft's keys, Secure Boot on: a copy of the enrolled template
    assert (work / "vm.OVMF_VARS.ms.fd").read_bytes() == b"VARS_MS"


def test_secure_boot_needs_uefi(tmp_path):
    with pytest.raises(VmError, match="Secure Boot needs firmware='uefi'"):
        qemu_argv(VmSpec("vm", tmp_path, secure_boot=True), tmp_path / "q")


def test_usb_sticks_and_boot_order(tmp_path, ovmf):
    spec = VmSpec("vm", tmp_path, firmware="uefi", disks=(tmp_path / "d.img",),
                  usb_disks=(tmp_path / "stick.img",), boot_order=("usb0", "disk0"))
    argv = qemu_argv(spec, tmp_path / "q")
    devices = opt(argv, "-device")
    assert "qemu-xhci,id=xhci" in devices
    assert "usb-storage,bus=xhci.0,drive=usb0,removable=on,bootindex=0" in devices
    assert "virtio-blk-pci,drive=disk0,bootindex=1" in devices
    assert f"if=none,id=usb0,format=raw,file={tmp_path / 'stick.img'},cache=unsafe" in \
        opt(argv, "-drive")
    assert not any("bootindex" in d for d in devices if d.startswith("virtio-net"))


def test_tap_nic_first_in_the_boot_order(tmp_path):
    spec = VmSpec("vm", tmp_path, tap="sctap0", boot_order=("net", "disk0"),
                  disks=(tmp_path / "d.img",), mac="52:54:00:aa:00:01")
    argv = qemu_argv(spec, tmp_path / "q")
    assert opt(argv, "-netdev") == ["tap,id=n0,ifname=sctap0,script=no,downscript=no"]
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:aa:00:01,bootindex=0" in opt(argv, "-device")


def test_firmware_pxe_without_the_nic_rom(tmp_path, ovmf):
    """nic_rom=False: no iPXE option ROM, the firmware's own PXE boots."""
    spec = VmSpec("vm", tmp_path, firmware="uefi", tftp_root=tmp_path, bootfile="bootx64.efi",
                  boot_order=("net",), nic_rom=False)
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=0,romfile=" in \
        opt(qemu_argv(spec, tmp_path / "q"), "-device")
    default = VmSpec("vm", tmp_path, firmware="uefi", boot_order=("net",))
    assert "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56,bootindex=0" in \
        opt(qemu_argv(default, tmp_path / "q"), "-device")


def test_cdrom_boot_index(tmp_path):
    argv = qemu_argv(VmSpec("vm", tmp_path, cdrom=tmp_path / "x.iso", boot_order=("cdrom",)),
                     tmp_path / "q")
    assert "ide-cd,drive=cd0,bootindex=0" in opt(argv, "-device")


@pytest.mark.parametrize(("kw", "message"), [
    ({"tap": "t0", "tftp_root": "/x"}, "user-network features"),
    ({"tap": "t0", "forwards": ((2222, 22),)}, "user-network features"),
    ({"boot_order": ("floppy",)}, "is not net, cdrom, diskN or usbN"),
])
def test_refusals(tmp_path, kw, message):
    with pytest.raises(VmError, match=message):
        qemu_argv(VmSpec("vm", tmp_path, **kw), tmp_path / "q")
