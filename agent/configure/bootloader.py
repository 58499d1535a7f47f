"""Installing the bootloader from inside the installed system.

GRUB 2 is run from the image itself (its grub-install and its modules), so
the bootloader matches the image, whatever the boot environment carries.
BIOS installs go to the MBR/BIOS boot partition of each target disk; UEFI
installs go to the ESP, also as the removable-media fallback path
(EFI/BOOT/BOOTX64.EFI) so the machine boots even when firmware forgets its
NVRAM entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.configure.footprint import MAINLINE, NONE, PREFERRED, exists
from sysclone.errors import SyscloneError
from sysclone.run import run


@dataclass(frozen=True)
class BootTarget:
    firmware: str  # bios | uefi
    disks: tuple[str, ...]  # BIOS: whole disks to write boot code to
    esp_mountpoint: str = "/boot/efi"
    bootloader_id: str = "sysclone"


class Bootloader:
    name = "none"

    def fits(self, root: Path) -> int:
        return NONE

    def install(self, root: Path, target: BootTarget) -> None:
        raise NotImplementedError


class Grub2(Bootloader):
    name = "grub2"
    install_cmd = "grub-install"
    mkconfig = ("update-grub",)

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/grub-install") else NONE

    def install(self, root: Path, target: BootTarget) -> None:
        if target.firmware == "uefi":
            if not exists(root, "usr/lib/grub/x86_64-efi"):
                raise SyscloneError("the image has no GRUB for UEFI (usr/lib/grub/x86_64-efi)",
                                    hint="install grub-efi-amd64-bin in the golden image")
            common = [self.install_cmd, "--target=x86_64-efi",
                      f"--efi-directory={target.esp_mountpoint}"]
            run([*common, f"--bootloader-id={target.bootloader_id}", "--recheck"], target=root)
            run([*common, "--removable", "--no-nvram"], target=root)
        else:
            if not exists(root, "usr/lib/grub/i386-pc"):
                raise SyscloneError("the image has no GRUB for BIOS (usr/lib/grub/i386-pc)",
                                    hint="install grub-pc-bin in the golden image")
            for disk in target.disks:
                run([self.install_cmd, "--target=i386-pc", "--recheck", disk], target=root)
        self.write_config(root)

    def write_config(self, root: Path) -> None:
        if exists(root, "usr/sbin/update-grub"):
            run(["update-grub"], target=root)
        else:
            run(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"], target=root)


class Grub2RedHat(Grub2):
    """RHEL/Fedora/SUSE spell GRUB 2's tools grub2-*."""

    name = "grub2 (grub2-* tools)"
    install_cmd = "grub2-install"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "usr/sbin/grub2-install") else NONE

    def write_config(self, root: Path) -> None:
        run(["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"], target=root)


BOOTLOADERS: tuple[Bootloader, ...] = (Grub2(), Grub2RedHat())
