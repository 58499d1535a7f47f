"""udevadm is hidden from GRUB only when the kernel's partition starts
stand in for udev's, never with os-prober on, and always given back
(agent.configure.grubprobe): fake sysfs trees, fake images, fake mounts."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from agent.configure import grubprobe
from tests.conftest import FakeCommands


def fake_sys(tmp_path: Path, parts: dict[str, int], disks: tuple[str, ...] = ("vda",)) -> Path:
    sys_root = tmp_path / "sys"
    block = sys_root / "class/block"
    for d in disks:
        (block / d).mkdir(parents=True)
    for name, start in parts.items():
        (block / name).mkdir(parents=True)
        (block / name / "partition").write_text("1\n")
        (block / name / "start").write_text(f"{start}\n")
    return sys_root


def merged_usr_image(tmp_path: Path, grub_default: str = "") -> Path:
    root = tmp_path / "root"
    for d in ("usr/bin", "usr/sbin", "run", "etc/default"):
        (root / d).mkdir(parents=True)
    (root / "bin").symlink_to("usr/bin")
    (root / "sbin").symlink_to("/usr/sbin")  # absolute: inside the image, not the host
    (root / "usr/bin/udevadm").write_bytes(b"\x7fELF")
    (root / "etc/default/grub").write_text(grub_default)
    return root


def test_every_partition_must_agree(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, {"vda1": 2048, "vda2": 4096, "nvme0n1p1": 2048})
    starts = {"vda1": 2048, "vda2": 4096, "nvme0n1p1": 2048}
    assert grubprobe.partitions_disagree(sys_root, tmp_path, lambda p: starts[p.name]) is None
    starts["vda2"] = 63
    assert grubprobe.partitions_disagree(sys_root, tmp_path, lambda p: starts[p.name]) == \
        "vda2 starts at 4096 by sysfs but at 63 by HDIO_GETGEO"


def test_a_driver_without_getgeo_keeps_udevadm(tmp_path: Path) -> None:
    sys_root = fake_sys(tmp_path, {"loop0p1": 2048}, ("loop0",))

    def no_getgeo(p: Path) -> int:
        raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY))

    assert grubprobe.partitions_disagree(sys_root, tmp_path, no_getgeo) == \
        "loop0p1: no HDIO_GETGEO"
    (sys_root / "class/block/loop0p1/start").write_text("x")
    assert "no readable start" in str(grubprobe.partitions_disagree(sys_root, tmp_path,
                                                                     lambda p: 0))
    assert "cannot be read" in str(grubprobe.partitions_disagree(tmp_path / "none", tmp_path))


def test_udevadm_is_found_through_the_images_own_links(tmp_path: Path) -> None:
    root = merged_usr_image(tmp_path)
    # /bin -> usr/bin and /usr/bin are one file: masked once.
    assert grubprobe.udevadm_copies(root) == [root / "usr/bin/udevadm"]
    (root / "usr/sbin/udevadm").symlink_to("/usr/bin/udevadm")
    assert grubprobe.udevadm_copies(root) == [root / "usr/bin/udevadm"]
    assert grubprobe.in_image(root, "/sbin/../bin/udevadm") == root / "usr/bin/udevadm"
    assert grubprobe.in_image(root, "/usr/bin/none") is None
    (root / "loop").symlink_to("loop")
    assert grubprobe.in_image(root, "/loop/x") is None


@pytest.mark.parametrize("settings, on", [
    ("", False),
    ("GRUB_DISABLE_OS_PROBER=true\n", False),
    ("GRUB_DISABLE_OS_PROBER=false\n", True),
    ('GRUB_DISABLE_OS_PROBER="false"\n', True),
    ("#GRUB_DISABLE_OS_PROBER=false\n", False),
])
def test_os_prober_setting(tmp_path: Path, settings: str, on: bool) -> None:
    root = merged_usr_image(tmp_path, settings)
    assert not grubprobe.os_prober_enabled(root)  # no os-prober installed
    (root / "usr/bin/os-prober").write_text("#!/bin/sh\n")
    assert grubprobe.os_prober_enabled(root) is on


def test_grub_d_overrides_the_default(tmp_path: Path) -> None:
    root = merged_usr_image(tmp_path, "GRUB_DISABLE_OS_PROBER=false\n")
    (root / "usr/bin/os-prober").write_text("#!/bin/sh\n")
    (root / "etc/default/grub.d").mkdir()
    (root / "etc/default/grub.d/50-off.cfg").write_text("GRUB_DISABLE_OS_PROBER=true\n")
    assert not grubprobe.os_prober_enabled(root)


def test_masked_for_the_block_and_given_back(tmp_path: Path,
                                            fake_commands: FakeCommands) -> None:
    root = merged_usr_image(tmp_path)
    sys_root = fake_sys(tmp_path, {"vda1": 2048})
    fake_commands.add(["mount"])
    fake_commands.add(["umount"])
    said: list[str] = []
    with grubprobe.without_udevadm(root, said.append, sys_root, tmp_path,
                                   lambda p: 2048) as hidden:
        assert hidden
        mask = root / "run" / grubprobe.MASK_NAME
        assert mask.read_bytes() == b"" and not os.access(mask, os.X_OK)
        assert fake_commands.calls == [["mount", "--bind", str(mask),
                                        str(root / "usr/bin/udevadm")]]
    assert fake_commands.calls[-1] == ["umount", str(root / "usr/bin/udevadm")]
    assert not (root / "run" / grubprobe.MASK_NAME).exists()
    assert said and "HDIO_GETGEO" in said[0]


def test_given_back_when_grub_fails(tmp_path: Path, fake_commands: FakeCommands) -> None:
    root = merged_usr_image(tmp_path)
    sys_root = fake_sys(tmp_path, {"vda1": 2048})
    fake_commands.add(["mount"])
    fake_commands.add(["umount"])
    with pytest.raises(RuntimeError), \
            grubprobe.without_udevadm(root, print, sys_root, tmp_path, lambda p: 2048):
        raise RuntimeError("update-grub failed")
    assert fake_commands.calls[-1][0] == "umount"


@pytest.mark.parametrize("case", ["disagree", "os-prober", "no-udevadm"])
def test_not_masked(tmp_path: Path, fake_commands: FakeCommands, case: str) -> None:
    root = merged_usr_image(tmp_path, "GRUB_DISABLE_OS_PROBER=false\n")
    sys_root = fake_sys(tmp_path, {"vda1": 2048})
    start = 2048
    if case == "disagree":
        start = 63
    elif case == "os-prober":
        (root / "usr/bin/os-prober").write_text("#!/bin/sh\n")
    else:
        (root / "usr/bin/udevadm").unlink()
    with grubprobe.without_udevadm(root, print, sys_root, tmp_path,
                                   lambda p: start) as hidden:
        assert not hidden
    assert fake_commands.calls == []
