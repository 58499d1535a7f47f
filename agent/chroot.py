"""Running commands inside the installed system.

Like curtin's ChrootableTarget: /dev, /dev/pts, /proc, /sys (and efivars
when booted by UEFI) are bind-mounted, /run and /tmp get fresh tmpfs so
nothing the tools leave there lands on the disk, and everything is unmounted
in reverse order even when a command fails.

Those mounts go straight to the kernel (mount(2), umount2(2)): twelve runs
of mount(8) and umount(8) cost 0.55 s under emulation, in the middle of an
install waiting on them, for what takes a call each.  The new system's own
filesystems are still mounted by mount(8), which reads their options.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

MS_BIND = 0x1000  # <sys/mount.h>
MNT_DETACH = 0x2


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def kernel_mount(source: str, target: Path, fstype: str | None = None, flags: int = 0,
                 data: str | None = None) -> None:
    """mount(2); raises with the kernel's reason."""
    log.debug("mount(%s, %s, %s, %#x, %s)", source, target, fstype, flags, data)
    rc = _libc().mount(source.encode(), os.fsencode(target),
                       fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                       data.encode() if data else None)
    if rc != 0:
        err = ctypes.get_errno()
        raise SyscloneError(f"mounting {source} on {target} failed: {os.strerror(err)}")


def kernel_umount(target: Path, lazy: bool = False) -> None:
    """umount2(2), detached when `lazy`; raises with the kernel's reason."""
    log.debug("umount2(%s, %s)", target, "MNT_DETACH" if lazy else 0)
    if _libc().umount2(os.fsencode(target), MNT_DETACH if lazy else 0) != 0:
        err = ctypes.get_errno()
        raise SyscloneError(f"unmounting {target} failed: {os.strerror(err)}")


def mount(source: str, target: Path, *, fstype: str | None = None,
          options: str | None = None, bind: bool = False) -> None:
    argv = ["mount"]
    if bind:
        argv.append("--bind")
    if fstype:
        argv += ["-t", fstype]
    if options:
        argv += ["-o", options]
    run([*argv, source, str(target)])


def umount(target: Path, lazy: bool = False) -> None:
    run(["umount", *(["-l"] if lazy else []), str(target)])


@contextmanager
def _held(target: Path, attach: Callable[[], None],
          detach: Callable[[bool], None]) -> Iterator[Path]:
    """`target` (made if missing) with what `attach` mounts there, for the
    block; `detach(lazy)` unmounts it after, lazily when that fails."""
    target.mkdir(parents=True, exist_ok=True)
    attach()
    try:
        yield target
    finally:
        try:
            detach(False)
        except Exception as e:
            log.warning("unmounting %s failed (%s): detaching it lazily", target, e)
            detach(True)


def mounted(source: str, target: Path, **kw: object) -> AbstractContextManager[Path]:
    """`source` mounted on `target` by mount(8) for the block."""
    return _held(target, lambda: mount(source, target, **kw),  # type: ignore[arg-type]
                 lambda lazy: umount(target, lazy))


def kernel_mounted(source: str, target: Path, fstype: str | None = None, flags: int = 0,
                   data: str | None = None) -> AbstractContextManager[Path]:
    """`mounted`, by kernel calls."""
    return _held(target, lambda: kernel_mount(source, target, fstype, flags, data),
                 lambda lazy: kernel_umount(target, lazy))


# What chrooted tools expect to find, as (source, path under the root,
# filesystem type, flags, data).
API_MOUNTS = (
    ("/dev", "dev", None, MS_BIND, None),
    ("/dev/pts", "dev/pts", None, MS_BIND, None),
    ("proc", "proc", "proc", 0, None),
    ("sysfs", "sys", "sysfs", 0, None),
    ("tmpfs", "run", "tmpfs", 0, "mode=0755"),
    ("tmpfs", "tmp", "tmpfs", 0, "mode=1777"),
)
EFIVARS = ("efivarfs", "sys/firmware/efi/efivars", "efivarfs", 0, None)


@contextmanager
def chroot_target(root: Path, efi: bool | None = None) -> Iterator[Path]:
    """Prepare `root` for chrooted commands; yields `root`."""
    if efi is None:
        efi = Path("/sys/firmware/efi/efivars").is_dir()
    with ExitStack() as stack:
        for src, rel, fstype, flags, data in (*API_MOUNTS, *((EFIVARS,) if efi else ())):
            stack.enter_context(kernel_mounted(src, root / rel, fstype, flags, data))
        yield root
