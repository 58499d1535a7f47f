"""mkmedia.secureboot on synthetic PE headers, and the one-line warning
`media iso|usb|pxe` print when the Secure Boot path (shim + GRUB) would
refuse the boot environment's kernel."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from mkmedia.secureboot import authenticode_signed, kernel_signed, unsigned_warning
from sysclone.cli import main
from tests.conftest import FakeCommands, FakeResult
from tests.unit.mediafakes import fake_bootfiles

PE_OFFSET = 0x80


def pe(*, plus: bool = True, cert: tuple[int, int] = (0x9000, 0x700), count: int = 16,
       signature: bytes = b"PE\0\0", size: int = 0x400) -> bytes:
    """The headers of a PE/COFF image: DOS stub, PE signature, COFF header,
    optional header (PE32+ as x86-64 kernels, or PE32) with its data
    directories, the certificate table's (file offset, size) as given."""
    b = bytearray(size)
    b[:2] = b"MZ"
    struct.pack_into("<I", b, 0x3C, PE_OFFSET)
    b[PE_OFFSET:PE_OFFSET + 4] = signature
    struct.pack_into("<HH", b, PE_OFFSET + 4, 0x8664 if plus else 0x14C, 2)  # machine, sections
    opt = PE_OFFSET + 24
    struct.pack_into("<H", b, opt, 0x20B if plus else 0x10B)
    count_at, dirs = (opt + 108, opt + 112) if plus else (opt + 92, opt + 96)
    struct.pack_into("<I", b, count_at, count)
    struct.pack_into("<II", b, dirs + 8 * 4, *cert)
    return bytes(b)


def test_a_signed_image_has_a_certificate_table():
    assert authenticode_signed(pe())
    assert authenticode_signed(pe(plus=False))  # PE32: the directories start earlier


@pytest.mark.parametrize("image", [
    pe(cert=(0, 0)),  # an unsigned EFI-stub kernel (what sbsign would fill in)
    pe(plus=False, cert=(0, 0)),
    pe(cert=(0x9000, 0)),
    pe(count=4),  # too few data directories to hold a certificate table
    pe(signature=b"NE\0\0"),
    b"\x7fELF" + bytes(0x400),  # vmlinux
    b"MZ",  # truncated before the PE offset
    pe()[:PE_OFFSET + 100],  # truncated in the optional header
    b"",
], ids=["pe32+ empty", "pe32 empty", "no size", "few directories", "not PE", "ELF",
        "truncated stub", "truncated headers", "empty"])
def test_unsigned_or_not_pe(image):
    assert not authenticode_signed(image)


def test_an_unknown_optional_header_is_not_signed():
    b = bytearray(pe())
    struct.pack_into("<H", b, PE_OFFSET + 24, 0x107)  # a ROM image
    assert not authenticode_signed(bytes(b))


def test_the_file_check_and_its_warning(tmp_path):
    signed, unsigned = tmp_path / "signed", tmp_path / "unsigned"
    signed.write_bytes(pe() + bytes(1 << 20))  # only the headers are read
    unsigned.write_bytes(pe(cert=(0, 0)))
    assert kernel_signed(signed) and unsigned_warning(signed) is None
    warning = unsigned_warning(unsigned)
    assert warning is not None and "\n" not in warning
    assert warning.startswith(f"warning: the kernel {unsigned} has no Authenticode signature")
    assert "will not boot with Secure Boot on" in warning


# -- the commands -------------------------------------------------------------------------------

@pytest.fixture
def root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    fake_bootfiles(tmp_path / "host", monkeypatch)
    r = tmp_path / "root"
    be = r / "bootenv/standard"
    be.mkdir(parents=True)
    (be / "kernel").write_bytes(pe(cert=(0, 0)))
    (be / "initrd.img").write_bytes(b"initrd")
    return r


def sign(root: Path) -> None:
    (root / "bootenv/standard/kernel").write_bytes(pe())


WARNING = "has no Authenticode signature: this medium will not boot with Secure Boot on"


def media_tools(fake: FakeCommands) -> None:
    for tool in ("mkfs.vfat", "mmd", "mcopy", "sfdisk", "syslinux", "dd"):
        fake.add([tool], "")

    def xorriso(argv: list[str]) -> FakeResult:
        Path(argv[argv.index("-o") + 1]).write_bytes(b"iso")
        return FakeResult()

    fake.add(["xorriso"], xorriso)


@pytest.mark.parametrize("kind", ["iso", "usb"])
def test_iso_and_usb_warn_about_an_unsigned_kernel(root, tmp_path, kind, capsys,
                                                   fake_commands: FakeCommands):
    media_tools(fake_commands)
    out = tmp_path / f"medium.{kind}"
    argv = ["--root", str(root), "media", kind, "--output", str(out), "--append",
            "IMAGESERVER=10.0.0.3"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if WARNING in line] == [
        f"warning: the kernel {root / 'bootenv/standard/kernel'} {WARNING} (build the boot "
        "environment with a signed kernel, such as Debian's, or turn Secure Boot off)"]
    sign(root)
    assert main(argv) == 0
    assert WARNING not in capsys.readouterr().err


def test_pxe_warns_only_when_it_has_the_secure_boot_path(root, tmp_path, capsys):
    out = tmp_path / "tftp"
    base = ["--root", str(root), "media", "pxe", "--output", str(out), "--append",
            "IMAGESERVER=10.0.0.3"]
    assert main([*base, "--loaders", "pxelinux,ipxe"]) == 0  # no shim: nothing to warn about
    assert WARNING not in capsys.readouterr().err
    assert main([*base, "--loaders", "pxelinux,grub"]) == 0
    assert WARNING in capsys.readouterr().err
    assert main([*base]) == 0  # every loader, grub among them
    assert WARNING in capsys.readouterr().err
    sign(root)
    assert main(base) == 0
    assert WARNING not in capsys.readouterr().err
