"""GRUB's partition lookups without udevadm, when the kernel gives the same answers.

GRUB's Linux host-disk code (in grub-probe, and so in the thirteen
grub-probe runs of one update-grub) finds where a partition starts by
running `udevadm info --query path` for each partition it looks at and
reading `start` from sysfs; when udevadm cannot run, it asks the kernel
(the HDIO_GETGEO ioctl) instead.  Under emulation each udevadm run costs
about 0.2 s -- systemd's shared library is relocated every time -- and one
update-grub ran it 130 times: 26 s against 13 s without it, for a grub.cfg
identical byte for byte (measured in the benchmark VM, TCG, 2 vCPUs).

So while update-grub runs, the agent hides the image's udevadm -- an empty,
non-executable file bind-mounted over it, unmounted after; nothing is
written to the image -- but only when, for every partition on the machine,
HDIO_GETGEO's start equals sysfs's (GRUB's fallback then finds exactly the
partitions udevadm would have named) and os-prober, which may want udevadm,
is not enabled.  Never while an initrd is being built: initramfs-tools and
dracut copy udevadm into it.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import struct
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sysclone.run import DEFAULT_PATH, run

log = logging.getLogger(__name__)

SYS = Path("/sys")
DEV = Path("/dev")
HDIO_GETGEO = 0x0301
# struct hd_geometry: heads, sectors (u8), cylinders (u16), start (unsigned long)
_GEOMETRY = struct.Struct("@BBHL")
MASK_NAME = "sysclone-no-udevadm"


def geometry_start(dev: Path) -> int:
    """A partition's first sector as the kernel tells GRUB without udev."""
    fd = os.open(dev, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        buf = fcntl.ioctl(fd, HDIO_GETGEO, bytes(_GEOMETRY.size))
    finally:
        os.close(fd)
    return int(_GEOMETRY.unpack(buf)[3])


def partitions_disagree(sys_root: Path = SYS, dev_root: Path = DEV,
                        start_of: Callable[[Path], int] = geometry_start) -> str | None:
    """Why GRUB's fallback could find another partition than udevadm would
    (a driver without HDIO_GETGEO, such as loop; a start that differs), or
    None when every partition agrees."""
    try:
        names = sorted(p.name for p in (sys_root / "class/block").iterdir()
                       if (p / "partition").is_file())
    except OSError as e:
        return f"{sys_root}/class/block cannot be read ({e.strerror})"
    for name in names:
        try:
            sysfs = int((sys_root / "class/block" / name / "start").read_text())
        except (OSError, ValueError):
            return f"{name} has no readable start in sysfs"
        try:
            ioctl = start_of(dev_root / name)
        except OSError as e:
            what = "no HDIO_GETGEO" if e.errno in (errno.ENOTTY, errno.EINVAL) else e.strerror
            return f"{name}: {what}"
        if ioctl != sysfs:
            return f"{name} starts at {sysfs} by sysfs but at {ioctl} by HDIO_GETGEO"
    return None


def os_prober_enabled(root: Path) -> bool:
    """Whether update-grub would run os-prober (Debian 12 and later turn it
    off unless GRUB_DISABLE_OS_PROBER=false)."""
    if not any((root / d / "os-prober").exists() for d in ("usr/bin", "bin")):
        return False
    texts = []
    for p in [root / "etc/default/grub", *sorted((root / "etc/default/grub.d").glob("*.cfg"))]:
        try:
            texts.append(p.read_text(errors="replace"))
        except OSError:
            continue
    value = None
    for text in texts:  # the last setting wins, as when grub-mkconfig sources them
        for m in re.finditer(r"^\s*GRUB_DISABLE_OS_PROBER=[\"']?(\w+)", text, re.M):
            value = m.group(1)
    return value == "false"


def in_image(root: Path, rel: str) -> Path | None:
    """`rel` with every symlink followed as the image sees it (absolute
    targets inside `root`); None when it does not exist there."""
    parts = [p for p in rel.split("/") if p]
    cur, hops = root, 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            cur = cur.parent if cur != root else root
            continue
        nxt = cur / part
        if nxt.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(nxt)
            parts = [p for p in target.split("/") if p and p != "."] + parts
            cur = root if target.startswith("/") else cur
            continue
        cur = nxt
    return cur if cur.exists() else None


def udevadm_copies(root: Path) -> list[Path]:
    """Every distinct udevadm GRUB's PATH search could reach in the image."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for d in DEFAULT_PATH.split(":"):
        p = in_image(root, f"{d}/udevadm")
        if p is None or not p.is_file():
            continue
        st = p.stat()
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            found.append(p)
    return found


@contextmanager
def without_udevadm(root: Path, say: Callable[[str], None] = log.info,
                    sys_root: Path = SYS, dev_root: Path = DEV,
                    start_of: Callable[[Path], int] = geometry_start) -> Iterator[bool]:
    """Hide the image's udevadm from GRUB while the block runs, when that
    is safe; yields whether it did."""
    copies = udevadm_copies(root)
    why_not = None if copies else "the image has no udevadm"
    if why_not is None and os_prober_enabled(root):
        why_not = "os-prober is enabled"
    if why_not is None:
        disagree = partitions_disagree(sys_root, dev_root, start_of)
        if disagree:
            why_not = f"the kernel's partition starts cannot stand in for udev's: {disagree}"
    if why_not is not None:
        log.info("GRUB keeps udevadm: %s", why_not)
        yield False
        return
    mask = root / "run" / MASK_NAME  # the chroot's /run is a tmpfs of its own
    mask.write_bytes(b"")
    mask.chmod(0o644)
    with ExitStack() as stack:
        stack.callback(mask.unlink, missing_ok=True)
        for p in copies:
            run(["mount", "--bind", str(mask), str(p)])
            stack.callback(run, ["umount", str(p)])
        say("GRUB reads partition starts from the kernel (HDIO_GETGEO matches sysfs for every "
            "partition), not from one udevadm run per partition")
        yield True
