"""Debian's own initramfs-tools image for a given Debian kernel package, as
the baseline of the size benchmark.

Built like for like: a minbase debootstrap of the same suite with exactly
that kernel image package, zstd (Debian's default compression) and the same
firmware packages the kernel tree took its firmware from, so that
update-initramfs (MODULES=most, Debian's default) finds the same firmware
to copy for the modules it includes.  Cached by its inputs in
cache/debian-initrd/<key>.img; the chroot is thrown away.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from pathlib import Path

from kernels.tree import KernelTree
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.run import run


def cache_key(tree: KernelTree) -> str:
    assert tree.package and tree.source
    text = (f"{tree.package.name} {tree.package.sha256} {' '.join(tree.firmware_packages)} "
            f"{tree.source.suite} {tree.source.mirror} MODULES=most zstd")
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def debian_initrd(state: StateRoot, tree: KernelTree) -> Path:
    """Debian's initrd.img-<kver> for the kernel tree `tree` (a Debian one)."""
    if tree.package is None or tree.source is None or tree.origin != "debian":
        raise ConfigError(f"kernel {tree.name} is not a Debian package: no Debian initrd to "
                          "build for it")
    out = state.cache("debian-initrd", f"{cache_key(tree)}.img")
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    packages = [tree.package.name, "initramfs-tools", "zstd",
                *(p.split()[0] for p in tree.firmware_packages)]
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=".build-"))
    try:
        root = work / "root"
        run(["debootstrap", "--variant=minbase", "--components=main,non-free-firmware",
             f"--include={','.join(packages)}", tree.source.suite, root, tree.source.mirror],
            timeout=3600)
        img = root / "boot" / f"initrd.img-{tree.kver}"
        if not img.is_file():
            raise ConfigError(f"debootstrap with {tree.package.name} made no {img.name}")
        shutil.copyfile(img, out.with_suffix(".tmp"))
        out.with_suffix(".tmp").replace(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
