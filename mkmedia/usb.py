"""A USB boot disk (si_mkautoinstalldisk): a disk image, or written to a
device, that boots BIOS and UEFI machines.

    GPT, syslinux's gptmbr.bin in the protective MBR
    1  sysclone-boot  ESP (FAT, legacy-BIOS-bootable):
         EFI/BOOT/BOOTX64.EFI, grubx64.efi, mmx64.efi   shim, signed GRUB
         EFI/debian/grub.cfg                            (where that GRUB looks)
         syslinux/ldlinux.sys, ldlinux.c32, syslinux.cfg  BIOS
         sysclone/kernel, initrd.img                    the boot environment
    2  sysclone-data  FAT labelled SYSCLONECFG, writable:
         local.cfg      the install parameters: edit it on any computer
         logs/          the agent copies its log here after each install

The agent looks for the SYSCLONECFG filesystem once the drivers are loaded
and reads its local.cfg (agent.params.medium); keeping it mounted while it
works also keeps the stick out of the disks it may install on.

Writing to a device refuses a mounted one, one that is not removable, or
one larger than --max-size, unless --force: the usual mistake is /dev/sda.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mkmedia import bootfiles, menus
from mkmedia.fat import Fat, fat_size
from mkmedia.iso import MEDIUM_DIR, MediumSpec, efi_files, stage_boot_environment
from sysclone.errors import ConfigError
from sysclone.run import run

MiB = 1 << 20
DATA_LABEL = "SYSCLONECFG"  # agent.params.medium looks for it
ESP_TYPE = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B"
DATA_TYPE = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7"  # Microsoft basic data: any OS mounts it
DEFAULT_DATA_MIB = 64
# local.cfg and logs need little; the bound keeps the image (a file of this
# size, then copied whole) within a stick of the default --max-size.
MIN_DATA_MIB, MAX_DATA_MIB = 8, 32 * 1024
DEFAULT_MAX_GB = 64

LOCAL_CFG_TEMPLATE = """\
# sysclone local.cfg: install parameters for machines booting this disk.
# VARIABLE=value lines, as SystemImager's local.cfg (see `sysclone params`).
# They override DHCP and the kernel command line; the image server's own
# settings override them.  For example:
#
#IMAGESERVER=10.0.0.3
#IMAGENAME=web
#HOSTNAME=www1
#si.post-action=reboot
"""

README = """\
sysclone boot disk.  Edit local.cfg here to change the install parameters;
each install leaves its log in logs/.
"""


@dataclass(frozen=True)
class UsbLayout:
    """Where the two partitions are, in bytes."""

    esp_start: int
    esp_size: int
    data_start: int
    data_size: int
    total: int


def check_data_size(data_mib: int) -> int:
    """--data-size, checked before anything is built: too large, the image
    file fails only at the end with the file system's own error."""
    if not MIN_DATA_MIB <= data_mib <= MAX_DATA_MIB:
        raise ConfigError(f"--data-size {data_mib}: from {MIN_DATA_MIB} to {MAX_DATA_MIB} MiB",
                          hint="it holds local.cfg and the install logs; 64 MiB is plenty")
    return data_mib


def layout(esp_payload: int, data_mib: int = DEFAULT_DATA_MIB) -> UsbLayout:
    check_data_size(data_mib)
    esp = fat_size(esp_payload)
    start = MiB  # partitions aligned to 1 MiB, as every partitioning tool does
    data_start = start + esp
    return UsbLayout(start, esp, data_start, data_mib * MiB, data_start + data_mib * MiB + MiB)


def sfdisk_script(lay: UsbLayout) -> str:
    return "\n".join([
        "label: gpt",
        f"start={lay.esp_start // 512}, size={lay.esp_size // 512}, type={ESP_TYPE}, "
        'name="sysclone-boot", attrs="LegacyBIOSBootable"',
        f"start={lay.data_start // 512}, size={lay.data_size // 512}, type={DATA_TYPE}, "
        'name="sysclone-data"',
        ""])


def build_image(out: Path, spec: MediumSpec, *, data_mib: int = DEFAULT_DATA_MIB) -> Path:
    """Write the disk image to `out` (replaced only once complete)."""
    shim, mok, grub, ldlinux, gptmbr, _ = bootfiles.require(
        bootfiles.SHIM, bootfiles.MOKMANAGER, bootfiles.GRUB_EFI_DISK, bootfiles.LDLINUX,
        bootfiles.GPTMBR, bootfiles.SYSLINUX)
    menus.check_append(spec.append)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with tempfile.TemporaryDirectory(prefix="sysclone-usb.") as d:
        staged = Path(d) / MEDIUM_DIR
        # The data partition holds local.cfg: not a second initrd here.
        stage_boot_environment(MediumSpec(spec.kernel, spec.initrd, spec.append), staged)
        efi = efi_files(grub, shim, mok)
        payload = sum(p.stat().st_size for p in [*efi.values(), *staged.iterdir(), ldlinux])
        lay = layout(payload, data_mib)
        token = spec.token()
        with tmp.open("wb") as f:
            f.truncate(lay.total)
        run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(tmp)],
            input=sfdisk_script(lay))
        esp = Fat(tmp, lay.esp_start).make(lay.esp_size, "SYSCLONE", token[:8].upper())
        esp.mkdir("/EFI", "/EFI/BOOT", "/EFI/debian", "/syslinux", f"/{MEDIUM_DIR}")
        for dest, src in efi.items():
            esp.put(src, dest)
        volid = f"{token[:4].upper()}-{token[4:8].upper()}"
        entry = menus.Install(f"/{MEDIUM_DIR}/kernel", (f"/{MEDIUM_DIR}/initrd.img",),
                              spec.append)
        # Debian's signed GRUB reads /EFI/debian/grub.cfg of the partition it
        # was started from; the search makes sure the kernel comes from here.
        esp.put_bytes(menus.grub_cfg(entry, timeout=spec.timeout, root_search=(
            f"search --no-floppy --set=root --fs-uuid {volid}")).encode(), "/EFI/debian/grub.cfg")
        esp.put_bytes(menus.syslinux_cfg(entry, timeout_ds=spec.timeout * 10, serial=True)
                      .encode(), "/syslinux/syslinux.cfg")
        esp.put(ldlinux, "/syslinux/ldlinux.c32")
        for p in sorted(staged.iterdir()):
            esp.put(p, f"/{MEDIUM_DIR}/{p.name}")
        # BIOS: syslinux's boot sector and ldlinux.sys into the ESP, and the
        # GPT-aware MBR that starts the partition marked legacy-bootable.
        run(["syslinux", "--install", "--offset", str(lay.esp_start), "--directory",
             "/syslinux", str(tmp)], env={"MTOOLS_SKIP_CHECK": "1"})
        code = gptmbr.read_bytes()
        if len(code) > 440:
            raise ConfigError(f"{gptmbr} is {len(code)} bytes: not an MBR boot code")
        with tmp.open("r+b") as f:
            f.write(code)
        data = Fat(tmp, lay.data_start).make(lay.data_size, DATA_LABEL, token[8:16].upper())
        data.mkdir("/logs")
        data.put_bytes((spec.local_cfg if spec.local_cfg is not None
                        else LOCAL_CFG_TEMPLATE).encode(), "/local.cfg")
        data.put_bytes(README.encode(), "/README.txt")
    tmp.replace(out)
    return out


# ----------------------------------------------------------------- devices ---

@dataclass(frozen=True)
class DeviceFacts:
    """What decides whether a device may be overwritten."""

    path: str
    name: str  # sdb
    size: int
    removable: bool
    transport: str
    mounted: tuple[str, ...]  # mount points of it or its partitions
    is_partition: bool


SYS_BLOCK = Path("/sys/class/block")
MOUNTINFO = Path("/proc/self/mountinfo")


def device_facts(device: str) -> DeviceFacts:
    p = Path(device)
    try:
        st = p.stat()
    except OSError as e:
        raise ConfigError(f"--device {device}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise ConfigError(f"--device {device} is not a block device",
                          hint="for a disk image use --output FILE")
    name = Path(os.path.realpath(p)).name
    sysdir = SYS_BLOCK / name
    is_partition = (sysdir / "partition").exists()
    size = int((sysdir / "size").read_text()) * 512 if (sysdir / "size").exists() else 0
    removable = (sysdir / "removable").read_text().strip() == "1" \
        if (sysdir / "removable").exists() else False
    transport = "usb" if "/usb" in os.path.realpath(sysdir) else ""
    if transport == "usb":
        removable = True  # USB disks often say 0, yet they are sticks
    majmin = {f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"}
    for part in sysdir.iterdir() if sysdir.is_dir() else ():
        dev = part / "dev"
        if part.name.startswith(name) and dev.is_file():
            majmin.add(dev.read_text().strip())
    mounted = []
    for line in MOUNTINFO.read_text().splitlines():
        f = line.split()
        if len(f) > 4 and f[2] in majmin:
            mounted.append(f[4])
    return DeviceFacts(device, name, size, removable, transport, tuple(mounted), is_partition)


def check_device(facts: DeviceFacts, *, max_bytes: int, force: bool) -> None:
    """Refuse what is probably not the stick the user meant."""
    if facts.is_partition:
        raise ConfigError(f"--device {facts.path} is a partition",
                          hint="name the whole disk (/dev/sdb, not /dev/sdb1)")
    if facts.mounted:
        raise ConfigError(f"--device {facts.path} is mounted on {', '.join(facts.mounted)}",
                          hint="unmount it first; a mounted disk is in use")
    if force:
        return
    if not facts.removable:
        raise ConfigError(f"--device {facts.path} is not a removable disk",
                          hint="check the name (lsblk); --force writes it anyway")
    if facts.size > max_bytes:
        raise ConfigError(f"--device {facts.path} is {facts.size / 1e9:.0f} GB, larger than "
                          f"--max-size {max_bytes / 1e9:.0f} GB",
                          hint="check the name (lsblk); --force writes it anyway")


def write_device(image: Path, facts: DeviceFacts) -> None:
    """Copy the image onto the device, then move the backup GPT to the
    device's real end (the image is smaller than the stick)."""
    if image.stat().st_size > facts.size:
        raise ConfigError(f"--device {facts.path} ({facts.size // MiB} MiB) is smaller than "
                          f"the disk image ({image.stat().st_size // MiB} MiB)")
    # O_EXCL on a block device: the kernel refuses it if anything holds it.
    try:
        fd = os.open(facts.path, os.O_WRONLY | os.O_EXCL)
    except OSError as e:
        raise ConfigError(f"--device {facts.path}: {e.strerror}",
                          hint="something holds it (mounted, in a RAID, LVM or dm)") from None
    with os.fdopen(fd, "wb") as dev, image.open("rb") as src:
        shutil.copyfileobj(src, dev, 4 * MiB)
        dev.flush()
        os.fsync(dev.fileno())
    run(["sfdisk", "--quiet", "--relocate", "gpt-bak-std", facts.path])
    run(["partx", "-u", facts.path], check=False)
