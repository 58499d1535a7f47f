"""Boot environment sizes and build times, each next to Debian's own
initramfs-tools image (MODULES=most) for the same kernel:

    standard     Debian's generic kernel, the standard driver set, Debian's
                 firmware for it   vs  Debian's initrd built with the same
                 firmware packages (bench.debianinitrd)
    UYOK-all     the golden image's own kernel, every module
    UYOK-loaded  the same kernel, the modules the golden client had loaded
                 vs  the image's own /boot/initrd.img-<kver> (no firmware
                 on either side: the image has no firmware package)

The loaded listing is the image version's recorded /proc/modules when it
was captured from a running client; a bootstrapped image has none, and
golden-vm.modules stands in: the real /proc/modules of a golden VM of that
image (its cloud kernel, virtio disk and NIC), from a capture.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysclone.paths import StateRoot
from sysclone.ui import Ui

LISTING = Path(__file__).with_name("golden-vm.modules")


@dataclass(frozen=True)
class Built:
    name: str
    path: Path
    seconds: float
    manifest: dict[str, Any]

    @property
    def initrd(self) -> int:
        return int(self.manifest["initrd"]["size"])

    @property
    def driver_bytes(self) -> int:
        """Module and firmware bytes as the boot environment holds them."""
        c = self.manifest["contents"]
        return int(c["modules"]) + int(c.get("firmware", 0))

    @property
    def total(self) -> int:
        return int(self.manifest["contents"]["total"])


def _build(state: StateRoot, ui: Ui, name: str, **kw: Any) -> Built:
    import json

    from bootenv.standard import build_bootenv

    out = state.bootenvs / f"bench-{name}"
    t0 = time.monotonic()
    # From scratch, the agent frozen anew, as bench_build times the standard one.
    r = build_bootenv(state, ui, output=out, use_cache=False, **kw)
    return Built(name, out, time.monotonic() - t0, json.loads(r.manifest.read_text()))


def image_kernel(state: StateRoot, image: str) -> tuple[str, Path | None]:
    """The image's own kernel as `bench-uyok-<image>-<version>`, and the
    recorded module listing of that version (None: not a capture)."""
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore
    from kernels import fromtree
    from kernels.tree import list_kernels

    store = ImageStore(state)
    ref = ImageRef.parse(image)
    number, _tree = store.versions.resolve(ref)
    name = f"bench-uyok-{ref.name}-{number or 0}"
    if not any(k.name == name for k in list_kernels(state.kernels)):
        fromtree.add_from_image(state, image, name, replace=True)
    listing = store.versions.version_dir(ref.name, number) / "modules" if number else None
    return name, listing if listing and listing.is_file() else None


def run(state: StateRoot, ui: Ui, image: str, standard: Built | None = None
        ) -> dict[str, Any]:
    from bench.debianinitrd import debian_initrd
    from imageserver.store import ImageStore
    from kernels.tree import find

    standard = standard or _build(state, ui, "standard")
    std_kernel = find(state.kernels, standard.manifest["kernel"]["name"])
    t0 = time.monotonic()
    debian_std = debian_initrd(state, std_kernel)
    debian_std_s = time.monotonic() - t0
    kname, listing = image_kernel(state, image)
    uyok_all = _build(state, ui, "uyok-all", kernel=kname, modules_arg="all")
    uyok_loaded = _build(state, ui, "uyok-loaded", kernel=kname,
                         modules_arg="loaded" if listing else None,
                         modules_from=None if listing else LISTING)
    kver = uyok_all.manifest["kernel"]["version"]
    debian_uyok = ImageStore(state).path(image) / "boot" / f"initrd.img-{kver}"
    return {
        "standard": standard, "uyok_all": uyok_all, "uyok_loaded": uyok_loaded,
        "debian_standard": debian_std.stat().st_size, "debian_standard_seconds": debian_std_s,
        "debian_uyok": debian_uyok.stat().st_size if debian_uyok.is_file() else None,
        "listing": str(listing or LISTING),
    }
