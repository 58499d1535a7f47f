"""Network configuration of the installed system, each style written into an
image tree under tmp_path; the style chosen by footprint; the interface name
ifupdown and network-scripts need (udev's net_id + the image's NamePolicy)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent.configure import netconfig
from agent.configure.footprint import GENERIC, MAINLINE, NONE, PREFERRED, best, exists
from agent.configure.netconfig import (
    DEFAULT_POLICY,
    STYLES,
    Addressing,
    Ifupdown,
    Netplan,
    Networkd,
    NetworkManager,
    NetworkScripts,
    NicIdentity,
    installed_name,
    name_policy,
    parse_net_id,
)
from tests.unit.agentfakes import DATA

NET_ID = (DATA / "udevadm-net_id-virtio.txt").read_text()
NIC = NicIdentity("eth0", "02:fc:00:00:00:01", parse_net_id(NET_ID))
DHCP = Addressing("dhcp")
STATIC = Addressing("static", "10.0.0.57/24", "10.0.0.1", ("10.0.0.1", "9.9.9.9"),
                    "lab.example")


def touch(root: Path, *paths: str) -> None:
    for p in paths:
        f = root / p
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()


def enable(root: Path, unit: str, target: str = "multi-user.target") -> None:
    link = root / "etc/systemd/system" / f"{target}.wants" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(f"/usr/lib/systemd/system/{unit}")  # dangling outside the image: fine


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# -- net_id and the installed name -----------------------------------------------------------

def test_parse_net_id_of_a_virtio_nic() -> None:
    assert parse_net_id(NET_ID) == {"ID_NET_NAME_MAC": "enx02fc00000001",
                                    "ID_NET_NAME_PATH": "enp0s3"}


def test_parse_net_id_ignores_udevs_chatter() -> None:
    text = ("Using default interface naming scheme 'v252'.\n"
            "eth0: PCI path identifier: domain=0 bus=0 slot=3 func=0 phys_port= dev_port=0 "
            "→ p0s3\n"
            "ID_NET_NAMING_SCHEME=v252\n"
            "ID_NET_NAME_ONBOARD=eno1\n"
            "  ID_NET_NAME_SLOT=ens3  \n"
            "ID_NET_LABEL_ONBOARD=Embedded LOM 1 Port 1\n")
    assert parse_net_id(text) == {"ID_NET_NAME_ONBOARD": "eno1", "ID_NET_NAME_SLOT": "ens3"}


def test_debian_image_gets_the_path_name(tmp_path: Path) -> None:
    link = tmp_path / "usr/lib/systemd/network/99-default.link"
    link.parent.mkdir(parents=True)
    link.write_text((DATA / "99-default.link.debian12").read_text())
    assert name_policy(tmp_path) == ("keep", "kernel", "database", "onboard", "slot", "path")
    assert installed_name(NIC, tmp_path) == "enp0s3"
    # An onboard NIC (firmware index) wins over its path name, as with udev.
    onboard = NicIdentity("eth0", NIC.mac, {**NIC.udev_names, "ID_NET_NAME_ONBOARD": "eno1"})
    assert installed_name(onboard, tmp_path) == "eno1"


def test_image_policy_in_etc_overrides_the_vendors(tmp_path: Path) -> None:
    for d, policy in (("usr/lib/systemd/network", "kernel database onboard slot path"),
                      ("etc/systemd/network", "mac")):
        f = tmp_path / d / "99-default.link"
        f.parent.mkdir(parents=True)
        f.write_text(f"[Match]\nOriginalName=*\n\n[Link]\nNamePolicy={policy}\n")
    assert name_policy(tmp_path) == ("mac",)
    assert installed_name(NIC, tmp_path) == "enx02fc00000001"


def test_net_ifnames_0_keeps_the_kernel_name(tmp_path: Path) -> None:
    touch(tmp_path, "usr/lib/udev/rules.d/80-net-setup-link.rules")
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(
        'GRUB_DEFAULT=0\nGRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0 biosdevname=0"\n')
    assert name_policy(tmp_path) is None
    assert installed_name(NIC, tmp_path) == "eth0"


def test_udev_without_a_link_file_uses_udevs_default(tmp_path: Path) -> None:
    touch(tmp_path, "lib/udev/rules.d/80-net-setup-link.rules")
    assert name_policy(tmp_path) == DEFAULT_POLICY
    assert installed_name(NIC, tmp_path) == "enp0s3"


def test_no_udev_in_the_image_keeps_the_kernel_name(tmp_path: Path) -> None:
    assert name_policy(tmp_path) is None
    assert installed_name(NIC, tmp_path) == "eth0"


def test_no_udev_names_known_keeps_the_kernel_name(tmp_path: Path) -> None:
    touch(tmp_path, "usr/lib/udev/rules.d/80-net-setup-link.rules")
    assert installed_name(NicIdentity("eth0", NIC.mac), tmp_path) == "eth0"


# -- the styles: the install NIC alone ------------------------------------------------------

def unit(root: Path, name: str, install: str = "[Install]\nWantedBy=multi-user.target\n"
         ) -> None:
    """A vendor unit file, as the package installs it."""
    f = root / "usr/lib/systemd/system" / name
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(f"[Unit]\nDescription={name}\n\n[Service]\nExecStart=/bin/true\n\n{install}")


def systemd_image(root: Path) -> None:
    unit(root, "systemd-networkd.service",
         "[Install]\nWantedBy=multi-user.target\nAlso=systemd-networkd.socket\n"
         "Alias=dbus-org.freedesktop.network1.service\n")
    unit(root, "systemd-networkd.socket", "[Install]\nWantedBy=sockets.target\n")
    unit(root, "NetworkManager.service",
         "[Install]\nWantedBy=multi-user.target\nAlias=dbus-org.freedesktop.nm.service\n")


def write(style: netconfig.Style, root: Path, addr: Addressing,
          nic: NicIdentity = NIC) -> list[str]:
    systemd_image(root)
    return list(netconfig.configure(root, style, nic, addr).files)


def test_networkd_matches_by_mac_and_is_enabled(tmp_path: Path) -> None:
    assert write(Networkd(), tmp_path, DHCP) == [
        "/etc/systemd/network/50-sysclone-02fc00000001.network",
        "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service",
        "/etc/systemd/system/dbus-org.freedesktop.network1.service",
        "/etc/systemd/system/sockets.target.wants/systemd-networkd.socket"]
    f = tmp_path / "etc/systemd/network/50-sysclone-02fc00000001.network"
    assert f.read_text() == ("# written by sysclone\n[Match]\nMACAddress=02:fc:00:00:00:01\n\n"
                             "[Network]\nDHCP=ipv4\n")
    write(Networkd(), tmp_path, STATIC)
    assert f.read_text().splitlines()[5:] == [
        "Address=10.0.0.57/24", "Gateway=10.0.0.1", "DNS=10.0.0.1", "DNS=9.9.9.9",
        "Domains=lab.example"]
    assert mode(f) == 0o644
    link = tmp_path / "etc/systemd/system/multi-user.target.wants/systemd-networkd.service"
    assert str(link.readlink()) == "/usr/lib/systemd/system/systemd-networkd.service"


def test_networkmanager_keyfile_is_private(tmp_path: Path) -> None:
    written = write(NetworkManager(), tmp_path, STATIC)
    assert written == ["/etc/NetworkManager/system-connections/sysclone-install.nmconnection",
                       "/etc/systemd/system/multi-user.target.wants/NetworkManager.service",
                       "/etc/systemd/system/dbus-org.freedesktop.nm.service"]
    f = tmp_path / written[0].lstrip("/")
    assert mode(f) == 0o600  # NetworkManager ignores keyfiles others can read
    text = f.read_text()
    uuid = text.splitlines()[2]
    assert uuid.startswith("uuid=")
    assert text == (
        f"[connection]\nid=sysclone-install\n{uuid}\ntype=ethernet\nautoconnect=true\n"
        "autoconnect-priority=10\n\n"
        "[ethernet]\nmac-address=02:FC:00:00:00:01\n\n"
        "[ipv4]\nmethod=manual\naddress1=10.0.0.57/24,10.0.0.1\ndns=10.0.0.1;9.9.9.9;\n"
        "dns-search=lab.example;\n\n"
        "[ipv6]\nmethod=auto\n")
    write(NetworkManager(), tmp_path, DHCP)
    assert "[ipv4]\nmethod=auto\n" in f.read_text()
    assert "address1" not in f.read_text()
    assert f.read_text().splitlines()[2] == uuid  # the same connection, rewritten


def test_netplan_names_its_renderer_and_enables_it(tmp_path: Path) -> None:
    written = write(Netplan(), tmp_path, DHCP)
    assert written[0] == "/etc/netplan/50-sysclone.yaml"
    assert "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service" in written
    f = tmp_path / "etc/netplan/50-sysclone.yaml"
    assert mode(f) == 0o600
    assert f.read_text() == ("# written by sysclone\nnetwork:\n  version: 2\n"
                             "  renderer: networkd\n  ethernets:\n    \"install\":\n"
                             "      match:\n        macaddress: \"02:fc:00:00:00:01\"\n"
                             "      dhcp4: true\n")
    write(Netplan(), tmp_path, STATIC)
    assert f.read_text().splitlines()[8:] == [
        '      addresses: ["10.0.0.57/24"]', "      routes:", "        - to: default",
        '          via: "10.0.0.1"', "      nameservers:",
        '        search: ["lab.example"]', '        addresses: ["10.0.0.1", "9.9.9.9"]']


def test_netplan_renders_for_networkmanager_where_it_runs(tmp_path: Path) -> None:
    touch(tmp_path, "usr/sbin/netplan", "usr/sbin/NetworkManager")
    enable(tmp_path, "NetworkManager.service")
    written = write(Netplan(), tmp_path, DHCP)
    assert "  renderer: NetworkManager" in (tmp_path / "etc/netplan/50-sysclone.yaml"
                                             ).read_text().splitlines()
    assert not any("systemd-networkd" in w for w in written)


DEBIAN_INTERFACES = """\
# This file describes the network interfaces available on your system
# and how to activate them. For more information, see interfaces(5).

source /etc/network/interfaces.d/*

# The loopback network interface
auto lo
iface lo inet loopback
"""


def debian_image(root: Path, interfaces: str = DEBIAN_INTERFACES) -> None:
    touch(root, "usr/sbin/ifup", "usr/lib/udev/rules.d/80-net-setup-link.rules")
    link = root / "usr/lib/systemd/network/99-default.link"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.write_text((DATA / "99-default.link.debian12").read_text())
    (root / "etc/network").mkdir(parents=True)
    (root / "etc/network/interfaces").write_text(interfaces)


def test_ifupdown_uses_the_predicted_name(tmp_path: Path) -> None:
    debian_image(tmp_path)
    assert write(Ifupdown(), tmp_path, DHCP) == ["/etc/network/interfaces.d/enp0s3"]
    assert (tmp_path / "etc/network/interfaces.d/enp0s3").read_text() == (
        "# 02:fc:00:00:00:01: written by sysclone\nallow-hotplug enp0s3\n"
        "iface enp0s3 inet dhcp\n")
    assert (tmp_path / "etc/network/interfaces").read_text() == DEBIAN_INTERFACES


def test_ifupdown_static_and_net_ifnames_0(tmp_path: Path) -> None:
    debian_image(tmp_path)
    (tmp_path / "etc/default").mkdir()
    (tmp_path / "etc/default/grub").write_text('GRUB_CMDLINE_LINUX="net.ifnames=0"\n')
    # No resolvconf or systemd-resolved: dns-nameservers alone would be
    # read by nobody, so resolv.conf gets the servers too.
    assert write(Ifupdown(), tmp_path, STATIC) == ["/etc/network/interfaces.d/eth0",
                                                   "/etc/resolv.conf"]
    assert (tmp_path / "etc/network/interfaces.d/eth0").read_text().splitlines() == [
        "# 02:fc:00:00:00:01: written by sysclone", "allow-hotplug eth0",
        "iface eth0 inet static", "    address 10.0.0.57/24", "    gateway 10.0.0.1",
        "    dns-nameservers 10.0.0.1 9.9.9.9", "    dns-search lab.example"]
    assert (tmp_path / "etc/resolv.conf").read_text().splitlines()[1:] == [
        "search lab.example", "nameserver 10.0.0.1", "nameserver 9.9.9.9"]


@pytest.mark.parametrize("resolver", ["resolvconf", "systemd-resolved", "link"])
def test_ifupdown_leaves_resolv_conf_to_a_resolver(tmp_path: Path, resolver: str) -> None:
    debian_image(tmp_path)
    if resolver == "resolvconf":
        touch(tmp_path, "sbin/resolvconf")
    elif resolver == "systemd-resolved":
        enable(tmp_path, "systemd-resolved.service")
    else:
        (tmp_path / "etc/resolv.conf").symlink_to("../run/systemd/resolve/stub-resolv.conf")
    assert write(Ifupdown(), tmp_path, STATIC) == ["/etc/network/interfaces.d/enp0s3"]


def test_ifupdown_adds_the_source_line_when_missing(tmp_path: Path) -> None:
    debian_image(tmp_path, interfaces="auto lo\niface lo inet loopback\n")
    written = write(Ifupdown(), tmp_path, DHCP)
    assert written == ["/etc/network/interfaces.d/enp0s3", "/etc/network/interfaces"]
    assert (tmp_path / "etc/network/interfaces").read_text() == (
        "auto lo\niface lo inet loopback\n\nsource /etc/network/interfaces.d/*\n")


def test_network_scripts(tmp_path: Path) -> None:
    touch(tmp_path, "usr/lib/udev/rules.d/80-net-setup-link.rules")
    (tmp_path / "etc/sysconfig/network-scripts").mkdir(parents=True)
    assert write(NetworkScripts(), tmp_path, STATIC) == \
        ["/etc/sysconfig/network-scripts/ifcfg-enp0s3"]
    assert (tmp_path / "etc/sysconfig/network-scripts/ifcfg-enp0s3").read_text() == (
        "DEVICE=enp0s3\nHWADDR=02:fc:00:00:00:01\nONBOOT=yes\nTYPE=Ethernet\n"
        "BOOTPROTO=none\nIPADDR=10.0.0.57\nPREFIX=24\nGATEWAY=10.0.0.1\n"
        "DNS1=10.0.0.1\nDNS2=9.9.9.9\nDOMAIN=\"lab.example\"\n")
    write(NetworkScripts(), tmp_path, DHCP)
    assert "BOOTPROTO=dhcp\n" in \
        (tmp_path / "etc/sysconfig/network-scripts/ifcfg-enp0s3").read_text()


# -- which style: footprints -----------------------------------------------------------------

def scores(root: Path) -> dict[str, int]:
    return {s.name: s.fits(root) for s in STYLES}


def test_networkd_installed_alone_is_the_last_resort(tmp_path: Path) -> None:
    """Every systemd image carries networkd: unused unless enabled, but the
    style to write when nothing else is there (it is enabled then)."""
    touch(tmp_path, "usr/lib/systemd/systemd-networkd")
    assert scores(tmp_path)["systemd-networkd"] == GENERIC
    touch(tmp_path, "sbin/ifup")  # ifupdown without an interfaces file: a tie, networkd first
    style = best(STYLES, tmp_path)
    assert style is not None and style.name == "systemd-networkd"
    (tmp_path / "etc/network").mkdir(parents=True)
    (tmp_path / "etc/network/interfaces").write_text("auto lo\n")
    style = best(STYLES, tmp_path)
    assert style is not None and style.name == "ifupdown"


def test_ubuntu_server_netplan_on_networkd(tmp_path: Path) -> None:
    touch(tmp_path, "usr/sbin/netplan", "usr/lib/systemd/systemd-networkd")
    enable(tmp_path, "systemd-networkd.service")
    assert scores(tmp_path) == {"systemd-networkd": PREFERRED, "NetworkManager": NONE,
                                "netplan": PREFERRED, "ifupdown": NONE,
                                "network-scripts": NONE}
    style = best(STYLES, tmp_path)
    # A tie; netplan comes first because it generates networkd's files.
    assert style is not None and style.name == "netplan"


def test_enablement_links_need_not_resolve_outside_the_image(tmp_path: Path) -> None:
    # `systemctl enable` writes absolute links; seen from the boot
    # environment they point at files it does not have.
    touch(tmp_path, "usr/lib/systemd/systemd-networkd")
    wants = tmp_path / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True)
    (wants / "systemd-networkd.service").symlink_to(
        "/nonexistent-outside-the-image/systemd-networkd.service")
    assert Networkd().fits(tmp_path) == PREFERRED


def test_networkd_installed_but_not_enabled_does_not_count(tmp_path: Path) -> None:
    touch(tmp_path, "lib/systemd/systemd-networkd", "sbin/ifup")
    (tmp_path / "etc/network").mkdir(parents=True)
    (tmp_path / "etc/network/interfaces").write_text("auto lo\n")
    style = best(STYLES, tmp_path)
    assert style is not None and style.name == "ifupdown"
    assert style.fits(tmp_path) == MAINLINE


def test_rhel_with_networkmanager_and_network_scripts(tmp_path: Path) -> None:
    touch(tmp_path, "usr/sbin/NetworkManager")
    (tmp_path / "etc/sysconfig/network-scripts").mkdir(parents=True)
    assert scores(tmp_path)["NetworkManager"] == MAINLINE  # installed, not enabled
    style = best(STYLES, tmp_path)
    assert style is not None and style.name == "NetworkManager"  # tie: list order
    enable(tmp_path, "NetworkManager.service")
    assert scores(tmp_path)["NetworkManager"] == PREFERRED


def test_ifup_without_interfaces_file_is_generic(tmp_path: Path) -> None:
    touch(tmp_path, "sbin/ifup")
    assert scores(tmp_path)["ifupdown"] == GENERIC


def test_no_known_style(tmp_path: Path) -> None:
    assert best(STYLES, tmp_path) is None


class _Fp:
    def __init__(self, name: str, score: int) -> None:
        self.name = name
        self.score = score

    def fits(self, root: Path) -> int:
        return self.score


def test_best_prefers_the_higher_score_then_the_earlier() -> None:
    a, b, c, d = _Fp("a", GENERIC), _Fp("b", MAINLINE), _Fp("c", MAINLINE), _Fp("d", NONE)
    assert best([a, b, c, d], Path("/nonexistent")) is b
    assert best([c, b, a], Path("/nonexistent")) is c
    assert best([d], Path("/nonexistent")) is None
    assert best([], Path("/nonexistent")) is None


def test_exists_judges_symlinks_inside_the_image(tmp_path: Path) -> None:
    (tmp_path / "usr/sbin").mkdir(parents=True)
    # An absolute link is dangling from outside the image: it still counts.
    (tmp_path / "usr/sbin/ifup").symlink_to("/sbin/ifup-real-in-image")
    assert exists(tmp_path, "/usr/sbin/ifup")
    assert exists(tmp_path, "nothing", "usr/sbin/ifup")
    assert not exists(tmp_path, "usr/sbin/ifdown")


def test_every_style_is_offered() -> None:
    assert [s.name for s in netconfig.STYLES] == [
        "netplan", "systemd-networkd", "NetworkManager", "ifupdown", "network-scripts"]


@pytest.mark.parametrize("style", STYLES, ids=lambda s: s.name)
def test_every_style_writes_below_the_root_only(style: netconfig.Style, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "etc/sysconfig/network-scripts").mkdir(parents=True)
    written = write(style, root, STATIC)
    assert written
    for w in written:
        assert w.startswith("/etc/")
        p = root / w.lstrip("/")
        assert p.is_file() or (p.is_symlink() and w.startswith("/etc/systemd/system/"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["root"]
