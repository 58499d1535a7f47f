"""Building a boot environment for real: Debian's generic kernel with its
firmware (fetched through apt, or from the cache), the frozen agent, the
host's tools.  Two builds from the same inputs, each freezing the agent
anew, must be byte-identical; the result is unpacked with the host's own
tools (as the kernel and stage 1 lay it out) and the agent run inside it;
the one-archive packing, for kernels without squashfs, is built and run
too."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bootenv.standard import build_bootenv
from sysclone.paths import StateRoot
from sysclone.ui import Ui
from tests.integration.bootenvtree import unpack


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, StateRoot]:
    import os

    root = tmp_path_factory.mktemp("bootenv")
    state = StateRoot.from_options(root / "state",
                                   os.environ.get("SYSCLONE_CACHE") or root / "cache")
    ui = Ui(quiet=True)
    a = build_bootenv(state, ui, output=root / "a", use_cache=False)
    b = build_bootenv(state, ui, output=root / "b", use_cache=False)
    return a.initrd.parent, b.initrd.parent, state


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_rebuild_is_byte_identical(two_builds) -> None:
    a, b, _ = two_builds
    assert _sha(a / "initrd.img") == _sha(b / "initrd.img")
    assert _sha(a / "kernel") == _sha(b / "kernel")
    assert (a / "manifest.json").read_text() == (b / "manifest.json").read_text()


def test_initrd_contents(two_builds, tmp_path: Path) -> None:
    a, _, _ = two_builds
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["initrd"]["packing"] == "squashfs"
    root = unpack(a / "initrd.img", tmp_path)
    stage1 = tmp_path / "stage1"
    kver = manifest["kernel"]["version"]
    for path in ("init", "usr/bin/busybox", "usr/bin/sysclone-agent", "usr/bin/python3.11",
                 "usr/bin/rsync", "usr/sbin/mke2fs", "usr/sbin/mkfs.xfs", "usr/bin/udevadm",
                 "usr/lib/python3.11/agent/flow.pyc", "usr/lib/python3.11/pyroute2/__init__.pyc",
                 f"usr/lib/modules/{kver}/modules.alias.bin", "etc/fstab",
                 # dlopened by glibc (cryptsetup's threads), by ctypes (pyudev)
                 "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
                 "usr/lib/x86_64-linux-gnu/libudev.so.1"):
        assert (root / path).exists() or (root / path).is_symlink(), path
    # Stage 1: its init, the modules to mount the rest, and the hot files.
    assert (stage1 / "init").read_text().startswith("#!/usr/bin/busybox sh")
    assert sorted(p.name.split("-", 1)[1] for p in (stage1 / "stage1").iterdir()) == \
        ["loop.ko", "overlay.ko", "squashfs.ko"]
    # Hot: busybox, which stage 1 runs, the interpreter, the bytecode its
    # start reads (bootenv.squash.PYTHON_STARTUP) and what the agent imports
    # before its ready marker (agent.main.START_IMPORTS, found by importing
    # them from the frozen tree); the rest of the agent stays in the
    # squashfs, each file once.
    hot = stage1 / "s1/usr/lib/python3.11"
    assert (stage1 / "s1/usr/bin/busybox").is_file()
    assert (stage1 / "s1/usr/bin/python3.11").is_file()
    hot_files = {p.relative_to(hot).as_posix() for p in hot.rglob("*") if p.is_file()}
    assert {"encodings/__init__.pyc", "encodings/aliases.pyc", "encodings/utf_8.pyc",
            "__future__.pyc", "agent/__init__.pyc", "agent/markers.pyc", "agent/main.pyc",
            "agent/start.pyc", "agent/session.pyc", "agent/report.pyc", "logging/__init__.pyc",
            "agent/params/__init__.pyc", "pathlib.pyc"} <= hot_files
    # Imported only after the marker (on the import thread, or by a phase).
    assert not hot_files & {"agent/flow.pyc", "agent/plan.pyc", "pyroute2/__init__.pyc",
                            "parted/__init__.pyc"}
    listing = subprocess.run(["unsquashfs", "-l", str(tmp_path / "first/sysclone.sqsh")],
                             capture_output=True, text=True, check=True).stdout
    squashed = {ln.removeprefix("squashfs-root") for ln in listing.splitlines()}
    assert "/usr/lib/python3.11/agent/flow.pyc" in squashed
    moved = {f"/usr/lib/python3.11/{f}" for f in hot_files} | {"/usr/bin/python3.11"}
    assert not squashed & moved
    # The list stays beside the frozen tree.
    assert not (root / "start-files").exists() and not (stage1 / "start-files").exists()
    alias = (root / f"usr/lib/modules/{kver}/modules.alias").read_text()
    assert " virtio_net" in alias and " virtio_blk" in alias
    assert any(p.name == "virtio_net.ko" for p in root.rglob("virtio_net.ko"))
    # FAT's default iocharset: without it no ESP can be mounted.
    assert list(root.rglob("nls_ascii.ko*")), "nls_ascii"
    # The firmware the standard drivers declare, where the kernel's loader looks.
    assert (root / "usr/lib/firmware/tigon/tg3.bin").is_file()
    assert len([p for p in (root / "usr/lib/firmware").rglob("*") if p.is_file()]) == \
        manifest["firmware"]["count"] > 0
    assert manifest["initrd"]["size"] == (a / "initrd.img").stat().st_size
    assert manifest["agent"]["python"].startswith("3.11")
    assert "rsync" in manifest["inputs"]["host_packages"]
    # The stage-1 script mounts exactly what it was given.
    init1 = (stage1 / "init").read_text()
    assert "lowerdir=/s1:/lower" in init1 and "/sysclone.sqsh" in init1


def _selftest(root: Path) -> None:
    """chroot into the unpacked boot environment: only what it carries is
    there, so a module or library the freeze forgot fails the import."""
    r = subprocess.run(["chroot", str(root), "/usr/bin/sysclone-agent", "selftest"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 failed" in r.stdout
    r = subprocess.run(["chroot", str(root), "/usr/bin/sysclone-agent", "phases"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[0].startswith("hardware")


def test_agent_runs_inside_the_unpacked_initrd(two_builds, tmp_path: Path,
                                               root_only: None) -> None:
    a, _, _ = two_builds
    _selftest(unpack(a / "initrd.img", tmp_path))


def test_one_archive_packing_runs_too(two_builds, tmp_path: Path, root_only: None) -> None:
    _, _, state = two_builds
    res = build_bootenv(state, Ui(quiet=True), output=tmp_path / "cpio", packing="cpio")
    assert res.data["initrd"]["packing"] == "cpio"
    root = unpack(res.initrd, tmp_path / "tree")
    assert (root / "init").read_text() == (Path(__file__).parents[2] /
                                           "bootenv/init.sh").read_text()
    _selftest(root)
