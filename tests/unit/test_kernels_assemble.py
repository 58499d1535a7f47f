"""Kernel trees from system trees (kernels.assemble, kernels.fromtree):
symlinks followed inside the source, the newest kernel by Debian version
order, firmware the modules declare, and refusals.  depmod and modinfo
are faked by argv."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imageserver.store import ImageStore
from kernels import fromtree
from kernels.assemble import copy_firmware, kernel_versions, resolve_in
from kernels.tree import load
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.conftest import FakeCommands, FakeResult


def system_tree(root: Path, kvers: tuple[str, ...] = ("6.1.0-9-amd64", "6.1.0-10-amd64"),
                merged_usr: bool = True) -> Path:
    """A Debian-like tree: /lib -> usr/lib, /boot/vmlinuz-*, modules, firmware."""
    (root / "usr/lib").mkdir(parents=True)
    if merged_usr:
        (root / "lib").symlink_to("usr/lib")
    (root / "boot").mkdir()
    for kver in kvers:
        (root / "boot" / f"vmlinuz-{kver}").write_bytes(b"bzImage " + kver.encode())
        (root / "boot" / f"config-{kver}").write_text("CONFIG_X=y\n")
        (root / "boot" / f"System.map-{kver}").write_text(
            "ffffffff System.map: The real System.map is in the linux-image-dbg package\n")
        mods = root / "usr/lib/modules" / kver
        (mods / "kernel/drivers/net").mkdir(parents=True)
        (mods / "kernel/drivers/net/tg3.ko").write_bytes(b"\x7fELF tg3")
        (mods / "kernel/drivers/net/e1000e.ko").write_bytes(b"\x7fELF e1000e")
        (mods / "build").symlink_to("/usr/src/linux-headers-" + kver)
    fw = root / "usr/lib/firmware/tigon"
    fw.mkdir(parents=True)
    (fw / "tg3.bin").write_bytes(b"fw")
    # Debian's firmware packages link one name to another, absolutely too.
    (fw / "tg3_tso.bin").symlink_to("/lib/firmware/tigon/tg3.bin")
    return root


def fake_depmod_and_modinfo(fake: FakeCommands) -> None:
    def depmod(argv: list[str]) -> FakeResult:
        base, kver = Path(argv[2]), argv[3]
        d = base / "lib/modules" / kver
        mods = sorted(str(p.relative_to(d)) for p in d.rglob("*.ko"))
        (d / "modules.dep").write_text("".join(f"{m}:\n" for m in mods))
        (d / "modules.alias").write_text("alias pci:v000014E4d00001644sv*sd*bc*sc*i* tg3\n")
        return FakeResult()

    def modinfo(argv: list[str]) -> FakeResult:
        out = ""
        for f in argv[2:]:
            out += f"filename:       {f}\0"
            if f.endswith("tg3.ko"):
                out += "firmware=tigon/tg3.bin\0firmware=tigon/tg3_tso.bin\0" \
                       "firmware=tigon/tg3_tso5.bin\0"
        return FakeResult(stdout=out)

    fake.add(["depmod", "-b"], depmod)
    fake.add(["modinfo", "-0"], modinfo)


def test_resolve_in_follows_symlinks_inside_the_tree(tmp_path):
    root = system_tree(tmp_path / "img")
    assert resolve_in(root, "/lib/firmware/tigon/tg3_tso.bin") == \
        root / "usr/lib/firmware/tigon/tg3.bin"
    assert resolve_in(root, "/lib/../../../etc/passwd") is None  # never above the root
    (root / "boot/escape").symlink_to("/etc/hostname")
    assert resolve_in(root, "/boot/escape") is None  # the host's /etc is not the image's


def test_newest_kernel_is_chosen_by_debian_version_order(tmp_path):
    root = system_tree(tmp_path / "img")
    assert sorted(kernel_versions(root)) == ["6.1.0-10-amd64", "6.1.0-9-amd64"]
    assert fromtree.choose_version(root, None, "image x") == "6.1.0-10-amd64"
    assert fromtree.choose_version(root, "6.1.0-9-amd64", "image x") == "6.1.0-9-amd64"
    with pytest.raises(ConfigError, match=r"image x has no kernel 6\.2") as e:
        fromtree.choose_version(root, "6.2", "image x")
    assert "6.1.0-10-amd64, 6.1.0-9-amd64" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="has no kernel"):
        fromtree.choose_version(tmp_path, None, "image y")


def test_copy_firmware_takes_what_is_declared_and_there(tmp_path):
    root = system_tree(tmp_path / "img")
    got = copy_firmware(["tigon/tg3.bin", "tigon/tg3_tso.bin", "tigon/missing.bin", "../x"],
                        [(root, "lib/firmware")], tmp_path / "out")
    assert got == ["tigon/tg3.bin", "tigon/tg3_tso.bin"]
    assert not (tmp_path / "out/tigon/tg3_tso.bin").is_symlink()


@pytest.fixture
def state_with_image(tmp_path) -> StateRoot:
    state = StateRoot(tmp_path / "root", tmp_path / "cache")
    system_tree(ImageStore(state).path("golden"))
    return state


def test_kernel_from_an_image(state_with_image, fake_commands):
    fake_depmod_and_modinfo(fake_commands)
    tree = fromtree.add_from_image(state_with_image, "golden", "golden-k")
    assert tree.path == state_with_image.kernels / "golden-k"
    assert (tree.kver, tree.origin, tree.image) == ("6.1.0-10-amd64", "image", "golden")
    assert tree.vmlinuz.read_bytes() == b"bzImage 6.1.0-10-amd64"
    assert tree.config is not None and tree.system_map is None  # the placeholder is left out
    assert (tree.modules, tree.firmware) == (2, 2)
    assert (tree.firmware_dir / "tigon/tg3_tso.bin").read_bytes() == b"fw"
    assert not (tree.modules_dir / "build").exists()
    assert (tree.modules_dir / "modules.firmware").read_text() == (
        "e1000e:\ntg3: tigon/tg3.bin tigon/tg3_tso.bin tigon/tg3_tso5.bin\n")
    assert load(tree.path) == tree
    assert not [p for p in state_with_image.kernels.iterdir() if p.name.startswith(".")]
    # A second add under the same name is refused unless replacing.
    with pytest.raises(ConfigError, match="kernel golden-k exists already"):
        fromtree.add_from_image(state_with_image, "golden", "golden-k")
    again = fromtree.add_from_image(state_with_image, "golden", "golden-k", "6.1.0-9-amd64",
                                    replace=True)
    assert again.kver == "6.1.0-9-amd64"


def test_a_kernel_without_modules_is_refused(state_with_image, fake_commands):
    mods = ImageStore(state_with_image).path("golden") / "usr/lib/modules/6.1.0-10-amd64"
    for p in mods.rglob("*.ko"):
        p.unlink()
    with pytest.raises(ConfigError, match="holds no kernel modules"):
        fromtree.add_from_image(state_with_image, "golden", "k")
    assert fake_commands.calls == []
    assert not (state_with_image.kernels / "k").exists()


def test_unknown_image(state_with_image):
    with pytest.raises(ConfigError, match="unknown image 'nope'"):
        fromtree.add_from_image(state_with_image, "nope", "k")


def test_depmod_failure_leaves_nothing_behind(state_with_image, fake_commands):
    fake_commands.add(["depmod"], FakeResult(stderr="depmod: ERROR: bad", returncode=1))
    with pytest.raises(Exception, match="depmod"):
        fromtree.add_from_image(state_with_image, "golden", "k")
    assert os.listdir(state_with_image.kernels) == []
