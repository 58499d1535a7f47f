"""An unpacked kernel: what the boot environment builder consumes.

Layout of a tree (state.kernels/<flavor>-<kver>/):

    kernel.json                 what it is and where it came from
    vmlinuz                     boot/vmlinuz-<kver> of the package
    config, System.map          boot/config-<kver>, boot/System.map-<kver> if shipped
                                (Debian ships only a placeholder System.map: left out)
    lib/modules/<kver>/         modules, modules.order, modules.builtin*, and
                                depmod's modules.dep/modules.alias/*.bin

Paths in kernel.json are relative, so a tree can be moved or copied whole.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

KERNEL_JSON = "kernel.json"
FORMAT = 1


@dataclass(frozen=True)
class KernelSource:
    """Where the package came from."""

    mirror: str  # e.g. http://deb.debian.org/debian
    suite: str  # as asked for, e.g. bookworm or stable
    codename: str = ""  # from the InRelease, e.g. bookworm


@dataclass(frozen=True)
class KernelPackage:
    name: str  # the concrete image, e.g. linux-image-6.1.0-50-cloud-amd64
    version: str  # e.g. 6.1.176-1
    sha256: str  # of the .deb
    filename: str = ""  # in the archive, e.g. pool/main/l/linux-signed-amd64/...deb
    metapackage: str = ""  # what was asked for, e.g. linux-image-cloud-amd64


@dataclass(frozen=True)
class KernelTree:
    path: Path
    flavor: str  # e.g. cloud-amd64
    kver: str  # `uname -r` of the kernel, e.g. 6.1.0-50-cloud-amd64
    arch: str  # Debian architecture, e.g. amd64
    package: KernelPackage
    source: KernelSource

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def modules_dir(self) -> Path:
        return self.path / "lib" / "modules" / self.kver

    @property
    def config(self) -> Path | None:
        """The kernel's build configuration, if the package shipped it."""
        p = self.path / "config"
        return p if p.is_file() else None

    @property
    def system_map(self) -> Path | None:
        p = self.path / "System.map"
        return p if p.is_file() else None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "flavor": self.flavor,
            "kver": self.kver,
            "arch": self.arch,
            "vmlinuz": "vmlinuz",
            "modules_dir": f"lib/modules/{self.kver}",
            "package": asdict(self.package),
            "source": asdict(self.source),
        }

    def write(self) -> None:
        """Write kernel.json (atomically) into the tree."""
        target = self.path / KERNEL_JSON
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
        tmp.replace(target)


def _field(data: dict[str, Any], key: str, where: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string for {key!r}")
    return value


def load(path: Path) -> KernelTree:
    """Read the KernelTree at `path` (a tree directory, or its kernel.json)."""
    path = Path(path)
    file = path if path.name == KERNEL_JSON else path / KERNEL_JSON
    tree = file.parent
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{tree}: not a kernel tree (no {KERNEL_JSON})",
                          hint="fetch one with 'sysclone kernel fetch'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it: {e}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{file}: expected a kernel.json of format {FORMAT}")
    package = data.get("package")
    source = data.get("source")
    if not isinstance(package, dict) or not isinstance(source, dict):
        raise ConfigError(f"{file}: expected 'package' and 'source' objects")
    result = KernelTree(
        path=tree.absolute(),
        flavor=_field(data, "flavor", file),
        kver=_field(data, "kver", file),
        arch=_field(data, "arch", file),
        package=KernelPackage(
            name=_field(package, "name", file),
            version=_field(package, "version", file),
            sha256=_field(package, "sha256", file),
            filename=str(package.get("filename", "")),
            metapackage=str(package.get("metapackage", "")),
        ),
        source=KernelSource(
            mirror=_field(source, "mirror", file),
            suite=_field(source, "suite", file),
            codename=str(source.get("codename", "")),
        ),
    )
    if "/" in result.kver or result.kver in (".", ".."):
        raise ConfigError(f"{file}: 'kver' {result.kver!r} is not a kernel version")
    return result


def list_kernels(root_dir: Path) -> list[KernelTree]:
    """Every kernel tree under `root_dir` (state.kernels), sorted by
    directory name (<flavor>-<kver>).  Unfinished fetches (dot directories)
    are not trees; a broken tree is skipped with a warning rather than
    hiding the others."""
    trees: list[KernelTree] = []
    if not root_dir.is_dir():
        return trees
    for child in sorted(root_dir.iterdir()):
        if child.name.startswith(".") or not (child / KERNEL_JSON).is_file():
            continue
        try:
            trees.append(load(child))
        except ConfigError as e:
            log.warning("skipping %s", e)
    return trees
