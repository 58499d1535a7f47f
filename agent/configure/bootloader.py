"""Installing the bootloader from inside the installed system.

GRUB 2 is run from the image itself (its grub-install and its modules), so
the bootloader matches the image, whatever the boot environment carries.
BIOS installs go to the MBR/BIOS boot partition of each target disk; UEFI
installs go to the ESP, also as the removable-media fallback path
(EFI/BOOT/BOOTX64.EFI) so the machine boots even when firmware forgets its
NVRAM entry.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        """Install the boot code and write the configuration; the
        configuration lists the kernels' initrds, so it is written only
        once `initrd_ready()` returns."""
        raise NotImplementedError


class Grub2(Bootloader):
    name = "grub2"
    install_cmd = "grub-install"
    mkconfig = ("update-grub",)

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/grub-install") else NONE

    editenv = "grub-editenv"
    envfile = "/boot/grub/grubenv"

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        self.check(root, target)
        # grub-install would create grubenv, and update-grub's 00_header
        # looks for it: once it exists, the two are independent and run side
        # by side (under emulation update-grub alone takes half a minute).
        if not exists(root, self.envfile.lstrip("/")):
            run([self.editenv, self.envfile, "create"], target=root)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="grub-install") as pool:
            code = pool.submit(self.install_code, root, target)
            try:
                initrd_ready()
                self.write_config(root)
            finally:
                code.result()

    def check(self, root: Path, target: BootTarget) -> None:
        arch = "x86_64-efi" if target.firmware == "uefi" else "i386-pc"
        if not exists(root, f"usr/lib/grub/{arch}") and not exists(root, f"usr/lib/grub2/{arch}"):
            pkg = "grub-efi-amd64-bin" if target.firmware == "uefi" else "grub-pc-bin"
            what = "UEFI" if target.firmware == "uefi" else "BIOS"
            raise SyscloneError(f"the image has no GRUB for {what} (usr/lib/grub/{arch})",
                                hint=f"install {pkg} in the golden image")

    def install_code(self, root: Path, target: BootTarget) -> None:
        if target.firmware == "uefi":
            common = [self.install_cmd, "--target=x86_64-efi",
                      f"--efi-directory={target.esp_mountpoint}"]
            run([*common, f"--bootloader-id={target.bootloader_id}", "--recheck"], target=root)
            run([*common, "--removable", "--no-nvram"], target=root)
        else:
            for disk in target.disks:
                run([self.install_cmd, "--target=i386-pc", "--recheck", disk], target=root)

    def write_config(self, root: Path) -> None:
        if exists(root, "usr/sbin/update-grub"):
            run(["update-grub"], target=root)
        else:
            run(["grub-mkconfig", "-o", "/boot/grub/grub.cfg"], target=root)


class Grub2RedHat(Grub2):
    """RHEL/Fedora/SUSE spell GRUB 2's tools grub2-*."""

    name = "grub2 (grub2-* tools)"
    install_cmd = "grub2-install"
    editenv = "grub2-editenv"
    envfile = "/boot/grub2/grubenv"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "usr/sbin/grub2-install") else NONE

    def write_config(self, root: Path) -> None:
        run(["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"], target=root)


BOOTLOADERS: tuple[Bootloader, ...] = (Grub2(), Grub2RedHat())
