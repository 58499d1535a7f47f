"""A hybrid ISO image (si_mkautoinstallcd): one file that boots BIOS and
UEFI machines from a disc, or written raw to a USB stick.

    /isolinux/isolinux.bin, ldlinux.c32, isolinux.cfg   BIOS (El Torito)
    /boot/efi.img    a FAT image (El Torito, and a GPT partition when the
                     file is written to a stick): EFI/BOOT/BOOTX64.EFI is
                     Debian's signed shim, EFI/BOOT/grubx64.efi Debian's
                     signed GRUB for discs (gcdx64), which finds the disc by
                     /.disk/info and reads /boot/grub/grub.cfg
    /sysclone/kernel, initrd.img     the boot environment
    /sysclone/localcfg.img           --local-cfg, as a second initrd
                                     (mkmedia.localcfg); local.cfg beside
                                     it, to read
    /sysclone/medium-<id>            marks this disc for GRUB's search

The MBR is isolinux's isohybrid one; xorriso writes the GPT and the
partition table that make the file a bootable disk too (Debian's own
recipe).  Under Secure Boot the firmware checks shim, shim checks GRUB and
GRUB (through shim) checks the kernel; nobody checks the initrd: see the
README's Secure Boot section.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

from mkmedia import bootfiles, localcfg, menus
from mkmedia.fat import Fat, fat_size
from sysclone.errors import ConfigError
from sysclone.run import run

MEDIUM_DIR = "sysclone"
_VOLUME = "SYSCLONE"


@dataclass(frozen=True)
class MediumSpec:
    """What any boot medium holds: the boot environment, the install
    parameters, and an optional local.cfg (already checked)."""

    kernel: Path
    initrd: Path
    append: str
    local_cfg: str | None = None
    timeout: int = 0  # seconds at the boot menu

    def token(self) -> str:
        """A name only this medium has: GRUB finds its own disc by it, not
        another sysclone or Debian medium left in the machine."""
        h = hashlib.sha256()
        for p in (self.kernel, self.initrd):
            h.update(p.name.encode())
            h.update(str(p.stat().st_size).encode())
            h.update(str(p.stat().st_mtime_ns).encode())
        h.update(self.append.encode())
        h.update((self.local_cfg or "").encode())
        return h.hexdigest()[:16]

    def initrds(self, prefix: str) -> tuple[str, ...]:
        files = [f"{prefix}/initrd.img"]
        if self.local_cfg is not None:
            files.append(f"{prefix}/localcfg.img")
        return tuple(files)


def stage_boot_environment(spec: MediumSpec, directory: Path) -> None:
    """kernel, initrd.img and, with a local.cfg, localcfg.img + local.cfg."""
    directory.mkdir(parents=True, exist_ok=True)
    for src in (spec.kernel, spec.initrd):
        if not src.is_file():
            raise ConfigError(f"{src}: no such file", hint="build the boot environment first")
    shutil.copyfile(spec.kernel, directory / "kernel")
    shutil.copyfile(spec.initrd, directory / "initrd.img")
    if spec.local_cfg is not None:
        (directory / "localcfg.img").write_bytes(localcfg.initrd_archive(spec.local_cfg))
        (directory / localcfg.NAME).write_text(spec.local_cfg)


def efi_files(grub: Path, shim: Path, mokmanager: Path) -> dict[str, Path]:
    """The removable-media boot path: the firmware starts BOOTX64.EFI (shim),
    which starts grubx64.efi from the same directory."""
    return {"/EFI/BOOT/BOOTX64.EFI": shim, "/EFI/BOOT/grubx64.efi": grub,
            "/EFI/BOOT/mmx64.efi": mokmanager}


def build_iso(out: Path, spec: MediumSpec, work: Path) -> Path:
    """Write the ISO to `out` (replaced only once complete)."""
    isolinux, isohdpfx, ldlinux, shim, mok, grub = bootfiles.require(
        bootfiles.ISOLINUX, bootfiles.ISOHDPFX, bootfiles.LDLINUX, bootfiles.SHIM,
        bootfiles.MOKMANAGER, bootfiles.GRUB_EFI_CD)
    menus.check_append(spec.append)
    tree = work / "iso"
    if tree.exists():
        shutil.rmtree(tree)
    stage_boot_environment(spec, tree / MEDIUM_DIR)
    token = spec.token()
    (tree / MEDIUM_DIR / f"medium-{token}").write_text("sysclone boot medium\n")
    (tree / ".disk").mkdir()
    (tree / ".disk/info").write_text(f"sysclone boot medium {token}\n")

    # BIOS: isolinux
    (tree / "isolinux").mkdir()
    shutil.copyfile(isolinux, tree / "isolinux/isolinux.bin")
    shutil.copyfile(ldlinux, tree / "isolinux/ldlinux.c32")
    entry = menus.Install(f"/{MEDIUM_DIR}/kernel", spec.initrds(f"/{MEDIUM_DIR}"), spec.append)
    (tree / "isolinux/isolinux.cfg").write_text(
        menus.syslinux_cfg(entry, timeout_ds=spec.timeout * 10, serial=True))

    # UEFI: GRUB reads /boot/grub/grub.cfg of the disc it found
    search = f"search --no-floppy --set=root --file /{MEDIUM_DIR}/medium-{token}"
    (tree / "boot/grub").mkdir(parents=True)
    (tree / "boot/grub/grub.cfg").write_text(
        menus.grub_cfg(entry, timeout=spec.timeout, root_search=search))
    files = efi_files(grub, shim, mok)
    efi = Fat(tree / "boot/efi.img").make(fat_size(sum(p.stat().st_size for p in
                                                       files.values()), slack=1 << 20),
                                          "EFIBOOT", token[:8].upper())
    efi.mkdir("/EFI", "/EFI/BOOT")
    for dest, src in files.items():
        efi.put(src, dest)
    # Only read if GRUB's own search for /.disk/info failed: find this disc
    # by its token and read the same grub.cfg.
    efi.put_bytes((f"{search}\nset prefix=($root)/boot/grub\nsource $prefix/grub.cfg\n")
                  .encode(), "/EFI/BOOT/grub.cfg")

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.unlink(missing_ok=True)
    run(["xorriso", "-as", "mkisofs", "-quiet", "-o", str(tmp),
         "-V", _VOLUME, "-R", "-J", "-joliet-long", "-iso-level", "3",
         "-isohybrid-mbr", str(isohdpfx),
         "-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat",
         "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table",
         "-eltorito-alt-boot", "-e", "boot/efi.img", "-no-emul-boot",
         "-isohybrid-gpt-basdat", str(tree)])
    tmp.replace(out)
    return out
