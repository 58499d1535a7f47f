"""The installed system's initrd: where the image keeps it, what is in it,
and regenerating it inside the chroot with the image's own tool
(initramfs-tools, dracut, Arch's mkinitcpio or SUSE's mkinitrd, whichever
the image has).

What the layout needs to mount root (md, LVM, LUKS, btrfs) must get into
the initrd: each tool is told so in its own configuration (`require`), and
an image without the package that provides the tool's support for it is
refused, naming the package -- an initrd without it could not boot the
machine, now or after the next kernel update.

Whether it needs regenerating at all is agent.configure.initrdpolicy's call.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import tarfile
from pathlib import Path
from typing import ClassVar

from agent.configure.footprint import MAINLINE, NONE, PREFERRED, exists
from agent.configure.initrdpolicy import StorageNeeds, wanted_in_initrd
from agent.initramfs import DECOMPRESSORS, Listing, read_listing
from sysclone.errors import SyscloneError
from sysclone.run import run, which

log = logging.getLogger(__name__)

# What the layout asks of the initrd, by the tools the storage needs name
# (agent.configure.initrdpolicy.FEATURE_TOOLS) and the root filesystem.
FEATURES = ("md", "lvm", "luks", "btrfs")
_BY_TOOL = {"mdadm": "md", "lvm": "lvm", "cryptsetup": "luks"}
_WHAT = {"md": "software RAID (md)", "lvm": "LVM", "luks": "LUKS", "btrfs": "a btrfs root"}


class InitrdError(SyscloneError):
    pass


def features_of(needs: StorageNeeds) -> frozenset[str]:
    out = {_BY_TOOL[t] for t in needs.tools if t in _BY_TOOL}
    if "btrfs" in needs.modules:
        out.add("btrfs")
    return frozenset(out)


Provides = dict[str, tuple[tuple[str, ...], str]]
"""feature -> (paths any of which provides it in the image, their package)"""


def _missing(tool: str, root: Path, features: frozenset[str], provides: Provides) -> None:
    """Refuse, naming the packages, when the image lacks what `tool` needs
    to put a feature in the initrd (provides: feature -> (paths, package))."""
    gaps = [(f, pkg, paths[0]) for f, (paths, pkg) in sorted(provides.items())
            if f in features and not exists(root, *paths)]
    if not gaps:
        return
    what = ", ".join(_WHAT[f] for f, _, _ in gaps)
    pkgs = ", ".join(dict.fromkeys(pkg for _, pkg, _ in gaps))
    raise InitrdError(
        f"the layout needs {what} in the initrd, but the image lacks "
        + "; ".join(f"{pkg} (no /{path})" for _, pkg, path in gaps)
        + f": {tool} could not build an initrd that mounts root",
        hint=f"install {pkgs} in the golden image")


def _write_conf(root: Path, rel: str, text: str) -> list[str]:
    p = root / rel
    if p.is_file() and not p.is_symlink() and p.read_text(errors="replace") == text:
        return []
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink():
        p.unlink()
    p.write_text(text)
    return [rel]


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

    def require(self, root: Path, features: frozenset[str]) -> list[str]:
        """Make the tool put `features` (FEATURES) in the initrds it builds,
        or refuse naming the missing package; returns what was written
        (relative paths, sent along when the server builds the initrd)."""
        if features:
            raise InitrdError(f"sysclone cannot tell {self.name} to include "
                              + ", ".join(_WHAT[f] for f in sorted(features)),
                              hint="use an image with initramfs-tools, dracut or mkinitcpio")
        return []


def unlocks_luks(root: Path) -> bool:
    """Whether the initrd must unlock LUKS volumes: then it is not generic.
    cryptroot puts in the crypttab entries of the devices it finds under /
    (on the image server it would find none), and key files are never sent
    to the server."""
    tab = root / "etc/crypttab"
    if not tab.is_file():
        return False
    return any(line.strip() and not line.lstrip().startswith("#")
               for line in tab.read_text(errors="replace").splitlines())


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


# Root on md, initramfs-tools: with a member disk gone, Debian's mdadm
# starts the array degraded only when 2/3 of the root wait (20 of 30 s,
# counted from the initramfs' start) have passed, and whatever is stacked
# on the array -- cryptroot, LVM -- then has the 10 s left, or none on a
# slow boot: a RAID 1 under LUKS gave up waiting for root with one disk
# pulled.  This init-premount script (run before any local-top script, so
# before cryptroot looks for its source) waits at most WAIT seconds for the
# arrays of mdadm.conf to come up whole, then starts the incomplete ones
# degraded.  A boot with every disk present does not wait at all.
MD_DEGRADED_SCRIPT = "etc/initramfs-tools/scripts/init-premount/sysclone-md-degraded"
MD_DEGRADED_TEXT = """#!/bin/sh
# Written by sysclone: start this machine's RAID arrays degraded, soon
# enough for what is stacked on them (LUKS, LVM, root), when a member disk
# is missing.  mdadm's own local-block script would do it only 20 s into
# the 30 s root wait.
PREREQ=""
prereqs() { echo "$PREREQ"; }
case "$1" in prereqs) prereqs; exit 0 ;; esac

WAIT=10
conf=/etc/mdadm/mdadm.conf
[ -f "$conf" ] && command -v mdadm >/dev/null 2>&1 || exit 0
want=$(grep -c '^ARRAY' "$conf")
[ "$want" -gt 0 ] || exit 0
. /scripts/functions

whole() {
    [ "$(grep -c '^md[^ ]* : active' /proc/mdstat 2>/dev/null)" -ge "$want" ]
}

whole && exit 0
# Personalities may register after the disks were seen (Debian #830770).
udevadm trigger --action=add -s block >/dev/null 2>&1 || true
wait_for_udev 10
start=$(_uptime)
while ! whole && [ $(( $(_uptime) - start )) -lt "$WAIT" ]; do
    mdadm -q --assemble --scan --no-degraded >/dev/null 2>&1 || true
    sleep 1
done
whole && exit 0
log_warning_msg "sysclone: a RAID member is missing; starting the arrays degraded"
mdadm -q --assemble --scan --run >/dev/null 2>&1 || true
for md in /dev/md?*; do
    [ -b "$md" ] && mdadm -q --run "$md" >/dev/null 2>&1 || true
done
exit 0
"""


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
        return self.modules_setting(root) == "most" and not unlocks_luks(root)

    # feature -> (the hook that puts it in the initrd, its package)
    HOOKS: ClassVar[Provides] = {
        "md": (("usr/share/initramfs-tools/hooks/mdadm",), "mdadm"),
        "lvm": (("usr/share/initramfs-tools/hooks/lvm2",), "lvm2"),
        "luks": (("usr/share/initramfs-tools/hooks/cryptroot",), "cryptsetup-initramfs"),
        "btrfs": (("usr/share/initramfs-tools/hooks/btrfs",), "btrfs-progs"),
    }

    def require(self, root: Path, features: frozenset[str]) -> list[str]:
        # The hooks add their tools and modules whenever they are installed
        # (mdadm's with mdadm.conf, lvm2's, cryptroot's with the crypttab
        # entries of /, of resume and of those marked `initramfs`): their
        # presence is what matters.
        _missing(self.name, root, features, self.HOOKS)
        if "md" not in features:
            return []
        script = root / MD_DEGRADED_SCRIPT
        if script.is_file() and script.read_text(errors="replace") == MD_DEGRADED_TEXT:
            return []
        script.parent.mkdir(parents=True, exist_ok=True)
        script.write_text(MD_DEGRADED_TEXT)
        script.chmod(0o755)
        return [MD_DEGRADED_SCRIPT]

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
        # Always run with --no-hostonly, below.
        return not unlocks_luks(root)

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        for k in kvers:
            # --no-hostonly: the image may go to machines unlike this one.
            run(["dracut", "--force", "--no-hostonly", "--kver", k], target=root)

    MODULES: ClassVar[dict[str, str]] = {"md": "mdraid", "lvm": "lvm", "luks": "crypt",
                                         "btrfs": "btrfs"}
    # feature -> (the binary its module installs, its package): dracut's
    # modules all ship with dracut, but each is skipped without its tool.
    BINARIES: ClassVar[Provides] = {
        "md": (("sbin/mdadm", "usr/sbin/mdadm"), "mdadm"),
        "lvm": (("sbin/lvm", "usr/sbin/lvm"), "lvm2"),
        "luks": (("sbin/cryptsetup", "usr/sbin/cryptsetup"), "cryptsetup"),
        "btrfs": (("bin/btrfs", "usr/bin/btrfs", "sbin/btrfs"), "btrfs-progs"),
    }

    def require(self, root: Path, features: frozenset[str]) -> list[str]:
        _missing(self.name, root, features, self.BINARIES)
        if not features:
            return []
        # Asked for by name, a module that cannot be installed fails the
        # build instead of being left out quietly.
        mods = " ".join(self.MODULES[f] for f in sorted(features))
        return _write_conf(root, "etc/dracut.conf.d/50-sysclone.conf",
                           "# written by sysclone: what the layout needs to mount root\n"
                           f'add_dracutmodules+=" {mods} "\n')


class Mkinitcpio(InitrdTool):
    """Arch Linux's mkinitcpio: presets in /etc/mkinitcpio.d name each
    kernel's image; HOOKS in /etc/mkinitcpio.conf say what goes in."""

    name = "mkinitcpio"
    CONF = "etc/mkinitcpio.conf"
    # feature -> (its hook's install script, package); luks depends on
    # whether the initrd runs systemd (sd-encrypt) or busybox (encrypt).
    HOOKS: ClassVar[Provides] = {
        "md": (("usr/lib/initcpio/install/mdadm_udev",), "mdadm"),
        "lvm": (("usr/lib/initcpio/install/lvm2",), "lvm2"),
        "luks": (("usr/lib/initcpio/install/encrypt",), "cryptsetup"),
        "btrfs": (("usr/lib/initcpio/install/btrfs",), "btrfs-progs"),
    }

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "usr/bin/mkinitcpio") else NONE

    def preset(self, root: Path, kver: str) -> str | None:
        """The preset of a kernel: its package base (linux, linux-lts)."""
        for base in ("usr/lib/modules", "lib/modules"):
            p = root / base / kver / "pkgbase"
            if p.is_file():
                name = p.read_text().strip()
                if name and "/" not in name:
                    return name
        return None

    def initrd_path(self, root: Path, kver: str) -> Path | None:
        name = self.preset(root, kver)
        if name:
            preset = root / "etc/mkinitcpio.d" / f"{name}.preset"
            image = None
            if preset.is_file():
                image = shell_assignments(preset.read_text(errors="replace")).get(
                    "default_image")
            for cand in ([image] if image else []) + [f"/boot/initramfs-{name}.img"]:
                if (root / cand.lstrip("/")).is_file():
                    return root / cand.lstrip("/")
        return super().initrd_path(root, kver)

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        for k in kvers:
            name = self.preset(root, k)
            if name and (root / "etc/mkinitcpio.d" / f"{name}.preset").is_file():
                run(["mkinitcpio", "-p", name], target=root)
            else:
                run(["mkinitcpio", "-k", k, "-g", f"/boot/initramfs-{k}.img"], target=root)

    def hooks(self, root: Path) -> tuple[list[str], re.Match[str] | None, str]:
        conf = root / self.CONF
        text = conf.read_text(errors="replace") if conf.is_file() else ""
        # The last assignment wins, as when bash sources the file.
        m = next(reversed(list(re.finditer(r"^HOOKS=\((.*?)\)", text, re.M | re.S))), None)
        return (m.group(1).split() if m else []), m, text

    def require(self, root: Path, features: frozenset[str]) -> list[str]:
        hooks, m, text = self.hooks(root)
        systemd = "systemd" in hooks
        provides = dict(self.HOOKS)
        if systemd:
            provides["luks"] = (("usr/lib/initcpio/install/sd-encrypt",), "cryptsetup")
        _missing(self.name, root, features, provides)
        if not features:
            return []
        if m is None:
            raise InitrdError(f"/{self.CONF} has no HOOKS=(...) line: sysclone cannot add "
                              "the hooks the layout needs",
                              hint="restore the HOOKS line in the golden image")
        # Before `filesystems`, in the order the Arch wiki gives:
        # block, mdadm_udev, (sd-)encrypt, lvm2, filesystems.
        want = [h for f, h in (("md", "mdadm_udev"),
                               ("luks", "sd-encrypt" if systemd else "encrypt"),
                               ("lvm", "lvm2"), ("btrfs", "btrfs")) if f in features]
        new = [h for h in hooks if h not in want]
        if "block" not in new:
            new.insert(new.index("filesystems") if "filesystems" in new else len(new), "block")
        at = new.index("filesystems") if "filesystems" in new else len(new)
        new[at:at] = want
        if new == hooks:
            return []
        line = "HOOKS=(" + " ".join(new) + ")"
        return _write_conf(root, self.CONF, text[:m.start()] + line + text[m.end():])


class SuseMkinitrd(InitrdTool):
    name = "mkinitrd"

    def fits(self, root: Path) -> int:
        return MAINLINE if exists(root, "sbin/mkinitrd", "usr/sbin/mkinitrd") \
            and not exists(root, "usr/bin/dracut") else NONE

    def regenerate(self, root: Path, kvers: list[str]) -> None:
        run(["mkinitrd"], target=root)


TOOLS: tuple[InitrdTool, ...] = (InitramfsTools(), Dracut(), Mkinitcpio(), SuseMkinitrd())


# What the initrd tools read of what an install writes: sent to the image
# server when it builds the initrd (and nothing else: not the new SSH host
# keys, for one).
INITRD_INPUTS = ("etc/fstab", "etc/crypttab", "etc/mdadm/", "etc/mdadm.conf",
                 "etc/initramfs-tools/", "etc/dracut.conf", "etc/dracut.conf.d/",
                 "etc/mkinitcpio.conf", "etc/mkinitcpio.d/", "etc/modprobe.d/", "etc/modules",
                 "etc/modules-load.d/", "etc/lvm/", "etc/cryptsetup-initramfs/",
                 "etc/udev/rules.d/", "etc/vconsole.conf", "etc/default/keyboard",
                 "etc/default/console-setup")


def is_initrd_input(rel: str) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in INITRD_INPUTS)


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
