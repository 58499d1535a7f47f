"""The initrd tools and what the layout needs inside the initrd: each tool
told in its own configuration, an image without the package that provides
the tool's support refused by package name; Arch's mkinitcpio (presets,
HOOKS) on a fake tree."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure.footprint import best
from agent.configure.initrd import (
    MD_DEGRADED_SCRIPT,
    TOOLS,
    Dracut,
    InitramfsTools,
    InitrdError,
    InitrdTool,
    Mkinitcpio,
    features_of,
    is_initrd_input,
)
from agent.configure.initrdpolicy import storage_needs
from tests.conftest import FakeCommands


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()


ALL = frozenset({"md", "lvm", "luks", "btrfs"})


def test_features_from_the_storage_needs() -> None:
    needs = storage_needs("btrfs", ["virtio_blk"], {"md", "lvm", "luks"}, {"raid1"}, set())
    assert features_of(needs) == ALL
    assert features_of(storage_needs("ext4", [], set(), set(), set())) == frozenset()
    assert features_of(storage_needs("xfs", [], {"lvm"}, set(), set())) == {"lvm"}


# -- initramfs-tools ----------------------------------------------------------------------

HOOKS = "usr/share/initramfs-tools/hooks/"


def test_initramfs_tools_needs_the_packages_hooks(tmp_path: Path) -> None:
    touch(tmp_path, "usr/sbin/update-initramfs", HOOKS + "mdadm")
    tool = InitramfsTools()
    assert tool.require(tmp_path, frozenset({"md"})) == [MD_DEGRADED_SCRIPT]
    with pytest.raises(InitrdError) as e:
        tool.require(tmp_path, ALL)
    assert e.value.message == (
        "the layout needs a btrfs root, LUKS, LVM in the initrd, but the image lacks "
        "btrfs-progs (no /usr/share/initramfs-tools/hooks/btrfs); cryptsetup-initramfs (no "
        "/usr/share/initramfs-tools/hooks/cryptroot); lvm2 (no "
        "/usr/share/initramfs-tools/hooks/lvm2): initramfs-tools could not build an initrd "
        "that mounts root")
    assert e.value.hint == "install btrfs-progs, cryptsetup-initramfs, lvm2 in the golden image"
    touch(tmp_path, HOOKS + "lvm2", HOOKS + "cryptroot", HOOKS + "btrfs")
    # The degraded-start script is written once; the same again writes nothing.
    assert tool.require(tmp_path, ALL) == []


def test_initramfs_tools_starts_root_arrays_degraded_in_time(tmp_path: Path) -> None:
    """Root on md: an init-premount script starts incomplete arrays before
    cryptroot and LVM look for them; without md nothing is written."""
    touch(tmp_path, "usr/sbin/update-initramfs", HOOKS + "mdadm", HOOKS + "lvm2")
    tool = InitramfsTools()
    assert tool.require(tmp_path, frozenset({"lvm"})) == []
    assert not (tmp_path / MD_DEGRADED_SCRIPT).exists()
    assert tool.require(tmp_path, frozenset({"md", "lvm"})) == [MD_DEGRADED_SCRIPT]
    script = tmp_path / MD_DEGRADED_SCRIPT
    assert script.stat().st_mode & 0o777 == 0o755
    text = script.read_text()
    # initramfs-tools' script protocol, and the arrays it waits for.
    assert text.startswith("#!/bin/sh\n") and "prereqs) prereqs; exit 0" in text
    assert "/etc/mdadm/mdadm.conf" in text and "mdadm -q --assemble --scan --run" in text
    # Under /etc/initramfs-tools: sent along when the server builds the initrd.
    assert is_initrd_input(MD_DEGRADED_SCRIPT)


# -- dracut -------------------------------------------------------------------------------

def test_dracut_is_told_which_modules_the_layout_needs(tmp_path: Path) -> None:
    touch(tmp_path, "usr/bin/dracut", "sbin/mdadm", "sbin/lvm", "sbin/cryptsetup")
    tool = Dracut()
    assert tool.require(tmp_path, frozenset()) == []
    assert tool.require(tmp_path, frozenset({"md", "lvm", "luks"})) == \
        ["etc/dracut.conf.d/50-sysclone.conf"]
    assert (tmp_path / "etc/dracut.conf.d/50-sysclone.conf").read_text() == (
        "# written by sysclone: what the layout needs to mount root\n"
        'add_dracutmodules+=" crypt lvm mdraid "\n')
    # The same again writes nothing (and so sends nothing to the server).
    assert tool.require(tmp_path, frozenset({"md", "lvm", "luks"})) == []


def test_dracut_without_cryptsetup(tmp_path: Path) -> None:
    touch(tmp_path, "usr/bin/dracut", "usr/sbin/lvm")
    with pytest.raises(InitrdError, match=r"lacks cryptsetup \(no /sbin/cryptsetup\): dracut "
                                          r"could not build"):
        Dracut().require(tmp_path, frozenset({"lvm", "luks"}))
    assert not (tmp_path / "etc/dracut.conf.d").exists()


def test_a_tool_that_cannot_be_told(tmp_path: Path) -> None:
    assert InitrdTool().require(tmp_path, frozenset()) == []
    with pytest.raises(InitrdError, match="sysclone cannot tell none to include LVM"):
        InitrdTool().require(tmp_path, frozenset({"lvm"}))


# -- mkinitcpio ---------------------------------------------------------------------------

ARCH_HOOKS = ("base udev autodetect microcode modconf kms keyboard keymap consolefont block "
              "filesystems fsck")
ARCH_CONF = f"# vim:set ft=sh\nMODULES=()\nBINARIES=()\nFILES=()\nHOOKS=({ARCH_HOOKS})\n"
KVER = "6.6.8-arch1-1"


def arch(root: Path, conf: str = ARCH_CONF) -> Path:
    touch(root, "usr/bin/mkinitcpio", f"usr/lib/modules/{KVER}/vmlinuz",
          "boot/initramfs-linux.img",
          *(f"usr/lib/initcpio/install/{h}" for h in ("mdadm_udev", "lvm2", "encrypt",
                                                        "sd-encrypt")))
    (root / f"usr/lib/modules/{KVER}/pkgbase").write_text("linux\n")
    (root / "etc/mkinitcpio.d").mkdir(parents=True)
    (root / "etc/mkinitcpio.d/linux.preset").write_text(
        "ALL_kver=\"/boot/vmlinuz-linux\"\nPRESETS=('default')\n"
        "default_image=\"/boot/initramfs-linux.img\"\n")
    (root / "etc/mkinitcpio.conf").write_text(conf)
    return root


def test_mkinitcpio_is_found_and_knows_its_images(tmp_path: Path) -> None:
    root = arch(tmp_path)
    tool = best(TOOLS, root)
    assert isinstance(tool, Mkinitcpio)
    assert tool.initrd_path(root, KVER) == root / "boot/initramfs-linux.img"
    assert not tool.builds_generic(root)  # autodetect: built where it boots


def test_mkinitcpio_regenerates_by_preset(tmp_path: Path, fake_commands: FakeCommands) -> None:
    root = arch(tmp_path)
    fake_commands.add(["chroot", str(root), "mkinitcpio"], "")
    Mkinitcpio().regenerate(root, [KVER, "6.1.0-custom"])
    assert fake_commands.calls == [
        ["chroot", str(root), "mkinitcpio", "-p", "linux"],
        ["chroot", str(root), "mkinitcpio", "-k", "6.1.0-custom", "-g",
         "/boot/initramfs-6.1.0-custom.img"]]


def test_mkinitcpio_gets_the_hooks_before_filesystems(tmp_path: Path) -> None:
    root = arch(tmp_path)
    assert Mkinitcpio().require(root, frozenset({"md", "lvm", "luks"})) == \
        ["etc/mkinitcpio.conf"]
    text = (root / "etc/mkinitcpio.conf").read_text()
    assert text == ARCH_CONF.replace(
        "block filesystems", "block mdadm_udev encrypt lvm2 filesystems")
    assert Mkinitcpio().require(root, frozenset({"md", "lvm", "luks"})) == []


def test_mkinitcpio_with_systemd_uses_sd_encrypt(tmp_path: Path) -> None:
    conf = "HOOKS=(\n  base systemd autodetect modconf\n  filesystems fsck\n)\n"
    root = arch(tmp_path, conf)
    Mkinitcpio().require(root, frozenset({"luks"}))
    assert (root / "etc/mkinitcpio.conf").read_text() == \
        "HOOKS=(base systemd autodetect modconf block sd-encrypt filesystems fsck)\n"


def test_mkinitcpio_without_lvm2(tmp_path: Path) -> None:
    root = arch(tmp_path)
    (root / "usr/lib/initcpio/install/lvm2").unlink()
    with pytest.raises(InitrdError, match=r"the image lacks lvm2 \(no "
                                          r"/usr/lib/initcpio/install/lvm2\)"):
        Mkinitcpio().require(root, frozenset({"lvm"}))


def test_mkinitcpio_without_hooks_line(tmp_path: Path) -> None:
    root = arch(tmp_path, "MODULES=()\n")
    with pytest.raises(InitrdError, match="has no HOOKS="):
        Mkinitcpio().require(root, frozenset({"md"}))
    assert Mkinitcpio().require(root, frozenset()) == []


@pytest.mark.parametrize("tool", [InitramfsTools(), Dracut()], ids=lambda t: t.name)
def test_an_initrd_that_unlocks_luks_is_built_on_the_client(tmp_path: Path,
                                                            tool: InitrdTool) -> None:
    """Its crypttab entries are resolved from the devices under /, and its
    key files stay on the client: the image server cannot build it."""
    assert tool.builds_generic(tmp_path)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/crypttab").write_text("# <target name> <source device> ...\n")
    assert tool.builds_generic(tmp_path)
    (tmp_path / "etc/crypttab").write_text("root UUID=1234 /etc/cryptsetup-keys.d/root.key luks\n")
    assert not tool.builds_generic(tmp_path)
