"""The boot loaders media are made of, where Debian's packages put them.

Nothing here is built: every loader is the distribution's own binary, so a
medium boots wherever Debian's does.  In particular the UEFI path is
Debian's signed chain -- shim (signed by Microsoft's UEFI CA) loading GRUB
(signed by Debian) -- which is what lets a machine with Secure Boot on boot
a sysclone medium without its keys being touched.

A missing file is one line of error naming the package to install.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import SyscloneError

# Where the host's files are looked up; unit tests point it at a fake tree.
HOST = Path("/")


@dataclass(frozen=True)
class HostFile:
    path: str  # absolute on the host
    package: str  # the Debian package that installs it

    def find(self) -> Path:
        return HOST / self.path.lstrip("/")


# BIOS: isolinux for optical media, syslinux (mtools installer) for disks,
# pxelinux for the network; the MBR boot codes of hybrid ISOs and GPT disks.
ISOLINUX = HostFile("/usr/lib/ISOLINUX/isolinux.bin", "isolinux")
ISOHDPFX = HostFile("/usr/lib/ISOLINUX/isohdpfx.bin", "isolinux")
LDLINUX = HostFile("/usr/lib/syslinux/modules/bios/ldlinux.c32", "syslinux-common")
GPTMBR = HostFile("/usr/lib/syslinux/mbr/gptmbr.bin", "syslinux-common")
SYSLINUX = HostFile("/usr/bin/syslinux", "syslinux")
# UEFI: shim first (the file the firmware starts), then Debian's signed
# GRUB images: grubx64 looks for its config in /EFI/debian of its own
# device, gcdx64 on the disc holding /.disk/info, grubnetx64 in /grub of the
# TFTP server.  shim loads "grubx64.efi" from its own directory whatever
# the image, and MokManager when a key must be enrolled.
SHIM = HostFile("/usr/lib/shim/shimx64.efi.signed", "shim-signed")
MOKMANAGER = HostFile("/usr/lib/shim/mmx64.efi.signed", "shim-helpers-amd64-signed")
GRUB_EFI_DISK = HostFile("/usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed",
                         "grub-efi-amd64-signed")
GRUB_EFI_CD = HostFile("/usr/lib/grub/x86_64-efi-signed/gcdx64.efi.signed",
                       "grub-efi-amd64-signed")
GRUB_EFI_NET = HostFile("/usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed",
                        "grub-efi-amd64-signed")
# iPXE: for UEFI HTTP boot and for sites that chain iPXE; not signed, so
# not for Secure Boot machines.
IPXE_EFI = HostFile("/usr/lib/ipxe/ipxe.efi", "ipxe")
IPXE_BIOS = HostFile("/usr/lib/ipxe/undionly.kpxe", "ipxe")


def require(*files: HostFile) -> list[Path]:
    """The host paths of `files`, or one error naming every missing package."""
    missing = [f for f in files if not f.find().is_file()]
    if missing:
        packages = " ".join(dict.fromkeys(f.package for f in missing))
        raise SyscloneError(f"{', '.join(f.path for f in missing)} not found",
                            hint=f"apt install {packages}")
    return [f.find() for f in files]
