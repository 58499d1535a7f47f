"""Fetching a standard Debian kernel flavor (cloud-amd64, amd64, rt-amd64...).

`linux-image-<flavor>` is resolved on the host's Debian mirror to the image
package it currently stands for; that .deb is downloaded (verified, cached by
sha256), unpacked with dpkg-deb, trimmed to what a boot environment needs and
indexed with depmod, then renamed into state.kernels/<flavor>-<kver> in one
step, so a tree that exists is always complete.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kernels import aptsources
from kernels.archive import ArchiveError, DebianArchive, Package, resolve_metapackage
from kernels.fetch import Fetch, Progress, http_fetch
from kernels.tree import KernelPackage, KernelSource, KernelTree, list_kernels, load
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.run import run

log = logging.getLogger(__name__)

_FLAVOR_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
_ARCH_RE = re.compile(r"^[a-z0-9][a-z0-9-]*$")
# Where debian-archive-keyring puts the archive keys (.pgp since trixie);
# used only when the mirror is given explicitly and apt's sources say nothing.
DEBIAN_KEYRINGS = (
    Path("/usr/share/keyrings/debian-archive-keyring.pgp"),
    Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
)
# depmod's outputs that prove the tree is indexed.
_DEPMOD_FILES = ("modules.dep", "modules.alias")


@dataclass(frozen=True)
class ResolvedKernel:
    """What `linux-image-<flavor>` stands for on a mirror right now."""

    flavor: str
    arch: str
    metapackage: str
    package: Package
    mirror: str
    suite: str
    codename: str


def _archive(
    state: StateRoot, suite: str | None, mirror: str | None, arch: str,
    apt_root: Path, fetch: Fetch,
) -> DebianArchive:
    try:
        found: aptsources.DebianMirror | None = aptsources.find_debian_mirror(apt_root, arch=arch)
    except ConfigError:
        if not (mirror and suite):
            raise
        found = None  # both given: the host's sources are only a keyring hint
    if found is not None and (mirror is None or mirror.rstrip("/") == found.uri):
        keyrings, inline, fingerprints = found.keyrings, found.inline_keys, found.fingerprints
    else:
        # Another mirror than the host's: it serves Debian, so Debian's keys.
        keyrings = tuple(p for p in DEBIAN_KEYRINGS if p.is_file())[:1] or DEBIAN_KEYRINGS[-1:]
        inline, fingerprints = (), ()
    uri = mirror or (found.uri if found else "")
    release = suite or (found.suite if found else "")
    log.debug("Debian archive: %s %s (keyrings %s)", uri, release,
              ", ".join(map(str, keyrings)))
    return DebianArchive(uri, release, keyrings=keyrings, inline_keys=inline,
                         fingerprints=fingerprints, cache_dir=state.cache_dir, fetch=fetch)


def _check_names(flavor: str, arch: str) -> None:
    if not _FLAVOR_RE.match(flavor):
        raise ConfigError(f"flavor {flavor!r}: expected a Debian kernel flavor such as "
                          "cloud-amd64, amd64 or arm64")
    if not _ARCH_RE.match(arch):
        raise ConfigError(f"arch {arch!r}: expected a Debian architecture such as amd64")


def resolve_standard(
    state: StateRoot,
    flavor: str = "cloud-amd64",
    suite: str | None = None,
    mirror: str | None = None,
    arch: str = "amd64",
    *,
    apt_root: Path = aptsources.DEFAULT_APT_ROOT,
    fetch: Fetch = http_fetch,
) -> ResolvedKernel:
    """Find the image package `linux-image-<flavor>` currently points to,
    without downloading it.  Mirror and suite default to the host's Debian
    archive in its apt sources."""
    _check_names(flavor, arch)
    archive = _archive(state, suite, mirror, arch, apt_root, fetch)
    return _resolve(archive, flavor, arch)


def _resolve(archive: DebianArchive, flavor: str, arch: str) -> ResolvedKernel:
    metapackage = f"linux-image-{flavor}"
    package = resolve_metapackage(archive.packages("main", arch), metapackage)
    release = archive.release()
    log.info("%s is %s", metapackage, package)
    return ResolvedKernel(flavor, arch, metapackage, package, archive.mirror,
                          archive.suite, release.codename)


def _existing(state: StateRoot, flavor: str, sha256: str) -> KernelTree | None:
    for tree in list_kernels(state.kernels):
        if tree.flavor == flavor and tree.package.sha256 == sha256 and _complete(tree.path,
                                                                                 tree.kver):
            return tree
    return None


def _complete(path: Path, kver: str) -> bool:
    modules = path / "lib" / "modules" / kver
    return (path / "vmlinuz").is_file() and all((modules / f).is_file() for f in _DEPMOD_FILES)


def _kernel_version(unpacked: Path, package: Package) -> str:
    """The one kernel version the package ships modules and a vmlinuz for.
    Debian moved modules from /lib/modules to /usr/lib/modules (trixie and
    later); both are looked at."""
    versions = {
        d.name
        for base in ("lib/modules", "usr/lib/modules")
        if (unpacked / base).is_dir()
        for d in (unpacked / base).iterdir()
        if d.is_dir() and (unpacked / "boot" / f"vmlinuz-{d.name}").is_file()
    }
    if len(versions) != 1:
        found = ", ".join(sorted(versions)) or "none"
        raise ArchiveError(f"{package}: expected one kernel (boot/vmlinuz-<version> with "
                           f"lib/modules/<version>), found {found}",
                           hint="is this a kernel image package rather than a metapackage?")
    return versions.pop()


def _placeholder(path: Path) -> bool:
    # Debian's images ship a one-line System.map pointing at the -dbg
    # package; a consumer finding it would take it for the real symbol map.
    with path.open("rb") as f:
        return b"The real System.map is in" in f.read(256)


def _assemble(unpacked: Path, tree: Path, kver: str) -> None:
    """Move the parts a boot environment needs from the unpacked package
    into the tree; the rest (docs, lintian overrides, hooks) is dropped."""
    boot = unpacked / "boot"
    (boot / f"vmlinuz-{kver}").rename(tree / "vmlinuz")
    for name, target in ((f"config-{kver}", "config"), (f"System.map-{kver}", "System.map")):
        if (boot / name).is_file() and not _placeholder(boot / name):
            (boot / name).rename(tree / target)
    modules = next(p for p in (unpacked / "lib" / "modules" / kver,
                               unpacked / "usr" / "lib" / "modules" / kver) if p.is_dir())
    (tree / "lib" / "modules").mkdir(parents=True)
    modules.rename(tree / "lib" / "modules" / kver)


def _install(tmp: Path, final: Path, sha256: str) -> Path:
    """Rename the finished tree into place.  A tree already there for the
    same package (a concurrent fetch won) is kept; one for another build of
    the same kernel version is replaced."""
    old = None
    if final.exists():
        try:
            there = load(final)
            if there.package.sha256 == sha256 and _complete(final, there.kver):
                log.info("%s appeared meanwhile; keeping it", final)
                return final
        except ConfigError:
            pass
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
        log.info("replacing %s (another build of the same kernel version)", final)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def fetch_standard(
    state: StateRoot,
    flavor: str = "cloud-amd64",
    suite: str | None = None,
    mirror: str | None = None,
    arch: str = "amd64",
    progress: Progress | None = None,
    *,
    apt_root: Path = aptsources.DEFAULT_APT_ROOT,
    fetch: Fetch = http_fetch,
) -> KernelTree:
    """Fetch Debian's `linux-image-<flavor>` into state.kernels and return it.

    Mirror and suite default to the host's Debian archive from its apt
    sources (under `apt_root`).  If the package it resolves to (by sha256) is
    already unpacked, that tree is returned without downloading anything.
    `progress(done_bytes, total_bytes)` follows the .deb download.
    """
    _check_names(flavor, arch)
    started = time.monotonic()
    archive = _archive(state, suite, mirror, arch, apt_root, fetch)
    resolved = _resolve(archive, flavor, arch)
    package = resolved.package
    existing = _existing(state, flavor, package.sha256)
    if existing is not None:
        log.info("%s is already unpacked in %s", package, existing.path)
        return existing

    deb = archive.download(package, progress)
    state.kernels.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=state.kernels, prefix=f".fetch-{flavor}-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stick to the final tree
        unpacked = tmp / ".deb"
        run(["dpkg-deb", "-x", deb, unpacked])
        kver = _kernel_version(unpacked, package)
        _assemble(unpacked, tmp, kver)
        shutil.rmtree(unpacked)
        run(["depmod", "-b", tmp, kver])
        missing = [f for f in _DEPMOD_FILES if not (tmp / "lib/modules" / kver / f).is_file()]
        if missing:
            raise ArchiveError(f"depmod did not write {', '.join(missing)} for {kver} "
                               f"under {tmp}/lib/modules",
                               hint="the host's depmod may expect /usr/lib/modules")
        KernelTree(
            path=tmp,
            flavor=flavor,
            kver=kver,
            arch=arch,
            package=KernelPackage(package.name, package.version, package.sha256,
                                  package.filename, resolved.metapackage),
            source=KernelSource(resolved.mirror, resolved.suite, resolved.codename),
        ).write()
        final = _install(tmp, state.kernels / f"{flavor}-{kver}", package.sha256)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("%s unpacked in %s (%.1fs)", package, final, time.monotonic() - started)
    return load(final)
