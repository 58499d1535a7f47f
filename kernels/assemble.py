"""Making a kernel tree (kernels.tree) out of any system tree that holds a
kernel: an unpacked Debian package, an image in the store, the running host.

    boot/vmlinuz-<kver>, boot/config-<kver>, boot/System.map-<kver>
    lib/modules/<kver>/ (or usr/lib/modules/<kver>/)
    lib/firmware/ (any number of roots)

The source is read, never changed: its symlinks are followed inside it (an
image's /lib -> usr/lib, /boot/vmlinuz -> ...), never out onto the build
host.  The tree is assembled in a dot directory next to its final place,
indexed (depmod, then kernels.moduledb's firmware index), and renamed into
place in one step, so a tree that exists is always complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from kernels.moduledb import module_name, parse_dep, write_firmware_index
from kernels.tree import KernelTree, load
from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

# The firmware loader also tries these compressed names (CONFIG_FW_LOADER_COMPRESS).
FIRMWARE_SUFFIXES = ("", ".xz", ".zst")
_DEPMOD_FILES = ("modules.dep", "modules.alias")


def resolve_in(root: Path, path: str) -> Path | None:
    """`path` (absolute, as seen inside `root`) resolved inside `root`,
    symlinks included; None if it does not exist there."""
    parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
    cur: list[str] = []
    for _ in range(64):
        if not parts:
            p = root.joinpath(*cur)
            return p if p.exists() else None
        part = parts.pop(0)
        if part == "..":
            cur = cur[:-1]
            continue
        p = root.joinpath(*cur, part)
        if p.is_symlink():
            target = os.readlink(p)
            new = [x for x in target.split("/") if x not in ("", ".")]
            if target.startswith("/"):
                cur = []
            parts = new + parts
            continue
        if not p.exists():
            return None
        cur.append(part)
    raise ConfigError(f"{root}: too many symlinks resolving {path}")


def kernel_versions(root: Path) -> list[str]:
    """Kernel versions with both boot/vmlinuz-<kver> and a modules directory."""
    found = []
    for base in ("lib/modules", "usr/lib/modules"):
        d = resolve_in(root, base)
        if d is None or not d.is_dir():
            continue
        for m in d.iterdir():
            if m.is_dir() and m.name not in found and resolve_in(root, f"boot/vmlinuz-{m.name}"):
                found.append(m.name)
    return found


def modules_source(root: Path, kver: str) -> Path:
    for base in ("lib/modules", "usr/lib/modules"):
        d = resolve_in(root, f"{base}/{kver}")
        if d is not None and d.is_dir():
            return d
    raise ConfigError(f"{root}: no lib/modules/{kver}",
                      hint="a kernel needs its modules to drive any hardware")


def _has_modules(modules: Path) -> bool:
    kernel = modules / "kernel"
    return kernel.is_dir() and any(".ko" in f for _d, _s, files in os.walk(kernel)
                                   for f in files)


def _placeholder(path: Path) -> bool:
    # Debian's images ship a one-line System.map pointing at the -dbg
    # package; a consumer finding it would take it for the real symbol map.
    with path.open("rb") as f:
        return b"The real System.map is in" in f.read(256)


def _copy_boot(root: Path, kver: str, tree: Path) -> None:
    vmlinuz = resolve_in(root, f"boot/vmlinuz-{kver}")
    if vmlinuz is None or not vmlinuz.is_file():
        raise ConfigError(f"{root}: no boot/vmlinuz-{kver}")
    shutil.copyfile(vmlinuz, tree / "vmlinuz")
    for name, target in ((f"config-{kver}", "config"), (f"System.map-{kver}", "System.map")):
        p = resolve_in(root, f"boot/{name}")
        if p is not None and p.is_file() and not _placeholder(p):
            shutil.copyfile(p, tree / target)


def _copy_modules(src: Path, dest: Path, move: bool) -> None:
    if move:
        src.rename(dest)
        return
    # build/ and source/ point at kernel headers, outside the tree.
    shutil.copytree(src, dest, symlinks=True,
                    ignore=lambda d, names: [n for n in names if d == str(src)
                                             and n in ("build", "source")])


def declared_firmware(modules_dir: Path, fw: dict[str, tuple[str, ...]]) -> list[str]:
    names = {module_name(p) for p in parse_dep((modules_dir / "modules.dep").read_text())}
    return sorted({f for n in names for f in fw.get(n, ())})


def copy_firmware(wanted: Sequence[str], roots: Sequence[tuple[Path, str]], dest: Path
                  ) -> list[str]:
    """Copy each wanted firmware file found under one of `roots` ((tree,
    path inside it) pairs; the first that has it wins, compressed or not)
    into `dest`.  Symlinks are copied as the files they name."""
    copied = []
    for name in wanted:
        if name.startswith("/") or ".." in name.split("/"):
            continue
        for tree, base in roots:
            src = next((p for s in FIRMWARE_SUFFIXES
                        if (p := resolve_in(tree, f"{base}/{name}{s}")) is not None
                        and p.is_file()), None)
            if src is None:
                continue
            suffix = next(s for s in reversed(FIRMWARE_SUFFIXES) if src.name.endswith(s))
            out = dest / (name + suffix)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, out)
            copied.append(name)
            break
    return copied


def assemble(kernels_dir: Path, name: str, root: Path, kver: str, meta: KernelTree, *,
             firmware: Sequence[tuple[Path, str]] = (), move: bool = False,
             replace_existing: bool = False) -> KernelTree:
    """Build kernels_dir/<name> from the kernel `kver` of system tree `root`.
    `meta` gives the kernel.json fields (its path is ignored); `firmware`
    the roots to take declared firmware from; `move` lets the modules be
    moved rather than copied (a scratch unpack)."""
    modules = modules_source(root, kver)
    if not _has_modules(modules):
        raise ConfigError(f"{modules} holds no kernel modules",
                          hint="a kernel tree without modules cannot drive disks or NICs: "
                               "install the kernel's modules package in the source")
    final = kernels_dir / name
    if final.exists() and not replace_existing:
        raise ConfigError(f"kernel {name} exists already",
                          hint="pick another name, or pass --replace")
    kernels_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=kernels_dir, prefix=f".add-{name}-"))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would stick to the final tree
        _copy_boot(root, kver, tmp)
        (tmp / "lib" / "modules").mkdir(parents=True)
        _copy_modules(modules, tmp / "lib" / "modules" / kver, move)
        run(["depmod", "-b", tmp, kver])
        mdir = tmp / "lib" / "modules" / kver
        missing = [f for f in _DEPMOD_FILES if not (mdir / f).is_file()]
        if missing:
            raise SyscloneError(f"depmod did not write {', '.join(missing)} for {kver} "
                                f"under {tmp}/lib/modules",
                                hint="the host's depmod may expect /usr/lib/modules")
        fw = write_firmware_index(mdir)
        wanted = declared_firmware(mdir, fw)
        copied = copy_firmware(wanted, firmware, tmp / "lib" / "firmware")
        count = len(parse_dep((mdir / "modules.dep").read_text()))
        tree = replace(meta, path=tmp, kver=kver, modules=count, firmware=len(copied))
        tree.write()
        log.info("kernel %s: %d modules, %d of %d declared firmware files", kver, count,
                 len(copied), len(wanted))
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load(final)


def _install(tmp: Path, final: Path) -> None:
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
