"""Building a boot environment for real: the Debian cloud kernel (fetched,
or from the cache), the frozen agent, the host's tools.  Two builds from
the same inputs, each freezing the agent anew, must be byte-identical."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from bootenv import cpio
from bootenv.standard import build_bootenv
from sysclone.paths import StateRoot
from sysclone.ui import Ui


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


def test_initrd_contents(two_builds) -> None:
    a, _, _ = two_builds
    manifest = json.loads((a / "manifest.json").read_text())
    raw = subprocess.run(["zstd", "-dc", str(a / "initrd.img")], capture_output=True,
                         check=True).stdout
    members = {name: (mode, data) for name, mode, data in cpio.read_archive(raw)}
    kver = manifest["kernel"]["version"]
    for path in ("init", "usr/bin/busybox", "usr/bin/sysclone-agent", "usr/bin/python3.11",
                 "usr/bin/rsync", "usr/sbin/mke2fs", "usr/sbin/mkfs.xfs", "usr/bin/udevadm",
                 "usr/lib/python3.11/agent/flow.pyc", "usr/lib/python3.11/pyroute2/__init__.pyc",
                 f"usr/lib/modules/{kver}/modules.alias.bin", "dev/console"):
        assert path in members, path
    alias = members[f"usr/lib/modules/{kver}/modules.alias"][1].decode()
    assert " virtio_net" in alias and " virtio_blk" in alias
    assert any(n.endswith("/virtio_net.ko.xz") for n in members)
    assert manifest["initrd"]["size"] == (a / "initrd.img").stat().st_size
    assert manifest["initrd"]["uncompressed_size"] == len(raw)
    assert manifest["agent"]["python"].startswith("3.11")
    assert "rsync" in manifest["inputs"]["host_packages"]


def test_agent_runs_inside_the_unpacked_initrd(two_builds, tmp_path: Path,
                                               root_only: None) -> None:
    """chroot into the unpacked initramfs: only what the initrd carries is
    there, so a module or library the freeze forgot fails the import."""
    a, _, _ = two_builds
    tree = tmp_path / "initrd"
    tree.mkdir()
    raw = subprocess.run(["zstd", "-dc", str(a / "initrd.img")], capture_output=True,
                         check=True).stdout
    subprocess.run(["cpio", "-id", "--quiet"], input=raw, cwd=tree, check=True)
    r = subprocess.run(["chroot", str(tree), "/usr/bin/sysclone-agent", "selftest"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ", 0 failed" in r.stdout
    r = subprocess.run(["chroot", str(tree), "/usr/bin/sysclone-agent", "phases"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.splitlines()[0].startswith("hardware")
