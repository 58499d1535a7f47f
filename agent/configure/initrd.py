"""Regenerating the installed system's initrd inside the chroot.

The image's initrd was built on the golden client; the new machine may boot
from a different disk controller, so it is rebuilt here with the image's own
tool: initramfs-tools, dracut or SUSE's mkinitrd, whichever the image has.
"""

from __future__ import annotations

from pathlib import Path

from agent.configure.footprint import MAINLINE, NONE, PREFERRED, exists
from sysclone.run import run


def kernel_versions(root: Path) -> list[str]:
    """Kernels installed in the image: those with both modules and an image."""
    mods = root / "lib/modules"
    if not mods.is_dir():
        mods = root / "usr/lib/modules"
    out = []
    for d in sorted(mods.iterdir()) if mods.is_dir() else []:
        if any((root / "boot" / f"{k}-{d.name}").exists() for k in ("vmlinuz", "vmlinux")) \
                or (d / "vmlinuz").exists():
            out.append(d.name)
    return out


class InitrdTool:
    name = "none"

    def fits(self, root: Path) -> int:
        return NONE

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        raise NotImplementedError


class InitramfsTools(InitrdTool):
    name = "initramfs-tools"

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/update-initramfs") else NONE

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        for k in kvers:
            mode = "-u" if (root / f"boot/initrd.img-{k}").exists() else "-c"
            run(["update-initramfs", mode, "-k", k], target=root)


class Dracut(InitrdTool):
    name = "dracut"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "usr/bin/dracut", "sbin/dracut") else NONE

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        for k in kvers:
            # --no-hostonly: the image may go to machines unlike this one.
            run(["dracut", "--force", "--no-hostonly", "--kver", k], target=root)


class SuseMkinitrd(InitrdTool):
    name = "mkinitrd"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "sbin/mkinitrd", "usr/sbin/mkinitrd") \
            and not exists(root, "usr/bin/dracut") else NONE

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        run(["mkinitrd"], target=root)


TOOLS: tuple[InitrdTool, ...] = (InitramfsTools(), Dracut(), SuseMkinitrd())
