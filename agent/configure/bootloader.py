"""Installing the bootloader from inside the installed system.

The layout's `<bootloader flavor=...>` says which bootloader; without one
(the built-in default layout) the image's footprint decides.  Each is run
from the image itself, so the boot code matches the image whatever the
boot environment carries:

- GRUB 2 (flavor grub2): BIOS installs go to the MBR/BIOS boot partition of
  every target disk (each member of a RAID 1 /boot); UEFI installs go to
  the ESP with an NVRAM entry, and again as the removable-media fallback
  path (EFI/BOOT/BOOTX64.EFI) so the machine boots even when firmware
  forgets its NVRAM entry.
- systemd-boot (flavor systemd, UEFI only): `bootctl install` (NVRAM entry
  and the fallback path), then Boot Loader Specification entries on the
  ESP for each kernel, laid out as kernel-install lays them out (entry
  token `sysclone`), so the image's own kernel updates carry on.
- LILO (BIOS) and ELILO (UEFI): when the image has their binary and its
  configuration; the configuration's root is pointed at the new root
  filesystem, then the image's tool writes the boot code.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.configure.footprint import MAINLINE, NONE, PREFERRED, best, exists
from sysclone.errors import SyscloneError
from sysclone.run import run


class BootloaderError(SyscloneError):
    pass


@dataclass(frozen=True)
class BootTarget:
    firmware: str  # bios | uefi
    disks: tuple[str, ...]  # BIOS: whole disks to write boot code to
    esp_mountpoint: str = "/boot/efi"
    bootloader_id: str = "sysclone"
    flavor: str | None = None  # the layout's <bootloader flavor>; None: by footprint
    timeout: int | None = None  # seconds, from the layout
    default_entry: str | None = None  # from the layout (an index or a name)


class Bootloader:
    name = "none"
    flavors: tuple[str, ...] = ()  # the layout flavors this installs
    firmwares: tuple[str, ...] = ("bios", "uefi")
    package = "grub-pc / grub-efi-amd64"  # for "install it" hints

    def fits(self, root: Path) -> int:
        return NONE

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        """Install the boot code and write the configuration; the
        configuration lists the kernels' initrds, so it is written only
        once `initrd_ready()` returns."""
        raise NotImplementedError


def root_spec(root: Path) -> str | None:
    """How the new fstab names the root filesystem (UUID=..., a device)."""
    fstab = root / "etc/fstab"
    if not fstab.is_file():
        return None
    for line in fstab.read_text(errors="replace").splitlines():
        fields = line.split()
        if len(fields) >= 2 and not fields[0].startswith("#") and fields[1] == "/":
            return fields[0]
    return None


def grub_cmdline(root: Path) -> str:
    """The image's kernel options, as it gives them to GRUB."""
    p = root / "etc/default/grub"
    if not p.is_file():
        return ""
    values = {}
    for m in re.finditer(r"^\s*(GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=([\"']?)(.*?)\2\s*$",
                         p.read_text(errors="replace"), re.M):
        values[m.group(1)] = m.group(3)
    return " ".join(v for v in (values.get("GRUB_CMDLINE_LINUX", ""),
                                values.get("GRUB_CMDLINE_LINUX_DEFAULT", "")) if v)


def set_shell_var(text: str, name: str, value: str) -> str:
    """Replace (or add) NAME=value in a shell-style config file."""
    new, n = re.subn(rf"^\s*{name}=.*$", f"{name}={value}", text, flags=re.M)
    if n == 0:
        new = text + ("" if text.endswith("\n") or not text else "\n") + f"{name}={value}\n"
    return new


# -- GRUB 2 ---------------------------------------------------------------------------------

# Debian's and Ubuntu's signed GRUB (grub-efi-amd64-signed); grub-install
# installs it, and shim when shim-signed is there, whenever it exists.
SIGNED_GRUB = "usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"
# The prefix grub-mkimage built in: a NUL-terminated "/EFI/<vendor>".
_SIGNED_PREFIX = re.compile(rb"\x00/EFI/([A-Za-z0-9_.-]{1,64})\x00")


def signed_grub_dir(root: Path) -> str | None:
    """The ESP directory (EFI/<this>) the image's signed GRUB reads its
    grub.cfg from -- debian, ubuntu -- or None when the image has no signed
    GRUB (grub-install then builds one for any directory)."""
    image = root / SIGNED_GRUB
    if not image.is_file():
        return None
    found = _SIGNED_PREFIX.search(image.read_bytes())
    if found is None:
        raise BootloaderError(f"{SIGNED_GRUB} in the image has no /EFI/<directory> built in",
                              hint="reinstall grub-efi-amd64-signed in the golden image")
    return found.group(1).decode()


class Grub2(Bootloader):
    name = "grub2"
    flavors = ("grub2",)
    install_cmd = "grub-install"
    mkconfig = ("update-grub",)

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/grub-install") else NONE

    editenv = "grub-editenv"
    envfile = "/boot/grub/grubenv"

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        self.check(root, target)
        self.set_defaults(root, target)
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

    def set_defaults(self, root: Path, target: BootTarget) -> None:
        """The layout's timeout and default entry, where GRUB reads them."""
        if target.timeout is None and target.default_entry is None:
            return
        p = root / "etc/default/grub"
        text = p.read_text(errors="replace") if p.is_file() else ""
        new = text
        if target.timeout is not None:
            new = set_shell_var(new, "GRUB_TIMEOUT", str(target.timeout))
        if target.default_entry is not None:
            new = set_shell_var(new, "GRUB_DEFAULT", target.default_entry
                                if target.default_entry.isdigit()
                                else f'"{target.default_entry}"')
        if new != text:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(new)

    def install_code(self, root: Path, target: BootTarget) -> None:
        if target.firmware == "uefi":
            common = [self.install_cmd, "--target=x86_64-efi",
                      f"--efi-directory={target.esp_mountpoint}"]
            # A distribution's signed GRUB (what grub-install puts on the ESP
            # when the image has it, behind shim) reads its grub.cfg from the
            # one directory built into it: another --bootloader-id leaves the
            # machine at a GRUB prompt, Secure Boot on or off.
            bootloader_id = signed_grub_dir(root) or target.bootloader_id
            run([*common, f"--bootloader-id={bootloader_id}", "--recheck"], target=root)
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


# -- systemd-boot ---------------------------------------------------------------------------

class SystemdBoot(Bootloader):
    name = "systemd-boot"
    flavors = ("systemd",)
    firmwares = ("uefi",)
    package = "systemd-boot"
    EFI_BINARY = "usr/lib/systemd/boot/efi/systemd-bootx64.efi"
    TOKEN = "sysclone"

    def fits(self, root: Path) -> int:
        if not exists(root, "usr/bin/bootctl", "bin/bootctl") or \
                not exists(root, self.EFI_BINARY):
            return NONE
        # In use when the image's ESP (captured with it) has its loader.
        in_use = any(exists(root, f"{esp}/loader/loader.conf")
                     for esp in ("boot/efi", "efi", "boot"))
        return PREFERRED if in_use else MAINLINE

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        esp = root / target.esp_mountpoint.lstrip("/")
        if not esp.is_dir():
            raise BootloaderError(f"systemd-boot needs the EFI system partition mounted at "
                                  f"{target.esp_mountpoint}, which the layout does not have",
                                  hint="add a vfat /boot/efi (or /efi) with the esp flag")
        cmdline = self.cmdline(root)
        # bootctl writes the NVRAM entry and EFI/BOOT/BOOTX64.EFI (the
        # removable-media path) besides its own copy.
        run(["bootctl", "install", f"--esp-path={target.esp_mountpoint}"], target=root)
        initrd_ready()
        kvers = self.kernels(root)
        if not kvers:
            raise BootloaderError("systemd-boot: the image has no kernel to boot "
                                  "(no /boot/vmlinuz-VERSION with its modules)")
        for k in kvers:
            self.entry(root, esp, k, cmdline)
        self.loader_conf(esp, kvers, target)
        # What the image's kernel-install uses on its next kernel update:
        # the same entry token, the same kernel options.
        (root / "etc/kernel").mkdir(parents=True, exist_ok=True)
        (root / "etc/kernel/entry-token").write_text(self.TOKEN + "\n")
        (root / "etc/kernel/cmdline").write_text(cmdline + "\n")

    @staticmethod
    def kernels(root: Path) -> list[str]:
        from agent.configure.initrd import kernel_versions

        return kernel_versions(root)

    def cmdline(self, root: Path) -> str:
        given = root / "etc/kernel/cmdline"
        spec = root_spec(root)
        if spec is None:
            raise BootloaderError("systemd-boot: the new /etc/fstab has no root filesystem "
                                  "to boot")
        old = given.read_text().split() if given.is_file() else grub_cmdline(root).split()
        # The image's options, minus the golden client's root and ro/rw.
        kept = [w for w in old if not w.startswith("root=") and w not in ("ro", "rw")]
        return " ".join([f"root={spec}", "ro", *kept])

    def entry(self, root: Path, esp: Path, kver: str, cmdline: str) -> None:
        from agent.configure.initrd import TOOLS

        kernel = next((root / "boot" / f"{n}-{kver}" for n in ("vmlinuz", "vmlinux")
                       if (root / "boot" / f"{n}-{kver}").is_file()), None)
        if kernel is None:
            for base in ("usr/lib/modules", "lib/modules"):
                if (root / base / kver / "vmlinuz").is_file():
                    kernel = root / base / kver / "vmlinuz"
        if kernel is None:
            raise BootloaderError(f"systemd-boot: no kernel image for {kver}")
        tool = best(TOOLS, root)
        initrd = tool.initrd_path(root, kver) if tool else None
        d = esp / self.TOKEN / kver
        d.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel, d / "linux")
        lines = [f"title      {self.os_name(root)}", f"version    {kver}",
                 f"linux      /{self.TOKEN}/{kver}/linux"]
        if initrd is not None:
            shutil.copyfile(initrd, d / "initrd")
            lines.append(f"initrd     /{self.TOKEN}/{kver}/initrd")
        lines.append(f"options    {cmdline}")
        entries = esp / "loader/entries"
        entries.mkdir(parents=True, exist_ok=True)
        (entries / f"{self.TOKEN}-{kver}.conf").write_text("\n".join(lines) + "\n")

    @staticmethod
    def os_name(root: Path) -> str:
        # usr/lib's is the file; etc's is usually a link to it, and an
        # absolute link would be read in the boot environment.
        for p in ("usr/lib/os-release", "etc/os-release"):
            f = root / p
            if f.is_file():
                m = re.search(r"^PRETTY_NAME=[\"']?(.*?)[\"']?\s*$", f.read_text(), re.M)
                if m:
                    return m.group(1)
        return "Linux"

    def loader_conf(self, esp: Path, kvers: list[str], target: BootTarget) -> None:
        p = esp / "loader/loader.conf"
        text = p.read_text() if p.is_file() else ""
        default = f"{self.TOKEN}-{kvers[-1]}.conf"
        if target.default_entry is not None and target.default_entry.isdigit() and \
                int(target.default_entry) < len(kvers):
            # Entries sort newest first in the menu, as systemd-boot shows them.
            default = f"{self.TOKEN}-{list(reversed(kvers))[int(target.default_entry)]}.conf"
        settings = {"default": default}
        if target.timeout is not None:
            settings["timeout"] = str(target.timeout)
        for key, value in settings.items():
            text, n = re.subn(rf"^#?\s*{key}\s.*$", f"{key} {value}", text, flags=re.M)
            if n == 0:
                text += ("" if text.endswith("\n") or not text else "\n") + f"{key} {value}\n"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


# -- LILO and ELILO ---------------------------------------------------------------------------

def _set_option(text: str, key: str, value: str, global_only: bool = False) -> str:
    """Set `key=value` in a lilo.conf-style file: every occurrence, or a
    new line in the global section (before the first image)."""
    rx = re.compile(rf"^(\s*){re.escape(key)}\s*=.*$", re.M)
    first_image = re.search(r"^\s*(image|other)\s*=", text, re.M)
    if global_only:
        head, tail = (text[:first_image.start()], text[first_image.start():]) \
            if first_image else (text, "")
        head, n = rx.subn(rf"\g<1>{key}={value}", head)
        if n == 0:
            head = f"{key}={value}\n" + head
        return head + tail
    new, n = rx.subn(rf"\g<1>{key}={value}", text)
    if n == 0:
        at = first_image.start() if first_image else len(new)
        new = new[:at] + f"{key}={value}\n" + new[at:]
    return new


def _referenced_files(text: str) -> list[str]:
    return [m.group(2).strip("\"'") for m in
            re.finditer(r"^\s*(image|initrd)\s*=\s*(\S+)", text, re.M)]


class Lilo(Bootloader):
    name = "lilo"
    flavors = ("lilo",)
    firmwares = ("bios",)
    package = "lilo"
    CONF = "etc/lilo.conf"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "sbin/lilo", "usr/sbin/lilo") and \
            (root / self.CONF).is_file() else NONE

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        spec = root_spec(root)
        if spec is None:
            raise BootloaderError("lilo: the new /etc/fstab has no root filesystem")
        conf = root / self.CONF
        text = conf.read_text(errors="replace")
        # LILO 24 takes root="UUID=..." quoted; a device as it is.
        text = _set_option(text, "root", f'"{spec}"' if "=" in spec else spec)
        text = _set_option(text, "boot", target.disks[0], global_only=True)
        if target.timeout is not None:
            text = _set_option(text, "timeout", str(target.timeout * 10), global_only=True)
        if target.default_entry is not None:
            labels = re.findall(r"^\s*label\s*=\s*(\S+)", text, re.M)
            label = labels[int(target.default_entry)] if target.default_entry.isdigit() and \
                int(target.default_entry) < len(labels) else target.default_entry
            text = _set_option(text, "default", label, global_only=True)
        conf.write_text(text)
        initrd_ready()
        missing = [f for f in _referenced_files(text) if not exists(root, f.lstrip("/"))]
        if missing:
            raise BootloaderError(f"lilo.conf names {', '.join(missing)}, which the image "
                                  "does not have", hint="fix image= / initrd= in the golden "
                                                        "image's /etc/lilo.conf")
        # The map and boot sector are written per disk: every member of a
        # mirrored /boot boots on its own.
        for disk in target.disks:
            run(["lilo", "-b", disk], target=root)


class Elilo(Bootloader):
    name = "elilo"
    flavors = ("elilo",)
    firmwares = ("uefi",)
    package = "elilo"
    CONF = "etc/elilo.conf"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "sbin/elilo", "usr/sbin/elilo") and \
            (root / self.CONF).is_file() else NONE

    def install(self, root: Path, target: BootTarget,
                initrd_ready: Callable[[], object] = lambda: None) -> None:
        spec = root_spec(root)
        if spec is None:
            raise BootloaderError("elilo: the new /etc/fstab has no root filesystem")
        esp = root / target.esp_mountpoint.lstrip("/")
        if not esp.is_dir():
            raise BootloaderError(f"elilo needs the EFI system partition mounted at "
                                  f"{target.esp_mountpoint}")
        conf = root / self.CONF
        text = _set_option(conf.read_text(errors="replace"), "root", spec)
        if target.timeout is not None:
            text = _set_option(text, "timeout", str(target.timeout * 10), global_only=True)
        conf.write_text(text)
        initrd_ready()
        # The image's elilo copies elilo.efi, its configuration, the kernels
        # and initrds to the ESP and (--efiboot) makes the NVRAM entry.
        run(["elilo", "--efiboot"], target=root)
        self.fallback(esp)

    @staticmethod
    def fallback(esp: Path) -> None:
        """The removable-media path: the installed directory again under
        EFI/BOOT, elilo.efi as BOOTX64.EFI (elilo reads elilo.conf from its
        own directory)."""
        efi = esp / "EFI" if (esp / "EFI").is_dir() else esp / "efi"
        found = [p for p in sorted(efi.glob("*/elilo.efi")) if p.parent.name.upper() != "BOOT"]
        if not found:
            raise BootloaderError("elilo: the image's elilo put no elilo.efi on the ESP")
        src = found[0].parent
        boot = efi / "BOOT"
        boot.mkdir(exist_ok=True)
        for f in src.iterdir():
            if f.is_file():
                shutil.copyfile(f, boot / ("BOOTX64.EFI" if f.name == "elilo.efi" else f.name))


# systemd-boot first: it is only preferred when the image uses it already.
BOOTLOADERS: tuple[Bootloader, ...] = (SystemdBoot(), Grub2(), Grub2RedHat(), Lilo(), Elilo())

FLAVOR_NAMES = {"grub2": "GRUB 2", "systemd": "systemd-boot", "grub": "GRUB legacy",
                "rEFInd": "rEFInd", "clover": "Clover", "lilo": "LILO", "elilo": "ELILO"}


def choose(root: Path, target: BootTarget) -> Bootloader:
    """The bootloader to install: the layout's flavor, else the footprint's
    choice among those that boot this firmware."""
    fw = "UEFI" if target.firmware == "uefi" else "BIOS"
    if target.flavor is not None:
        known = [b for b in BOOTLOADERS if target.flavor in b.flavors]
        what = FLAVOR_NAMES.get(target.flavor, target.flavor)
        if not known:
            raise BootloaderError(f'<bootloader flavor="{target.flavor}">: sysclone cannot '
                                  f"install {what}",
                                  hint='use flavor="grub2" or "systemd"')
        bl = best(known, root)
        if bl is None:
            raise BootloaderError(f'the layout asks for {what} (<bootloader flavor='
                                  f'"{target.flavor}">) but the image does not have it',
                                  hint=f"install {known[0].package} in the golden image, or "
                                       "change the layout's flavor")
        if target.firmware not in bl.firmwares:
            raise BootloaderError(f"{bl.name} does not boot {fw} machines, and this one is {fw}")
        return bl
    bl = best([b for b in BOOTLOADERS if target.firmware in b.firmwares], root)
    if bl is None:
        others = [b.name for b in BOOTLOADERS if b.fits(root)]
        raise BootloaderError(
            f"the image has no bootloader sysclone can install for {fw}"
            + (f" ({', '.join(others)} does not boot {fw})" if others else ""),
            hint="install GRUB 2 (grub-pc / grub-efi) in the golden image")
    return bl
