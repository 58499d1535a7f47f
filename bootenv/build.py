"""Assembling a boot environment: kernel + initramfs + manifest.

    build(state, spec, output)  ->  output/kernel, output/initrd.img,
                                    output/manifest.json

The initramfs holds busybox, the tools the agent runs (rsync, mkfs.*,
kmod, udev...), the chosen kernel modules with the firmware they declare
(bootenv.drivers; the manifest lists what each drives) and the frozen
agent.  The same inputs give a byte-identical initrd.img: the archive is
written by bootenv.cpio (sorted, fixed owners and mtimes) and compressed
single-threaded with a fixed level.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bootenv import cpio, drivers, modules, squash, tools
from bootenv.freeze import PYVER, START_FILES, FrozenAgent, python_version
from bootenv.staging import Staging
from kernels.moduledb import ModuleDB
from sysclone.errors import ConfigError, SyscloneError
from sysclone.run import output, run

log = logging.getLogger(__name__)

LIBDIR = "usr/lib/x86_64-linux-gnu"
BOOTENV_INFO = "etc/sysclone/bootenv.json"  # read by agent.bootenvinfo
FORMAT = 2  # 2: modules with their aliases and firmware (bootenv.drivers)

COMPRESSORS: dict[str, tuple[str, ...]] = {
    # Single-threaded and fixed levels: reproducible output.
    "zstd": ("zstd", "-q", "-19", "-T1", "--no-check", "-c"),
    # The x86 branch filter: an initramfs is mostly machine code (3 % smaller
    # measured on stage 1); the kernel's decoder has it (CONFIG_XZ_DEC_X86,
    # on by default).
    "xz": ("xz", "-q", "--x86", "--lzma2=preset=9", "--check=crc32", "-T1", "-c"),
    "gzip": ("gzip", "-n", "-9", "-c"),
    "none": (),
}

PASSWD = "root:x:0:0:root:/root:/bin/sh\n"
GROUP = ("root:x:0:\ntty:x:5:\ndisk:x:6:\nkmem:x:15:\ndialout:x:20:\ncdrom:x:24:\n"
         "tape:x:26:\naudio:x:29:\nvideo:x:44:\ninput:x:101:\nkvm:x:102:\nrender:x:103:\n"
         "sgx:x:104:\n")


@dataclass(frozen=True)
class BuildSpec:
    kernel_image: Path  # vmlinuz
    modules_dir: Path  # .../lib/modules/<kver>
    kver: str
    flavor: str = "standard"
    drivers: drivers.DriverRequest = field(default_factory=drivers.DriverRequest)
    firmware_dir: Path | None = None  # the kernel tree's lib/firmware
    tool_groups: tuple[str, ...] = tools.DEFAULT_TOOLS
    # Leave out tool groups whose kernel modules the driver set lacks
    # (drivers.usable_tools); off when the tool groups were named.
    tools_follow_drivers: bool = False
    compression: str = "zstd"
    squashfs: squash.Packing = squash.STANDARD_PACKING
    local_cfg: Path | None = None  # embedded as /local.cfg
    source_date_epoch: int = 1700000000
    # squashfs: a compressed root read on demand behind a tiny stage 1 (see
    # bootenv.squash); cpio: one archive the kernel unpacks whole, for
    # kernels without loop/squashfs/overlay; auto: squashfs when possible.
    packing: str = "auto"
    # The Python interpreter and the bytecode the agent's start reads go in
    # stage 1 with busybox (zstd, unpacked by the kernel) instead of the xz
    # squashfs, whose 512 KiB blocks the interpreter's first page faults
    # decompress one by one.  Measured under TCG on the standard flavor,
    # same kernel and VM, alternated: /init -> agent ready 5.13 s -> 3.45 s
    # (median of 3), for 232 KB more initrd.  Off for UYOK `loaded`, built
    # to be small first.
    hot_python: bool = True
    # The second stage's /init; the benchmarks' baselines bring their own.
    init_script: str | None = None
    kernel_info: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BuildResult:
    kernel: Path
    initrd: Path
    manifest: Path
    data: dict[str, Any]


def _sha256(p: Path) -> str:
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _tree_size(top: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(top):
        for f in files:
            p = os.path.join(dirpath, f)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def _base(st: Staging, spec: BuildSpec) -> None:
    st.mkdir("usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "dev", "proc", "sys", "run",
             "tmp", "root", "etc", "var", "mnt", "sysroot")
    for d in ("bin", "sbin", "lib", "lib64"):
        st.symlink(d, f"usr/{d}")
    st.symlink("var/run", "../run")
    st.write("etc/passwd", PASSWD)
    st.write("etc/group", GROUP)
    st.symlink("etc/mtab", "../proc/self/mounts")
    # The kernel filesystems /init mounts with one `mount -a`.
    st.write("etc/fstab", "proc /proc proc nosuid,nodev,noexec 0 0\n"
             "sysfs /sys sysfs nosuid,nodev,noexec 0 0\n"
             "tmpfs /run tmpfs mode=0755,nosuid,nodev 0 0\n")
    st.write("etc/os-release", 'NAME="sysclone boot environment"\nID=sysclone-bootenv\n'
             f'VERSION_ID="{spec.flavor}"\n')
    init = spec.init_script or resources.files("bootenv").joinpath("init.sh").read_text()
    st.write("init", init, 0o755)
    if spec.local_cfg:
        if not spec.local_cfg.is_file():
            raise ConfigError(f"--local-cfg {spec.local_cfg}: no such file")
        st.copy(spec.local_cfg, "local.cfg", 0o644)


def _busybox(st: Staging) -> None:
    bb = "/usr/bin/busybox"
    if not Path(bb).is_file():
        raise SyscloneError("busybox is not installed on the build host",
                            hint="apt install busybox-static")
    st.install(bb)
    for applet in output([bb, "--list-full"]).split():
        dest = "/" + applet
        if dest.startswith(("/bin/", "/sbin/")):
            dest = "/usr" + dest
        if st.path(dest).exists() or st.path(dest).is_symlink():
            continue
        st.symlink(dest, os.path.relpath(bb, os.path.dirname(dest)))


def _tools(st: Staging, groups: tuple[str, ...]) -> list[str]:
    installed = [st.install_binary(t) for t in tools.resolve(groups)]
    kmod = st.install_binary("kmod")
    for name in tools.KMOD_NAMES:
        dest = f"/usr/sbin/{name}"
        if not st.path(dest).exists():
            st.symlink(dest, os.path.relpath(kmod, "/usr/sbin"))
    # udev: the daemon is udevadm under another name.
    st.symlink("/usr/lib/systemd/systemd-udevd", "../../bin/udevadm")
    for r in tools.UDEV_RULES:
        if Path("/usr/lib/udev/rules.d", r).is_file():
            st.install(f"/usr/lib/udev/rules.d/{r}", follow_libs=False)
    for h in tools.UDEV_HELPERS:
        if Path("/usr/lib/udev", h).is_file():
            st.install(f"/usr/lib/udev/{h}")
    # ctypes loads libkmod and libudev by soname (agent.kmod, pyudev); glibc
    # dlopens libgcc_s when a thread exits or is cancelled (cryptsetup's
    # argon2 threads abort without it), so no ELF header names it.
    for lib in ("libkmod.so.2", "libudev.so.1", "libgcc_s.so.1"):
        st.install(f"/{LIBDIR}/{lib}")
    return installed


def _agent(st: Staging, agent: FrozenAgent) -> dict[str, int]:
    """The frozen agent: the host's Python binary, the agent's bytecode tree,
    and the system libraries its binaries need."""
    st.install(agent.python)
    st.symlink("/usr/bin/python3", os.path.basename(agent.python))
    files = modules_ = 0
    for src in sorted(agent.path.rglob("*")):
        rel = "/" + src.relative_to(agent.path).as_posix()
        if rel == f"/{START_FILES}":
            continue
        if src.is_dir():
            st.mkdir(rel)
            continue
        st.copy(src, rel)
        files += 1
        if src.suffix == ".so":
            modules_ += 1
            for lib in st.needed_libs(src):
                st.install(lib)
    return {"files": files, "extension_modules": modules_}


def _hot_files(st: Staging, agent: FrozenAgent) -> list[str]:
    """Stage 1's files (BuildSpec.hot_python): busybox, the interpreter
    (its libraries follow), the bytecode its start reads and what the agent
    imports before its ready marker."""
    startup = [f"/usr/lib/python{PYVER}/{rel}"
               for rel in (*squash.PYTHON_STARTUP, *agent.start_files())]
    return ["/usr/bin/busybox", agent.python,
            *(p for p in startup if st.path(p).is_file())]


def _host_packages(paths: list[str]) -> dict[str, str]:
    """Debian package and version of each host file that went in: the
    inputs of the build, for the manifest."""
    pkgs: dict[str, str] = {}
    real = sorted({os.path.realpath(p) for p in paths})
    res = run(["dpkg-query", "-S", *real], check=False)
    names: set[str] = set()
    for line in res.stdout.splitlines():
        if ": " in line:
            names.update(n.strip().split(":")[0] for n in line.split(": ")[0].split(","))
    if names:
        ver = run(["dpkg-query", "-W", "-f", "${Package} ${Version}\n", *sorted(names)],
                  check=False)
        for line in ver.stdout.splitlines():
            n, _, v = line.partition(" ")
            pkgs[n] = v
    return dict(sorted(pkgs.items()))


def _compress(raw: Path, out: Path, method: str) -> None:
    if method not in COMPRESSORS:
        raise ConfigError(f"compression {method!r} is not supported",
                          hint="one of " + ", ".join(COMPRESSORS))
    if method == "none":
        shutil.copyfile(raw, out)
        return
    with out.open("wb") as f:
        run([*COMPRESSORS[method], str(raw)], stdout=f, capture=False)


PACKINGS = ("auto", "squashfs", "cpio")


def choose_packing(spec: BuildSpec) -> tuple[str, squash.KernelSupport]:
    if spec.packing not in PACKINGS:
        raise ConfigError(f"packing {spec.packing!r} is not supported",
                          hint="one of " + ", ".join(PACKINGS))
    support = squash.kernel_support(spec.modules_dir)
    if spec.packing == "cpio" or (spec.packing == "auto" and not support.ok):
        return "cpio", support
    if not support.ok:
        raise ConfigError(f"kernel {spec.kver} has no {', '.join(support.missing)} (neither "
                          "built in nor a module): it cannot mount a squashfs boot environment",
                          hint="build with --packing cpio")
    return "squashfs", support


def build(spec: BuildSpec, agent: FrozenAgent, out_dir: Path,
          step: Callable[[str], None] | None = None) -> BuildResult:
    say = step or (lambda s: None)
    if not spec.kernel_image.is_file():
        raise ConfigError(f"kernel image {spec.kernel_image} not found")
    packing, support = choose_packing(spec)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".staging"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        st = Staging(work / "root")
        st.top.mkdir()
        say("base layout and busybox")
        _base(st, spec)
        db = ModuleDB.load(spec.modules_dir)
        chosen = drivers.choose(db, spec.modules_dir, spec.firmware_dir, spec.drivers,
                                spec.tool_groups)
        tool_groups: tuple[str, ...] = spec.tool_groups
        tools_dropped: dict[str, list[str]] = {}
        if spec.tools_follow_drivers:
            tool_groups, tools_dropped = drivers.usable_tools(spec.tool_groups, db, chosen,
                                                              spec.drivers)
            idle = drivers.idle_stack_modules(tools_dropped, spec.drivers)
            if idle:
                say(f"left out, idle on the client and their tools left out: {', '.join(idle)}")
                chosen = drivers.choose(db, spec.modules_dir, spec.firmware_dir,
                                        spec.drivers.without(idle), spec.tool_groups)
        if chosen.left_out:
            say("left out, of use to a running system only: " + ", ".join(chosen.left_out))
        stacks = drivers.storage_stacks(tool_groups, tools_dropped, spec.drivers)
        # Where the agent's plan reads what it cannot build, and why.
        st.write(BOOTENV_INFO, json.dumps({"flavor": spec.flavor, "storage": stacks},
                                          indent=1, sort_keys=True) + "\n")
        say("tools: " + ", ".join(tool_groups)
            + (f" (without {', '.join(tools_dropped)}: their kernel modules are missing or "
               "were idle on the client)" if tools_dropped
               else ""))
        tool_paths = _tools(st, tool_groups)
        _busybox(st)
        say(f"kernel modules ({chosen.how}): {len(chosen.names)}, firmware: "
            f"{len(chosen.firmware)} files")
        sel = modules.ModuleSelection(spec.kver, chosen.paths, chosen.size)
        # squashfs compresses modules better as a whole than one by one.
        modules.install(sel, spec.modules_dir, st.top, compress=packing == "cpio")
        drivers.install_firmware(chosen, spec.firmware_dir, st.top)
        say("frozen agent")
        agent_files = _agent(st, agent)
        sizes = {
            "agent": _tree_size(st.path(f"usr/lib/python{PYVER}"))
            + st.path(agent.python).stat().st_size,
            "modules": _tree_size(st.path(f"usr/lib/modules/{spec.kver}")),
            "firmware": _tree_size(st.path("usr/lib/firmware")),
        }
        sizes["total"] = _tree_size(st.top)
        sizes["tools_and_libraries"] = (sizes["total"] - sizes["agent"] - sizes["modules"]
                                        - sizes["firmware"])
        initrd = out_dir / "initrd.img"
        if packing == "squashfs":
            say(f"squashfs and stage 1 ({spec.compression})")
            stage1 = squash.Stage1(support, spec.modules_dir, spec.source_date_epoch,
                                   lambda raw, out: _compress(raw, out, spec.compression),
                                   spec.squashfs)
            packed = squash.pack(st, stage1, work, initrd,
                                 hot=_hot_files(st, agent) if spec.hot_python
                                 else ["/usr/bin/busybox"])
            cpio_size, files = packed["unpacked"], packed["files"]
            sizes.update({k: v for k, v in packed.items() if k not in ("unpacked", "files")})
        else:
            say(f"archive ({spec.compression})")
            raw = work / "initrd.cpio"
            entries = [*cpio.scan_tree(st.top), cpio.char_device("dev/console", 5, 1),
                       cpio.char_device("dev/null", 1, 3, 0o666)]
            with raw.open("wb") as f:
                cpio_size = cpio.write_archive(f, entries, mtime=spec.source_date_epoch)
            _compress(raw, initrd, spec.compression)
            files = len(entries)
        kernel = out_dir / "kernel"
        shutil.copyfile(spec.kernel_image, kernel)
        data: dict[str, Any] = {
            "format": FORMAT,
            "flavor": spec.flavor,
            "kernel": {"version": spec.kver, "sha256": _sha256(kernel),
                       "size": kernel.stat().st_size, **spec.kernel_info},
            "initrd": {"sha256": _sha256(initrd), "size": initrd.stat().st_size,
                       "uncompressed_size": cpio_size, "compression": spec.compression,
                       "packing": packing, "files": files,
                       **({"squashfs_block": spec.squashfs.block,
                           "squashfs_compression": spec.squashfs.compressor}
                          if packing == "squashfs" else {})},
            "contents": sizes,
            "modules": drivers.manifest(db, chosen),
            "firmware": drivers.firmware_manifest(chosen),
            "tools": sorted(t for t in tool_paths),
            "storage": stacks,
            "agent": {"freeze_key": agent.key, "python": python_version(), **agent_files},
            "inputs": {"host_packages": _host_packages([*tool_paths, "/usr/bin/busybox"]),
                       "tool_groups": list(tool_groups),
                       "tools_dropped": tools_dropped,
                       "modules": spec.drivers.how,
                       "module_names": list(spec.drivers.names),
                       "add_modules": list(spec.drivers.add),
                       "source_date_epoch": spec.source_date_epoch},
        }
        manifest = out_dir / "manifest.json"
        manifest.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        return BuildResult(kernel, initrd, manifest, data)
    finally:
        shutil.rmtree(work, ignore_errors=True)


