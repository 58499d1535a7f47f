"""Running commands inside the installed system.

Like curtin's ChrootableTarget: /dev, /dev/pts, /proc, /sys (and efivars
when booted by UEFI) are bind-mounted, /run and /tmp get fresh tmpfs so
nothing the tools leave there lands on the disk, and everything is unmounted
in reverse order even when a command fails.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from sysclone.run import run

log = logging.getLogger(__name__)


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
def mounted(source: str, target: Path, **kw: object) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    mount(source, target, **kw)  # type: ignore[arg-type]
    try:
        yield target
    finally:
        try:
            umount(target)
        except Exception:
            log.warning("umount %s failed, detaching it lazily", target)
            umount(target, lazy=True)


@contextmanager
def chroot_target(root: Path, efi: bool | None = None) -> Iterator[Path]:
    """Prepare `root` for chrooted commands; yields `root`."""
    if efi is None:
        efi = Path("/sys/firmware/efi/efivars").is_dir()
    with ExitStack() as stack:
        for src, rel, kw in (
            ("/dev", "dev", {"bind": True}),
            ("/dev/pts", "dev/pts", {"bind": True}),
            ("proc", "proc", {"fstype": "proc"}),
            ("sysfs", "sys", {"fstype": "sysfs"}),
            ("tmpfs", "run", {"fstype": "tmpfs", "options": "mode=0755"}),
            ("tmpfs", "tmp", {"fstype": "tmpfs", "options": "mode=1777"}),
        ):
            stack.enter_context(mounted(src, root / rel, **kw))
        if efi:
            stack.enter_context(mounted("efivarfs", root / "sys/firmware/efi/efivars",
                                        fstype="efivarfs"))
        yield root
