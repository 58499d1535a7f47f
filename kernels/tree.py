"""An unpacked kernel: what the boot environment builder consumes.

Layout of a tree (state.kernels/<name>/):

    kernel.json                 what it is and where it came from
    vmlinuz                     boot/vmlinuz-<kver> of the source
    config, System.map          boot/config-<kver>, boot/System.map-<kver> if there
                                (Debian ships only a placeholder System.map: left out)
    lib/modules/<kver>/         modules, modules.order, modules.builtin*, depmod's
                                indexes, and modules.firmware (kernels.moduledb)
    lib/firmware/               the firmware files the modules declare that the
                                source had (its /lib/firmware, or Debian's
                                firmware packages for a Debian kernel)

Paths in kernel.json are relative, so a tree can be moved or copied whole.
Format 1 trees (`kernel fetch` before `kernel add`) still load.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from debian.debian_support import Version

from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

KERNEL_JSON = "kernel.json"
FORMAT = 2
ORIGINS = ("debian", "deb", "image", "host")


@dataclass(frozen=True)
class KernelSource:
    """The archive a Debian package came from."""

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
    kver: str  # `uname -r` of the kernel, e.g. 6.1.0-50-cloud-amd64
    arch: str  # Debian architecture, e.g. amd64
    origin: str = "debian"  # one of ORIGINS
    flavor: str = ""  # a Debian flavor (cloud-amd64, amd64) when it is one
    package: KernelPackage | None = None  # debian, deb
    source: KernelSource | None = None  # debian
    image: str = ""  # image: NAME@N it came from
    host: str = ""  # host: the machine's name
    modules: int = 0  # loadable modules
    firmware: int = 0  # firmware files carried
    firmware_packages: tuple[str, ...] = ()  # "name version" of Debian's firmware packages

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def vmlinuz(self) -> Path:
        return self.path / "vmlinuz"

    @property
    def modules_dir(self) -> Path:
        return self.path / "lib" / "modules" / self.kver

    @property
    def firmware_dir(self) -> Path:
        return self.path / "lib" / "firmware"

    @property
    def config(self) -> Path | None:
        """The kernel's build configuration, if the source had it."""
        p = self.path / "config"
        return p if p.is_file() else None

    @property
    def system_map(self) -> Path | None:
        p = self.path / "System.map"
        return p if p.is_file() else None

    def describe_source(self) -> str:
        """One phrase for `kernel list`."""
        if self.origin == "image":
            return f"image {self.image}"
        if self.origin == "host":
            return f"host {self.host}"
        if self.package is None:
            return self.origin
        what = self.package.metapackage or self.package.name
        return f"{what} {self.package.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kver": self.kver,
            "arch": self.arch,
            "origin": self.origin,
            "flavor": self.flavor,
            "vmlinuz": "vmlinuz",
            "modules_dir": f"lib/modules/{self.kver}",
            "package": asdict(self.package) if self.package else None,
            "source": asdict(self.source) if self.source else None,
            "image": self.image,
            "host": self.host,
            "modules": self.modules,
            "firmware": self.firmware,
            "firmware_packages": list(self.firmware_packages),
        }

    def write(self) -> None:
        """Write kernel.json (atomically) into the tree."""
        target = self.path / KERNEL_JSON
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n",
                       encoding="utf-8")
        tmp.replace(target)


def version_key(kver: str) -> Any:
    """Sort key for kernel versions in Debian's order (6.1.0-10 after
    6.1.0-9, which string order gets wrong)."""
    try:
        return Version(kver)
    except ValueError:
        return Version("0~" + "".join(c if c.isalnum() or c in ".+~" else "." for c in kver))


def newest(kvers: list[str]) -> str:
    return max(kvers, key=version_key)


def _field(data: dict[str, Any], key: str, where: Path) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string for {key!r}")
    return value


def _package(data: Any, where: Path) -> KernelPackage | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a 'package' object")
    return KernelPackage(
        name=_field(data, "name", where), version=_field(data, "version", where),
        sha256=_field(data, "sha256", where), filename=str(data.get("filename", "")),
        metapackage=str(data.get("metapackage", "")))


def _source(data: Any, where: Path) -> KernelSource | None:
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a 'source' object")
    return KernelSource(mirror=_field(data, "mirror", where), suite=_field(data, "suite", where),
                        codename=str(data.get("codename", "")))


def load(path: Path) -> KernelTree:
    """Read the KernelTree at `path` (a tree directory, or its kernel.json)."""
    path = Path(path)
    file = path if path.name == KERNEL_JSON else path / KERNEL_JSON
    tree = file.parent
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{tree}: not a kernel tree (no {KERNEL_JSON})",
                          hint="add one with 'sysclone kernel add' or 'kernel fetch'") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it: {e}") from None
    if not isinstance(data, dict) or data.get("format") not in (1, FORMAT):
        raise ConfigError(f"{file}: expected a kernel.json of format 1 or {FORMAT}")
    origin = str(data.get("origin") or "debian")
    if origin not in ORIGINS:
        raise ConfigError(f"{file}: unknown origin {origin!r}")
    package = _package(data.get("package"), file)
    if origin in ("debian", "deb") and package is None:
        raise ConfigError(f"{file}: expected a 'package' object")
    result = KernelTree(
        path=tree.absolute(),
        kver=_field(data, "kver", file),
        arch=_field(data, "arch", file),
        origin=origin,
        flavor=str(data.get("flavor") or ""),
        package=package,
        source=_source(data.get("source"), file),
        image=str(data.get("image") or ""),
        host=str(data.get("host") or ""),
        modules=int(data.get("modules") or 0),
        firmware=int(data.get("firmware") or 0),
        firmware_packages=tuple(str(p) for p in data.get("firmware_packages") or ()),
    )
    if "/" in result.kver or result.kver in (".", ".."):
        raise ConfigError(f"{file}: 'kver' {result.kver!r} is not a kernel version")
    return result


def list_kernels(root_dir: Path) -> list[KernelTree]:
    """Every kernel tree under `root_dir` (state.kernels), sorted by name.
    Unfinished ones (dot directories) are not trees; a broken tree is
    skipped with a warning rather than hiding the others."""
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


def find(root_dir: Path, name_or_path: str) -> KernelTree:
    """A kernel by its name in state.kernels, or a tree directory."""
    p = Path(name_or_path)
    if "/" not in name_or_path and not name_or_path.startswith("."):
        if (root_dir / name_or_path / KERNEL_JSON).is_file():
            return load(root_dir / name_or_path)
        if not p.is_dir():
            known = ", ".join(k.name for k in list_kernels(root_dir)) or "none"
            raise ConfigError(f"no kernel named {name_or_path!r}",
                              hint=f"known kernels: {known} (sysclone kernel list)")
    return load(p)


def newest_of_flavor(root_dir: Path, flavor: str) -> KernelTree | None:
    have = [k for k in list_kernels(root_dir) if k.flavor == flavor]
    if not have:
        return None
    top = newest([k.kver for k in have])
    return next(k for k in have if k.kver == top)
