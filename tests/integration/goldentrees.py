"""Small real golden trees for the configure tests: Debian bookworm
debootstrapped with the packages of each footprint, exactly as
`sysclone image bootstrap NAME --include ...` makes them (the same code,
the same cache entry under $SYSCLONE_CACHE/debootstrap, keyed by every
input), so a tree a test made is the image an admin would get, and the
second run only unpacks it.

Each test works on an overlay of a tree unpacked once per session: what it
writes never reaches the next test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imageserver.bootstrap import BootstrapSpec, golden_tree, package_set
from kernels.aptsources import find_debian_mirror
from sysclone.paths import StateRoot

# The --include lists of the golden-image variants (and of the trees the
# initrd tests need): `sysclone image bootstrap NAME --include a --include b`.
VARIANTS: dict[str, tuple[str, ...]] = {
    # initramfs-tools with what RAID, LVM, LUKS and btrfs roots need in the initrd
    "initramfs-tools": ("mdadm", "lvm2", "cryptsetup-initramfs", "btrfs-progs"),
    # dracut (replacing initramfs-tools) and systemd-networkd (replacing ifupdown)
    "dracut-networkd": ("dracut", "systemd-networkd", "systemd-resolved", "mdadm", "lvm2",
                        "cryptsetup", "btrfs-progs"),
    "network-manager": ("network-manager",),
    "netplan": ("netplan.io", "systemd-resolved"),
}


def spec(variant: str) -> BootstrapSpec:
    return BootstrapSpec(mirror=find_debian_mirror().uri, packages=package_set(VARIANTS[variant]))


class Trees:
    """The variants' trees, unpacked on first use, once per session."""

    def __init__(self, base: Path, state: StateRoot) -> None:
        self.base = base
        self.state = state
        self.made: dict[str, Path] = {}

    def get(self, variant: str) -> Path:
        if variant not in self.made:
            tree = self.base / variant
            tree.mkdir()
            golden_tree(self.state, spec(variant), tree)
            self.made[variant] = tree
        return self.made[variant]


@pytest.fixture(scope="session")
def trees(tmp_path_factory: pytest.TempPathFactory) -> Trees:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, overlay mounts, chroot)")
    base = tmp_path_factory.mktemp("golden-trees")
    cache = os.environ.get("SYSCLONE_CACHE") or "/var/cache/sysclone"
    return Trees(base, StateRoot.from_options(base / "state", cache))


@contextmanager
def overlay(lower: Path, work: Path) -> Iterator[Path]:
    """A writable view of `lower`; the writes land in `work`."""
    upper, wdir, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, wdir, merged):
        d.mkdir(parents=True)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={wdir}", str(merged)],
                   check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", "-R", str(merged)], check=False)


def chroot(root: Path, *argv: str, check: bool = True,
           timeout: float = 600) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["chroot", str(root), *argv], capture_output=True, text=True,
                       timeout=timeout, env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
                                             "LANG": "C.UTF-8"})
    if check and r.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n"
                             f"{r.stderr}")
    return r
