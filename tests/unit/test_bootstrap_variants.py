"""`sysclone image bootstrap NAME --include ...` for the golden-image
variants: what an --include replaces, what goes through debootstrap and
what through apt afterwards, and systemd-networkd switched on in the tree
(commands faked)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver import bootstrap
from imageserver.bootstrap import DEFAULT_PACKAGES, BootstrapSpec, package_set, prepare_golden
from tests.conftest import FakeCommands, FakeResult


def test_the_default_set_is_unchanged_without_includes() -> None:
    assert package_set(()) == DEFAULT_PACKAGES
    # The cache key of the demo's image does not move.
    assert BootstrapSpec("http://m/debian", packages=package_set(())).cache_key("1.0") == \
        BootstrapSpec("http://m/debian").cache_key("1.0")


def test_dracut_replaces_initramfs_tools() -> None:
    got = package_set(["dracut", "mdadm"])
    assert "initramfs-tools" not in got and got[-2:] == ("dracut", "mdadm")


def test_systemd_networkd_replaces_ifupdown() -> None:
    got = package_set(["systemd-networkd", "systemd-resolved"])
    assert "ifupdown" not in got and "isc-dhcp-client" not in got
    assert got[-2:] == ("systemd-networkd", "systemd-resolved")


def test_includes_go_in_through_apt_after_debootstrap(tmp_path: Path,
                                                      fake_commands: FakeCommands) -> None:
    target = tmp_path / "tree"
    (target / "usr/sbin").mkdir(parents=True)
    (target / "etc").mkdir()
    (target / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    seen_policy: list[bool] = []

    def apt(argv: list[str]) -> FakeResult:
        seen_policy.append((target / "usr/sbin/policy-rc.d").is_file())
        return FakeResult()

    fake_commands.add(["debootstrap"], "I: Base system installed successfully.\n")
    fake_commands.add(["mount"], "")
    fake_commands.add(["umount"], "")
    fake_commands.add(["chroot", str(target), "apt-get"], apt)
    spec = BootstrapSpec("http://m/debian", packages=package_set(
        ["dracut", "systemd-networkd", "network-manager"]))
    bootstrap._run_debootstrap(spec, target, None)
    deboot = next(c for c in fake_commands.calls if c[0] == "debootstrap")
    include = next(a for a in deboot if a.startswith("--include=")).split("=", 1)[1].split(",")
    assert include == [p for p in DEFAULT_PACKAGES
                       if p not in ("initramfs-tools", "ifupdown", "isc-dhcp-client")]
    assert ["chroot", str(target), "apt-get", "install", "-y", "--no-install-recommends",
            "dracut", "network-manager"] in fake_commands.calls
    assert seen_policy == [True]  # no daemon started while installing
    assert not (target / "usr/sbin/policy-rc.d").exists()
    # The tree's resolver link is back as it was.
    assert str((target / "etc/resolv.conf").readlink()) == \
        "../run/systemd/resolve/stub-resolv.conf"


def test_a_failed_apt_install_is_one_line(tmp_path: Path, fake_commands: FakeCommands) -> None:
    target = tmp_path / "tree"
    (target / "usr/sbin").mkdir(parents=True)
    (target / "etc").mkdir()
    fake_commands.add(["debootstrap"], "")
    fake_commands.add(["mount"], "")
    fake_commands.add(["umount"], "")
    fake_commands.add(["chroot", str(target), "apt-get"], FakeResult(
        stderr="E: Unable to locate package netplan.oi\n", returncode=100))
    spec = BootstrapSpec("http://m/debian", packages=package_set(["netplan.oi"]))
    with pytest.raises(bootstrap.SyscloneError) as e:
        bootstrap._run_debootstrap(spec, target, None)
    assert e.value.message == ("apt-get install netplan.oi in the new tree failed: "
                               "E: Unable to locate package netplan.oi")


def test_prepare_golden_switches_networkd_on(tmp_path: Path) -> None:
    unit = tmp_path / "lib/systemd/system/systemd-networkd.service"
    unit.parent.mkdir(parents=True)
    unit.write_text("[Install]\nWantedBy=multi-user.target\n")
    (tmp_path / "etc").mkdir()
    (tmp_path / "var/cache/apt/archives").mkdir(parents=True)
    prepare_golden(tmp_path, BootstrapSpec("http://m/debian",
                                           packages=package_set(["systemd-networkd"])))
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert str(link.readlink()) == "/lib/systemd/system/systemd-networkd.service"
