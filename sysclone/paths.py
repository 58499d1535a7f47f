"""Where sysclone keeps its state.

Everything lives under one root (default /var/lib/sysclone, or --root /
SYSCLONE_ROOT) so tests and demos never touch the real system.  Heavy
downloads go to a cache directory that defaults to ROOT/cache but can be
shared between roots with --cache / SYSCLONE_CACHE (CI and the test suite do).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import ConfigError

DEFAULT_ROOT = Path("/var/lib/sysclone")


@dataclass(frozen=True)
class StateRoot:
    root: Path
    cache_dir: Path

    @classmethod
    def from_options(cls, root: str | os.PathLike[str] | None = None,
                     cache: str | os.PathLike[str] | None = None) -> StateRoot:
        r = Path(root or os.environ.get("SYSCLONE_ROOT") or DEFAULT_ROOT).absolute()
        if r.exists() and not r.is_dir():
            # Every command would go on as if the state were empty.
            raise ConfigError(f"state root {r} (--root or SYSCLONE_ROOT) exists and is not "
                              "a directory")
        c = cache or os.environ.get("SYSCLONE_CACHE")
        return cls(root=r, cache_dir=Path(c).absolute() if c else r / "cache")

    @property
    def images(self) -> Path:
        """Image trees, one chroot-able directory per image."""
        return self.root / "images"

    @property
    def kernels(self) -> Path:
        """Unpacked kernel flavors: vmlinuz plus lib/modules/<version>."""
        return self.root / "kernels"

    @property
    def bootenvs(self) -> Path:
        return self.root / "bootenv"

    @property
    def scripts(self) -> Path:
        """Per-client install instructions: disk layouts, network configs,
        cluster.xml (SystemImager's /var/lib/systemimager/scripts)."""
        return self.root / "scripts"

    @property
    def overrides(self) -> Path:
        return self.root / "overrides"

    @property
    def pxe(self) -> Path:
        return self.root / "pxe"

    @property
    def run(self) -> Path:
        """Generated daemon configs, pid files and the server's address."""
        return self.root / "run"

    @property
    def initrds(self) -> Path:
        """Initrds the image server built for clients, cached by their inputs
        (image version, kernel, the files the install wrote)."""
        return self.root / "initrds"

    @property
    def logs(self) -> Path:
        """Install reports received from clients, one file per client."""
        return self.root / "log"

    @property
    def vms(self) -> Path:
        """Disks of the QEMU machines the demo installs."""
        return self.root / "vms"

    def cache(self, *parts: str) -> Path:
        return self.cache_dir.joinpath(*parts)
