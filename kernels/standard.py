"""Debian's kernels: a standard flavor (amd64, cloud-amd64, rt-amd64...) or
one image package, with Debian's firmware for the drivers that need it.

`linux-image-<flavor>` is resolved (through apt: kernels.apt) to the image
package it currently stands for; that .deb and the firmware packages are
downloaded (verified by apt, cached by sha256), unpacked with dpkg-deb and
assembled into a kernel tree (kernels.assemble) that carries the firmware
its modules declare.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kernels import aptsources
from kernels.apt import Archive, ArchiveError, Package, check_name, file_sha256
from kernels.assemble import assemble, kernel_versions
from kernels.tree import KernelPackage, KernelSource, KernelTree, list_kernels
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.run import run

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as progress(done_bytes, total_bytes)."""

DEFAULT_FLAVOR = "amd64"

# Debian's firmware packages (non-free-firmware) that hold what the standard
# flavor's NIC and storage drivers declare: bnx2 and bnx2x (Broadcom
# NetXtreme II), misc-nonfree (tg3's tigon, ice's DDP package, e100,
# cxgb4...), qlogic (qed/qede), realtek (r8169's rtl_nic), netxen (qlcnic's
# phanfw).  Only the files the chosen modules declare go into a boot
# environment; netronome (nfp, tens of MB) is left out: the manifest lists
# what its nfp module lacks.
FIRMWARE_PACKAGES = ("firmware-bnx2", "firmware-bnx2x", "firmware-misc-nonfree",
                     "firmware-qlogic", "firmware-realtek", "firmware-netxen")


@dataclass(frozen=True)
class ResolvedKernel:
    """What `linux-image-<flavor>` stands for on a mirror right now."""

    flavor: str
    metapackage: str
    package: Package
    archive: Archive


def debian_archive(state: StateRoot, suite: str | None = None, mirror: str | None = None,
                   arch: str = "amd64") -> Archive:
    """The host's Debian archive (its apt sources) unless mirror and suite
    are given."""
    if not (mirror and suite):
        found = aptsources.find_debian_mirror(arch=arch)
        mirror, suite = mirror or found.uri, suite or found.suite
    return Archive(mirror, suite, arch, state.cache_dir)


def image_package(archive: Archive, name: str) -> Package:
    """Follow a metapackage's Depends to the linux-image-* it stands for
    (linux-image-amd64 -> linux-image-6.1.0-50-amd64); an image package
    depends on no other linux-image-*, which is how we know we arrived."""
    package = archive.show(name)
    seen = {name}
    while True:
        step = None
        for group in package.depends_on():
            wanted = [n for n in group if n.startswith("linux-image-") and n not in seen]
            if wanted:
                step = wanted[0]
                break
        if step is None:
            return package
        log.debug("%s -> %s", package, step)
        seen.add(step)
        package = archive.show(step)


def resolve_flavor(archive: Archive, flavor: str) -> ResolvedKernel:
    check_name(flavor, "flavor")
    meta = f"linux-image-{flavor}"
    try:
        package = image_package(archive, meta)
    except ArchiveError as e:
        raise ArchiveError(e.message, hint="check the flavor name (e.g. amd64, cloud-amd64, "
                                           "rt-amd64)") from None
    log.info("%s is %s", meta, package)
    return ResolvedKernel(flavor, meta, package, archive)


def _existing(state: StateRoot, sha256: str, firmware: tuple[str, ...]) -> KernelTree | None:
    """A tree of the same package with the same firmware packages."""
    for tree in list_kernels(state.kernels):
        if tree.package and tree.package.sha256 == sha256 and tree.origin == "debian" \
                and tuple(p.split()[0] for p in tree.firmware_packages) == firmware \
                and (tree.modules_dir / "modules.dep").is_file():
            return tree
    return None


def _unpack(deb: Path, dest: Path) -> None:
    run(["dpkg-deb", "-x", deb, dest])


def add_debian(state: StateRoot, archive: Archive, package: Package, *, name: str | None,
               flavor: str = "", metapackage: str = "", firmware: bool = True,
               progress: Progress | None = None, replace: bool = False,
               deb: Path | None = None) -> KernelTree:
    """A Debian kernel image package (with Debian's firmware) as a tree;
    `deb` is its file when it did not come from the archive."""
    started = time.monotonic()
    if name is None:
        existing = _existing(state, package.sha256, FIRMWARE_PACKAGES if firmware else ())
        if existing is not None:
            log.info("%s is already unpacked in %s", package, existing.path)
            return existing
    if progress:
        progress(0, package.size)
    file = deb or archive.download(package)
    if progress:
        progress(package.size, package.size)
    fw = [archive.show(p) for p in FIRMWARE_PACKAGES] if firmware else []
    fw_debs = [archive.download(p) for p in fw]
    fw_names = [f"{p.name} {p.version}" for p in fw]
    state.kernels.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=state.kernels, prefix=".unpack-"))
    try:
        _unpack(file, scratch / "kernel")
        kvers = kernel_versions(scratch / "kernel")
        if len(kvers) != 1:
            raise ArchiveError(f"{package}: expected one kernel (boot/vmlinuz-<version> with "
                               f"lib/modules/<version>), found {', '.join(kvers) or 'none'}",
                               hint="is this a kernel image package rather than a "
                                    "metapackage?")
        for d in fw_debs:
            _unpack(d, scratch / "firmware")
        meta = KernelTree(
            path=scratch, kver=kvers[0], arch=archive.arch,
            origin="deb" if deb else "debian", flavor=flavor,
            package=KernelPackage(package.name, package.version, package.sha256,
                                  package.filename, metapackage),
            source=KernelSource(archive.mirror, archive.suite, archive.codename()),
            firmware_packages=tuple(fw_names))
        roots = [(scratch / "firmware", "lib/firmware"), (scratch / "firmware", "usr/lib/firmware")]
        tree = assemble(state.kernels, name or f"{flavor or 'debian'}-{kvers[0]}",
                        scratch / "kernel", kvers[0], meta, firmware=roots, move=True,
                        replace_existing=replace or name is None)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("%s in %s (%.1fs)", package, tree.path, time.monotonic() - started)
    return tree


def fetch_standard(state: StateRoot, flavor: str = DEFAULT_FLAVOR, suite: str | None = None,
                   mirror: str | None = None, arch: str = "amd64",
                   progress: Progress | None = None, *, name: str | None = None,
                   firmware: bool = True, replace: bool = False) -> KernelTree:
    """Debian's `linux-image-<flavor>` as a kernel tree.  Without a name,
    one already unpacked from the same package (by sha256) is returned as
    it is; the tree is named <flavor>-<kver>."""
    archive = debian_archive(state, suite, mirror, arch)
    resolved = resolve_flavor(archive, flavor)
    return add_debian(state, archive, resolved.package, name=name, flavor=flavor,
                      metapackage=resolved.metapackage, firmware=firmware,
                      progress=progress, replace=replace)


def add_package(state: StateRoot, package: str, name: str, *, suite: str | None = None,
                mirror: str | None = None, arch: str = "amd64", firmware: bool = True,
                replace: bool = False) -> KernelTree:
    """A kernel image package: a .deb file, or a package name for apt."""
    archive = debian_archive(state, suite, mirror, arch)
    deb = Path(package)
    if package.endswith(".deb"):
        if not deb.is_file():
            raise ConfigError(f"--package {package}: no such file")
        return add_debian(state, archive, _deb_info(deb), name=name, firmware=firmware,
                          replace=replace, deb=deb)
    return add_debian(state, archive, image_package(archive, package), name=name,
                      firmware=firmware, replace=replace)


def _deb_info(deb: Path) -> Package:
    fields = run(["dpkg-deb", "--showformat", "${Package}\\n${Version}\\n${Architecture}\\n",
                  "--show", deb]).stdout.splitlines()
    if len(fields) < 3 or not fields[0].startswith("linux-image-"):
        raise ConfigError(f"{deb}: not a kernel image package (linux-image-*)")
    return Package(fields[0], fields[1], fields[2], deb.name, file_sha256(deb),
                   deb.stat().st_size)

