"""Kernels taken from a system tree: an image in the store (SystemImager's
UYOK, "use your own kernel") or the running host.

The tree's own kernel, modules and firmware are used: the newest kernel by
Debian version order (6.1.0-10 after 6.1.0-9) unless a version is named,
and the firmware its modules declare that the tree's /lib/firmware has.
"""

from __future__ import annotations

import platform
import socket
from pathlib import Path

from imageserver.names import ImageRef
from imageserver.store import ImageStore
from kernels.assemble import assemble, kernel_versions
from kernels.tree import KernelTree, newest
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

FIRMWARE_DIRS = ("lib/firmware", "usr/lib/firmware")


def choose_version(root: Path, version: str | None, where: str) -> str:
    found = kernel_versions(root)
    if version is not None:
        if version not in found:
            raise ConfigError(f"{where} has no kernel {version}",
                              hint="its kernels: " + (", ".join(sorted(found)) or "none"))
        return version
    if not found:
        raise ConfigError(f"{where} has no kernel (boot/vmlinuz-<version> with "
                          "lib/modules/<version>)",
                          hint="install a kernel package in it")
    return newest(found)


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def add_from_image(state: StateRoot, image: str, name: str, version: str | None = None,
                   replace: bool = False) -> KernelTree:
    store = ImageStore(state)
    ref = ImageRef.parse(image)
    if not store.exists(ref.name):
        raise store.versions.unknown(ref.name)
    number, root = store.versions.resolve(ref)
    kver = choose_version(root, version, f"image {image}")
    label = f"{ref.name}@{number}" if number is not None else ref.name
    meta = KernelTree(path=root, kver=kver, arch=_arch(), origin="image", image=label)
    return assemble(state.kernels, name, root, kver, meta,
                    firmware=[(root, d) for d in FIRMWARE_DIRS], replace_existing=replace)


def add_from_host(state: StateRoot, name: str, version: str | None = None,
                  replace: bool = False, root: Path = Path("/")) -> KernelTree:
    kver = choose_version(root, version or platform.release(), "this host")
    meta = KernelTree(path=root, kver=kver, arch=_arch(), origin="host",
                      host=socket.gethostname())
    return assemble(state.kernels, name, root, kver, meta,
                    firmware=[(root, d) for d in FIRMWARE_DIRS], replace_existing=replace)
