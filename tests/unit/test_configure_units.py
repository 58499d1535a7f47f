"""Enabling systemd units in an image tree the way `systemctl enable` does,
without running anything: WantedBy/RequiredBy links, aliases, Also=."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure import units

NETWORKD = """\
[Unit]
Description=Network Configuration

[Service]
ExecStart=!!/lib/systemd/systemd-networkd

[Install]
WantedBy=multi-user.target
Also=systemd-networkd.socket
Alias=dbus-org.freedesktop.network1.service

# We want to enable systemd-networkd-wait-online.service whenever this service
# is enabled. So, let's list it here.
Also=systemd-networkd-wait-online.service
"""


def vendor(root: Path, name: str, text: str, d: str = "lib/systemd/system") -> Path:
    p = root / d / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


@pytest.fixture
def debian(tmp_path: Path) -> Path:
    vendor(tmp_path, "systemd-networkd.service", NETWORKD)
    vendor(tmp_path, "systemd-networkd.socket", "[Install]\nWantedBy=sockets.target\n")
    vendor(tmp_path, "systemd-networkd-wait-online.service",
           "[Install]\nWantedBy=network-online.target\n")
    return tmp_path


def test_enable_makes_the_links_systemctl_makes(debian: Path) -> None:
    assert units.enable(debian, "systemd-networkd.service") == [
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/etc/systemd/system/dbus-org.freedesktop.network1.service",
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket",
        "/etc/systemd/system/network-online.target.wants/systemd-networkd-wait-online.service",
    ]
    link = debian / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    # Absolute, inside the image: dangling from the boot environment, right
    # once the machine boots.
    assert str(link.readlink()) == "/lib/systemd/system/systemd-networkd.service"
    assert units.is_enabled(debian, "systemd-networkd.service")
    assert units.enable(debian, "systemd-networkd.service") == []  # already so


def test_the_admins_unit_in_etc_wins(debian: Path) -> None:
    vendor(debian, "systemd-networkd.service", "[Install]\nWantedBy=graphical.target\n",
           "etc/systemd/system")
    assert units.enable(debian, "systemd-networkd.service") == [
        "/etc/systemd/system/graphical.target.wants/systemd-networkd.service"]
    link = debian / "etc/systemd/system/graphical.target.wants/systemd-networkd.service"
    assert str(link.readlink()) == "/etc/systemd/system/systemd-networkd.service"


def test_a_unit_linked_into_etc_is_read_where_it_points(debian: Path) -> None:
    etc = debian / "etc/systemd/system"
    etc.mkdir(parents=True)
    (etc / "mine.service").symlink_to("/lib/systemd/system/systemd-networkd.socket")
    assert units.enable(debian, "mine.service") == [
        "/etc/systemd/system/sockets.target.wants/mine.service"]


def test_masked_units_are_refused(debian: Path) -> None:
    etc = debian / "etc/systemd/system"
    etc.mkdir(parents=True)
    (etc / "systemd-networkd.service").symlink_to("/dev/null")
    with pytest.raises(units.UnitError, match=r"systemd-networkd\.service is masked in the image"):
        units.enable(debian, "systemd-networkd.service")


def test_a_missing_unit_is_refused(tmp_path: Path) -> None:
    with pytest.raises(units.UnitError, match=r"the image has no NetworkManager\.service"):
        units.enable(tmp_path, "NetworkManager.service")


def test_install_section_parsing() -> None:
    assert units.install_section(NETWORKD) == {
        "WantedBy": ["multi-user.target"],
        "Also": ["systemd-networkd.socket", "systemd-networkd-wait-online.service"],
        "Alias": ["dbus-org.freedesktop.network1.service"]}
    assert units.install_section("[Install]\nWantedBy=a.target b.target\nWantedBy=\n") == \
        {"WantedBy": []}


def test_a_static_unit_has_nothing_to_link(tmp_path: Path) -> None:
    vendor(tmp_path, "static.service", "[Service]\nExecStart=/bin/true\n")
    assert units.enable(tmp_path, "static.service") == []
