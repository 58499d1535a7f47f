"""The installed system's initrd: where the image keeps it, what is in it,
and regenerating it inside the chroot with the image's own tool
(initramfs-tools, dracut or SUSE's mkinitrd, whichever the image has).

Whether it needs regenerating at all is agent.configure.initrdpolicy's call.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tarfile
from pathlib import Path

from agent.configure.footprint import MAINLINE, NONE, PREFERRED, exists
from agent.configure.initrdpolicy import wanted_in_initrd
from agent.initramfs import DECOMPRESSORS, Listing, read_listing
from sysclone.run import run, which

log = logging.getLogger(__name__)


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

    def initrd_path(self, root: Path, kver: str) -> Path | None:
        """The image's initrd for `kver`, if it has one."""
        for name in (f"boot/initrd.img-{kver}", f"boot/initramfs-{kver}.img",
                     f"boot/initrd-{kver}"):
            if (root / name).is_file():
                return root / name
        return None

    def configure(self, root: Path, swap_uuid: str | None) -> list[str]:
        """Point the tool's own settings at the new disks; returns what was
        written (relative paths)."""
        return []

    def builds_generic(self, root: Path) -> bool:
        """Whether the image's configuration makes initrds that do not depend
        on the machine they are built on (then the image server can build
        them, at native speed)."""
        return False

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        raise NotImplementedError


def shell_assignments(text: str) -> dict[str, str]:
    """NAME=value lines of a shell-sourced config file (the last one wins)."""
    out = {}
    for m in re.finditer(r"^\s*([A-Za-z_][A-Za-z0-9_]*)=[\"']?([^\"'\s#]*)", text, re.M):
        out[m.group(1)] = m.group(2)
    return out


def list_initrd(root: Path, initrd: Path) -> Listing:
    """List an image's initrd, keeping the files that name disks or say how
    it was built.  Decompressed by the image's own tools (it made the
    initrd, so it has them), else by the boot environment's."""

    def decompressor(kind: str) -> list[str]:
        argv = list(DECOMPRESSORS[kind])
        if exists(root, f"usr/bin/{argv[0]}", f"bin/{argv[0]}"):
            return ["chroot", str(root), *argv]
        if which(argv[0]):
            return argv
        return argv  # fails with a clear "is missing"

    return read_listing(initrd, decompressor, wanted_in_initrd)


class InitramfsTools(InitrdTool):
    name = "initramfs-tools"

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/update-initramfs") else NONE

    def configure(self, root: Path, swap_uuid: str | None) -> list[str]:
        """initramfs-tools resumes from the swap named in conf.d/resume: a
        golden client's file names its own old swap, which would make every
        boot wait for a disk that is gone."""
        conf = root / "etc/initramfs-tools/conf.d/resume"
        if not conf.exists() and not conf.is_symlink():
            if not swap_uuid:
                return []
            # As Debian's installer does: name the swap explicitly, so the
            # tool never guesses from whatever swap the builder runs with.
            conf.parent.mkdir(parents=True, exist_ok=True)
            conf.write_text(f"RESUME=UUID={swap_uuid}\n")
            return ["etc/initramfs-tools/conf.d/resume"]
        text = conf.read_text(errors="replace")
        value = f"UUID={swap_uuid}" if swap_uuid else "none"
        new, n = re.subn(r"^\s*RESUME=.*$", f"RESUME={value}", text, flags=re.M)
        if n == 0:
            new = text + ("" if text.endswith("\n") or not text else "\n") + \
                f"RESUME={value}\n"
        if new == text:
            return []
        conf.write_text(new)
        return ["etc/initramfs-tools/conf.d/resume"]

    def modules_setting(self, root: Path) -> str:
        """MODULES= as mkinitramfs will read it: initramfs.conf, then conf.d/*."""
        conf = root / "etc/initramfs-tools"
        files = [conf / "initramfs.conf",
                 *sorted(p for p in (conf / "conf.d").glob("*") if p.is_file())]
        value = "most"  # mkinitramfs's default
        for f in files:
            if f.is_file():
                value = shell_assignments(f.read_text(errors="replace")).get("MODULES", value)
        return value

    def builds_generic(self, root: Path) -> bool:
        return self.modules_setting(root) == "most"

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        for k in kvers:
            # -t: take the image's initrd over even when its checksum record
            # is stale (an image captured from a client that edited it).
            mode = ["-u", "-t"] if (root / f"boot/initrd.img-{k}").exists() else ["-c"]
            run(["update-initramfs", *mode, "-k", k], target=root)


class Dracut(InitrdTool):
    name = "dracut"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "usr/bin/dracut", "sbin/dracut") else NONE

    def builds_generic(self, root: Path) -> bool:
        return True  # always run with --no-hostonly, below

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


# What a server-built initrd may bring back (imageserver.initrdbuild).
RESULT_DIRS = ("boot/", "var/lib/initramfs-tools/")


def unpack_result(data: bytes, root: Path, kver: str) -> list[str]:
    """Write the files of a server-built initrd into the installed system.
    Only regular files under /boot and initramfs-tools' records, for this
    kernel, are accepted: the answer comes over the network."""
    from sysclone.errors import SyscloneError

    written: list[str] = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            for m in tar.getmembers():
                written.append(_extract_one(tar, m, root, kver))
    except tarfile.TarError as e:
        raise SyscloneError(f"the image server's initrd is not a tar archive: {e}") from None
    if not any(w.startswith("boot/") for w in written):
        raise SyscloneError(f"the image server sent no initrd for {kver}")
    return written


def _extract_one(tar: tarfile.TarFile, m: tarfile.TarInfo, root: Path, kver: str) -> str:
    from sysclone.errors import SyscloneError

    parts = Path(m.name).parts
    if (not m.isreg() or m.name.startswith("/") or ".." in parts
            or not m.name.startswith(RESULT_DIRS) or kver not in m.name):
        raise SyscloneError(f"the image server's initrd holds an unexpected entry {m.name!r}")
    src = tar.extractfile(m)
    assert src is not None
    dest = root / m.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.sysclone")
    with tmp.open("wb") as f:
        shutil.copyfileobj(src, f)
    tmp.chmod(m.mode & 0o777)
    tmp.replace(dest)
    return m.name
