"""The staging tree an initramfs is assembled in, and how host files get in.

Files are installed at the same path they have on the host, and every
symlink met on the way (/lib64 -> usr/lib64, mkfs.ext4 -> mke2fs) is
recreated, so binaries find their loader and libraries exactly as on the
host.  Shared libraries are followed with ldd, like dracut and
initramfs-tools do.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import output

log = logging.getLogger(__name__)

_LDD_LINE = re.compile(r"^\s*(?:(\S+)\s+=>\s+)?(/\S+)\s+\(0x[0-9a-f]+\)\s*$")


def parse_ldd(text: str, binary: str) -> list[str]:
    """Library paths from `ldd` output; raises if a library is missing."""
    libs: list[str] = []
    for line in text.splitlines():
        if "=> not found" in line:
            raise SyscloneError(f"{binary}: shared library {line.split()[0]} not found on the host")
        m = _LDD_LINE.match(line)
        if m:
            libs.append(m.group(2))
    return libs


@dataclass
class Staging:
    """A directory being filled with the initramfs's contents."""

    top: Path
    host_root: Path = Path("/")
    installed: set[str] = field(default_factory=set)
    _ldd_seen: set[str] = field(default_factory=set)

    def path(self, rel: str | os.PathLike[str]) -> Path:
        return self.top / Path(rel).relative_to("/") if Path(rel).is_absolute() \
            else self.top / rel

    def mkdir(self, *dirs: str) -> None:
        for d in dirs:
            self.path(d).mkdir(parents=True, exist_ok=True)

    def write(self, dest: str, data: str | bytes, mode: int = 0o644) -> None:
        p = self.path(dest)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data.encode() if isinstance(data, str) else data)
        p.chmod(mode)
        self.installed.add(dest)

    def symlink(self, dest: str, target: str) -> None:
        p = self.path(dest)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink() or p.exists():
            if p.is_symlink() and os.readlink(p) == target:
                return
            raise SyscloneError(f"initramfs path {dest} already exists")
        p.symlink_to(target)
        self.installed.add(dest)

    def copy(self, src: Path, dest: str, mode: int | None = None) -> None:
        p = self.path(dest)
        p.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, p)
        p.chmod(mode if mode is not None else (src.stat().st_mode & 0o777))
        self.installed.add(dest)

    def _host(self, path: str) -> Path:
        return self.host_root / path.lstrip("/")

    def install(self, path: str, *, follow_libs: bool = True) -> None:
        """Install a host path (file, or symlink chain) at the same place."""
        path = os.path.normpath(path)
        if path in self.installed:
            return
        # Recreate symlinked parent directories first (/lib -> usr/lib).
        parts = Path(path).parts
        for i in range(1, len(parts) - 1):
            cur = os.path.join(*parts[: i + 1])
            host = self._host(cur)
            if host.is_symlink():
                target = os.readlink(host)
                if cur not in self.installed:
                    self.symlink(cur, target)
                resolved = os.path.normpath(os.path.join(os.path.dirname(cur), target))
                self.install(os.path.join(resolved, *parts[i + 1:]), follow_libs=follow_libs)
                self.installed.add(path)
                return
        host = self._host(path)
        if host.is_symlink():
            target = os.readlink(host)
            self.symlink(path, target)
            self.install(os.path.normpath(os.path.join(os.path.dirname(path), target)),
                         follow_libs=follow_libs)
            return
        if host.is_dir():
            self.mkdir(path)
            self.installed.add(path)
            return
        if not host.is_file():
            raise SyscloneError(f"{path} is not on the build host", hint="install its package")
        self.copy(host, path)
        if follow_libs and (os.access(host, os.X_OK) or ".so" in host.name):
            self.install_libs(path)

    def install_libs(self, path: str) -> None:
        """Install the shared libraries host file `path` needs."""
        if path in self._ldd_seen:
            return
        self._ldd_seen.add(path)
        for lib in self.needed_libs(self._host(path)):
            self.install(lib)

    def needed_libs(self, file: Path) -> list[str]:
        """Host paths of the shared libraries an ELF file needs (none for
        static binaries and non-ELF files)."""
        with file.open("rb") as f:
            if f.read(4) != b"\x7fELF":
                return []
        return parse_ldd(output(["ldd", str(file)], check=False), str(file))

    def install_binary(self, name: str, search: tuple[str, ...] = ("/usr/sbin", "/usr/bin",
                                                                      "/sbin", "/bin")) -> str:
        """Install a tool by name, found in the host's usual directories."""
        for d in search:
            cand = f"{d}/{name}"
            if self._host(cand).exists():
                self.install(cand)
                return cand
        raise SyscloneError(f"tool {name!r} is not installed on the build host",
                            hint="run ci/setup.sh or install its Debian package")
