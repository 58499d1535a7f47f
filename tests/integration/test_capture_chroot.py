"""`image chroot` for real: a command runs in a private copy with /proc,
/sys, /dev and /run mounted; its result is a new version sharing what did
not change; the mounts are gone afterwards, also when the command fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imageserver.names import ImageRef
from imageserver.store import ImageStore
from sysclone.cli import main
from sysclone.paths import StateRoot
from tests.integration.capturekit import sh

pytestmark = pytest.mark.usefixtures("root_only")


def tiny_system(root: Path) -> Path:
    """busybox and the libraries it needs: enough for /bin/sh."""
    for d in ("bin", "etc", "proc", "sys", "dev", "run", "usr/sbin", "tmp"):
        (root / d).mkdir(parents=True, exist_ok=True)
    busybox = Path(shutil.which("busybox") or "/bin/busybox")
    shutil.copy2(busybox, root / "bin/busybox")
    for line in sh("ldd", busybox).splitlines():
        lib = next((w for w in line.split() if w.startswith("/")), None)
        if lib:
            dest = root / lib.lstrip("/")
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(lib, dest)
    for tool in ("sh", "cat", "test", "echo", "grep", "ls", "false"):
        (root / "bin" / tool).symlink_to("busybox")
    (root / "etc/hostname").write_text("tiny\n")
    return root


def mounts_below(path: Path) -> list[str]:
    real = os.path.realpath(path)
    return [line for line in sh("findmnt", "-rn", "-o", "TARGET").splitlines()
            if line.startswith(str(path)) or line.startswith(real)]


def test_chroot_records_a_new_version_and_always_unmounts(tmp_path, state: StateRoot, capsys):
    root = ["--root", str(state.root)]
    assert main([*root, "image", "capture", "tiny", "--from", str(tiny_system(tmp_path / "t"))]
                ) == 0
    store = ImageStore(state)
    # Inside: the runtime filesystems are there, daemons are held back.
    script = ("test -r /proc/self/status && test -d /sys/kernel && test -c /dev/null "
              "&& test -x /usr/sbin/policy-rc.d && echo installed > /etc/motd")
    assert main([*root, "image", "chroot", "tiny", "--", "/bin/sh", "-c", script]) == 0
    assert "version 2: 2 path(s) changed" in capsys.readouterr().err  # /etc/motd and /etc
    assert store.versions.current("tiny") == 2
    assert (store.path("tiny") / "etc/motd").read_text() == "installed\n"
    v1 = store.tree(ImageRef("tiny", 1))
    assert not (v1 / "etc/motd").exists()  # the old version is untouched
    assert os.lstat(v1 / "bin/busybox").st_ino == os.lstat(store.path("tiny") / "bin/busybox"
                                                           ).st_ino
    assert not (store.path("tiny") / "usr/sbin/policy-rc.d").exists()
    assert main([*root, "image", "verify", "tiny@1"]) == 0
    assert mounts_below(state.images) == []
    # A failing command: nothing stored, nothing left mounted.
    capsys.readouterr()
    assert main([*root, "image", "chroot", "tiny", "--", "/bin/sh", "-c",
                 "echo half-done > /etc/motd; exit 3"]) == 1
    assert "exited with status 3 in image tiny: nothing was stored" in capsys.readouterr().err
    assert store.versions.numbers("tiny") == [1, 2]
    assert mounts_below(state.images) == []
    assert not list((state.images / ".versions/tiny").glob(".new-*"))
    # No change: no new version.
    assert main([*root, "image", "chroot", "tiny", "--", "/bin/sh", "-c", "cat /etc/motd"]) == 0
    assert "nothing changed, no new version" in capsys.readouterr().err
    assert store.versions.numbers("tiny") == [1, 2]
