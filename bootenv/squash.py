"""Packing a boot environment as a squashfs behind a small first stage.

    initrd.img = [cpio: sysclone.sqsh]       (uncompressed archive)
               + [cpio.zst: stage 1]          /init (bootenv/init1.sh), the
                                              loop/squashfs/overlay modules, and
                                              the "hot" files under /s1

Why: a plain compressed cpio is unpacked whole by the kernel before /init
runs — about 40 MB written to RAM, with the compressed copy still held —
which costs seconds under emulation and does not fit in 128 MiB.  The
squashfs stays compressed in RAM and is decompressed page by page as
files are read: only what the agent really touches is ever unpacked.

The hot files — busybox, the Python interpreter and the libraries they
load — are needed by every boot at once, so they travel in stage 1 instead
(unpacked by the kernel while it initialises devices) and are not in the
squashfs at all: stage 1 runs its busybox from them, and the final root is
an overlay of /s1 on the squashfs, so each file exists once.

The uncompressed archive comes first: the kernel finds the end of a plain
cpio by its trailer, and the compressed stage follows it, the same order
Debian uses for its early microcode archive.  The build is reproducible:
mksquashfs gets fixed times, root owners and normalized modes.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from bootenv import cpio
from bootenv.modules import close_deps, parse_modules_dep
from bootenv.staging import Staging
from sysclone.run import run

# What stage 1 needs from the kernel, as module names.
STAGE1_MODULES = ("loop", "squashfs", "overlay")
# mksquashfs options of each compressor the squashfs may use.
SQUASHFS_COMPRESSORS: dict[str, tuple[str, ...]] = {
    "zstd": ("-comp", "zstd", "-Xcompression-level", "22"),
    "xz": ("-comp", "xz", "-Xbcj", "x86"),
}


@dataclass(frozen=True)
class Packing:
    """How the squashfs behind stage 1 is compressed."""

    compressor: str  # a key of SQUASHFS_COMPRESSORS
    block: str  # mksquashfs -b


# The standard flavor: zstd -22 with 1 MiB blocks.  Everything the agent
# runs after its start -- the rest of Python and the agent, rsync, mke2fs,
# udevd, their libraries -- is read from here, cold, under emulation: the
# agent's imports from its start to its first phase took 14.8 s from an xz
# squashfs and 8.8 s from this one (same kernel and VM, TCG, cold cache),
# for an initrd of 32.9 MiB instead of 30.5 (Debian's own for that kernel
# is 33.4).  1 MiB blocks instead of 512 KiB: 0.7 MB smaller, 0.3 s slower.
STANDARD_PACKING = Packing("zstd", "1M")
# A driver list (`--modules virtio_blk,...`): what a small VM fleet boots,
# down to 128 MiB of RAM, where big blocks thrash: a page evicted under
# memory pressure costs a whole block's decompression to get back (the
# 128 MiB install spun for a quarter of an hour in mkfs with zstd 1 MiB
# blocks).  xz with 512 KiB blocks, as before.
NARROW_PACKING = Packing("xz", "512K")
# UYOK `loaded` (bootenv.standard.compact): the flavor built to be small,
# where the agent and its tools are most of the bytes: xz with the x86
# branch filter (15 % smaller than zstd on machine code) and 1 MiB blocks
# (2 % smaller than 512 KiB, 9.49 -> 9.31 MB measured).  It is also what a
# kernel whose squashfs has no zstd gets.
COMPACT_PACKING = Packing("xz", "1M")


@dataclass(frozen=True)
class KernelSupport:
    """How a kernel provides what stage 1 needs."""

    load: tuple[str, ...]  # module paths (relative to lib/modules/<kver>), dependencies first
    builtin: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.missing


def kernel_support(modules_dir: Path) -> KernelSupport:
    deps = parse_modules_dep((modules_dir / "modules.dep").read_text())
    builtin_file = modules_dir / "modules.builtin"
    builtin_paths = builtin_file.read_text().split() if builtin_file.is_file() else []

    def name(path: str) -> str:
        return Path(path).name.split(".ko")[0].replace("-", "_")

    by_name = {name(m): m for m in deps}
    builtins = {name(m) for m in builtin_paths}
    wanted, builtin, missing = set(), [], []
    for n in STAGE1_MODULES:
        if n in builtins:
            builtin.append(n)
        elif n in by_name:
            wanted.add(by_name[n])
        else:
            missing.append(n)
    closure = close_deps(wanted, deps)
    return KernelSupport(_load_order(closure, deps), tuple(builtin), tuple(missing))


def _load_order(mods: set[str], deps: dict[str, list[str]]) -> tuple[str, ...]:
    """Dependencies before the modules that need them (insmod does not
    resolve them itself)."""
    out: list[str] = []

    def visit(m: str) -> None:
        if m in out:
            return
        for d in sorted(deps.get(m, ())):
            visit(d)
        out.append(m)

    for m in sorted(mods):
        visit(m)
    return tuple(out)


def normalize_modes(top: Path) -> None:
    """0755 for directories and executables, 0644 for the rest: the build
    host's umask must not leak into a reproducible image."""
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                continue
            want = 0o755 if stat.S_ISDIR(st.st_mode) or st.st_mode & 0o111 else 0o644
            if stat.S_IMODE(st.st_mode) != want:
                os.chmod(p, want)


def make_squashfs(tree: Path, out: Path, epoch: int,
                  packing: Packing = STANDARD_PACKING) -> None:
    normalize_modes(tree)
    out.unlink(missing_ok=True)
    run(["mksquashfs", str(tree), str(out), "-noappend", "-quiet", "-no-progress",
         *SQUASHFS_COMPRESSORS[packing.compressor], "-b", packing.block, "-all-root",
         "-no-xattrs", "-no-exports",
         "-mkfs-time", str(epoch), "-all-time", str(epoch)])


def file_chain(top: Path, path: str) -> list[str]:
    """The entries (file symlinks, then the file itself; relative to `top`)
    that `path` resolves through inside the tree, as the loader would see
    them.  Directory symlinks (lib -> usr/lib) are followed, not listed."""
    out: list[str] = []
    todo = path
    for _ in range(40):
        parts = Path(todo.lstrip("/")).parts
        cur = Path()
        for i, part in enumerate(parts):
            nxt = cur / part
            if not (top / nxt).is_symlink():
                cur = nxt
                continue
            target = os.readlink(top / nxt)
            base = Path() if target.startswith("/") else cur
            # normpath, and no climbing above the tree's root
            resolved = Path(*[p for p in Path(os.path.normpath(base / target.lstrip("/"))).parts
                              if p != ".."])
            if i == len(parts) - 1:  # a symlink to a file: listed, then followed
                out.append(str(nxt))
                todo = str(resolved)
                break
            cur = resolved
        else:
            out.append(str(cur))
            return out
    raise ValueError(f"symlink loop resolving {path} in {top}")


@dataclass(frozen=True)
class Stage1:
    support: KernelSupport
    modules_dir: Path
    epoch: int
    compress: Callable[[Path, Path], None]
    packing: Packing = STANDARD_PACKING  # of the squashfs behind it


HOT_DIR = "s1"
# The bytecode the interpreter's own start reads (python -X importtime in
# the VM: the rest of what it loads is frozen into it), relative to the
# frozen layout's /usr/lib/pythonX.Y.  What the agent imports before its
# ready marker joins it (bootenv.freeze.START_FILES): under TCG, /init to
# the ready marker 1.83 s with only these hot, 1.55 s with those too
# (3 boots each, same build otherwise).
PYTHON_STARTUP = ("encodings/__init__.pyc", "encodings/aliases.pyc", "encodings/utf_8.pyc")


def _hot_entries(st: Staging, hot: list[str]) -> list[str]:
    """Every tree entry the hot ELF files and their libraries resolve to."""
    wanted: list[str] = []
    for path in hot:
        for rel in [*file_chain(st.top, path),
                    *(e for lib in st.needed_libs(st.top / path.lstrip("/"))
                      for e in file_chain(st.top, lib))]:
            if rel not in wanted:
                wanted.append(rel)
    return wanted


def _stage1_tree(one: Staging, st: Staging, stage1: Stage1, hot: list[str]) -> None:
    one.mkdir("dev", "stage1", "lower", "newroot", "rw/upper", "rw/work")
    # Stage 1 runs from the hot files; its /usr is theirs.
    one.symlink("usr", f"{HOT_DIR}/usr")
    for d in ("bin", "sbin", "lib", "lib64"):
        one.symlink(d, f"usr/{d}")
    for rel in _hot_entries(st, hot):
        src, dest = st.top / rel, one.top / HOT_DIR / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.rename(src, dest)  # out of the squashfs: it exists once
    one.write("init", resources.files("bootenv").joinpath("init1.sh").read_text(), 0o755)
    # Numbered: loaded in this order, dependencies first.
    for i, m in enumerate(stage1.support.load):
        one.copy(stage1.modules_dir / m, f"stage1/{i:02d}-{Path(m).name.split('.ko')[0]}.ko",
                 0o644)


def pack(st: Staging, stage1: Stage1, work: Path, initrd: Path, hot: list[str]
         ) -> dict[str, int]:
    """Write initrd.img from the staging tree `st` (which loses its hot files)."""
    one = Staging(work / "stage1")
    one.top.mkdir()
    _stage1_tree(one, st, stage1, hot)
    sqsh = work / "root.sqsh"
    make_squashfs(st.top, sqsh, stage1.epoch, stage1.packing)
    normalize_modes(one.top)
    raw1 = work / "stage1.cpio"
    entries = [*cpio.scan_tree(one.top), cpio.char_device("dev/console", 5, 1),
               cpio.char_device("dev/null", 1, 3, 0o666)]
    with raw1.open("wb") as f:
        size1 = cpio.write_archive(f, entries, mtime=stage1.epoch)
    packed1 = work / "stage1.cpio.z"
    stage1.compress(raw1, packed1)
    with initrd.open("wb") as f:
        size0 = cpio.write_archive(f, [cpio.Entry("sysclone.sqsh", 0o100644, source=sqsh)],
                                   mtime=stage1.epoch)
        f.write(packed1.read_bytes())
    return {"squashfs": sqsh.stat().st_size, "stage1": size1,
            "stage1_compressed": packed1.stat().st_size, "unpacked": size0 + size1,
            "files": len(entries) + 1}
