"""Configure by footprint on real golden trees (chroot, no VM): each network
style is the one chosen for its variant, writes what its own tools accept
(ifquery, netplan generate, systemctl, NetworkManager --print-config), and
each initrd tool builds an initrd that holds md, LVM, LUKS and btrfs
support, listed with the tool's own lister (lsinitramfs, lsinitrd)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.chroot import chroot_target
from agent.configure import netconfig
from agent.configure.footprint import best
from agent.configure.initrd import (
    MD_DEGRADED_SCRIPT,
    TOOLS,
    Dracut,
    InitramfsTools,
    InitrdError,
    kernel_versions,
)
from agent.configure.netconfig import STYLES, Addressing, NicIdentity
from agent.configure.netxml import parse_network_config
from tests.integration.goldentrees import Trees, chroot, overlay, trees  # noqa: F401

DATA = Path(__file__).resolve().parents[1] / "unit" / "data"
BOND_VLAN = DATA / "agent/netconfig/bond-vlan.xml"
NIC = NicIdentity("eth0", "52:54:00:00:01:03", {"ID_NET_NAME_PATH": "enp3s0",
                                                 "ID_NET_NAME_MAC": "enx525400000103"})
STATIC = Addressing("static", "192.168.77.5/24", "192.168.77.1", ("192.168.77.1",),
                    "lab.example")


@pytest.fixture
def itools(trees: Trees, tmp_path: Path):  # noqa: F811
    with overlay(trees.get("initramfs-tools"), tmp_path) as root:
        yield root


@pytest.fixture
def dracut(trees: Trees, tmp_path: Path):  # noqa: F811
    with overlay(trees.get("dracut-networkd"), tmp_path) as root:
        yield root


@pytest.fixture
def nm(trees: Trees, tmp_path: Path):  # noqa: F811
    with overlay(trees.get("network-manager"), tmp_path) as root:
        yield root


@pytest.fixture
def netplan(trees: Trees, tmp_path: Path):  # noqa: F811
    with overlay(trees.get("netplan"), tmp_path) as root:
        yield root


def style_of(root: Path) -> netconfig.Style:
    style = best(STYLES, root)
    assert style is not None
    return style


# -- network styles ---------------------------------------------------------------------------

def test_the_default_image_is_ifupdown_and_ifquery_reads_it(itools: Path) -> None:
    style = style_of(itools)
    assert style.name == "ifupdown"
    written = netconfig.configure(itools, style, NIC, STATIC).files
    assert written == ("/etc/network/interfaces.d/enp3s0", "/etc/resolv.conf")
    assert chroot(itools, "ifquery", "--list", "--allow=hotplug").stdout.split() == ["enp3s0"]
    got = dict(line.split(": ", 1) for line in
               chroot(itools, "ifquery", "enp3s0").stdout.splitlines())
    assert got == {"address": "192.168.77.5", "netmask": "255.255.255.0",
                   "broadcast": "192.168.77.255", "gateway": "192.168.77.1",
                   "dns-nameservers": "192.168.77.1", "dns-search": "lab.example"}


def test_networkd_is_chosen_enabled_and_configured(dracut: Path) -> None:
    style = style_of(dracut)
    assert style.name == "systemd-networkd"
    cfg = parse_network_config(BOND_VLAN.read_text(), BOND_VLAN.name)
    netconfig.configure(dracut, style, NIC, Addressing("dhcp"), cfg)
    r = chroot(dracut, "systemctl", "is-enabled", "systemd-networkd.service")
    assert r.stdout.strip() == "enabled"
    names = sorted(p.name for p in (dracut / "etc/systemd/network").iterdir())
    assert names == ["50-sysclone-525400000101.network", "50-sysclone-525400000102.network",
                     "50-sysclone-525400000103.network", "50-sysclone-bond0.120.netdev",
                     "50-sysclone-bond0.120.network", "50-sysclone-bond0.netdev",
                     "50-sysclone-bond0.network"]


def test_networkd_installed_but_off_is_enabled_when_written(itools: Path) -> None:
    """In the default image networkd ships unused (ifupdown is the style);
    written to explicitly, it is switched on, or it would never run."""
    assert chroot(itools, "systemctl", "is-enabled", "systemd-networkd.service",
                  check=False).stdout.strip() == "disabled"
    netconfig.configure(itools, netconfig.Networkd(), NIC, Addressing("dhcp"))
    assert chroot(itools, "systemctl", "is-enabled",
                  "systemd-networkd.service").stdout.strip() == "enabled"


def test_netplan_generates_what_was_written(netplan: Path) -> None:
    style = style_of(netplan)
    assert style.name == "netplan"
    cfg = parse_network_config(BOND_VLAN.read_text(), BOND_VLAN.name)
    netconfig.configure(netplan, style, NIC, Addressing("dhcp"), cfg)
    assert chroot(netplan, "systemctl", "is-enabled",
                  "systemd-networkd.service").stdout.strip() == "enabled"
    with chroot_target(netplan, efi=False):
        chroot(netplan, "netplan", "generate")
        gen = netplan / "run/systemd/network"
        files = {p.name: p.read_text() for p in gen.iterdir()}
    assert sorted(files) == ["10-netplan-bond0.120.netdev", "10-netplan-bond0.120.network",
                             "10-netplan-bond0.netdev", "10-netplan-bond0.network",
                             "10-netplan-enp1s0.network", "10-netplan-enp2s0.network",
                             "10-netplan-enp3s0.network"]
    assert "MACAddress=52:54:00:00:01:03" in files["10-netplan-enp3s0.network"]
    assert "DHCP=ipv4" in files["10-netplan-enp3s0.network"]
    assert "Bond=bond0" in files["10-netplan-enp1s0.network"]
    bond = files["10-netplan-bond0.netdev"]
    assert "Mode=802.3ad" in bond and "LACPTransmitRate=fast" in bond and \
        "TransmitHashPolicy=layer3+4" in bond and "MIIMonitorSec=100ms" in bond
    vlan = files["10-netplan-bond0.120.network"]
    assert "Address=192.0.2.10/24" in vlan and "Address=2001:db8:120::10/64" in vlan
    assert "DNS=192.0.2.53" in vlan and "Domains=prod.example" in vlan


def test_networkmanager_keyfiles_for_a_managed_nic(nm: Path) -> None:
    style = style_of(nm)
    assert style.name == "NetworkManager"
    cfg = parse_network_config(BOND_VLAN.read_text(), BOND_VLAN.name)
    written = netconfig.configure(nm, style, NIC, Addressing("dhcp"), cfg).files
    conns = nm / "etc/NetworkManager/system-connections"
    assert sorted(p.name for p in conns.iterdir()) == [
        "bond0.120.nmconnection", "bond0.nmconnection", "enp1s0.nmconnection",
        "enp2s0.nmconnection", "enp3s0.nmconnection"]
    assert all((conns / p).stat().st_mode & 0o077 == 0 for p in conns.iterdir())
    assert chroot(nm, "systemctl", "is-enabled",
                  "NetworkManager.service").stdout.strip() == "enabled"
    # Debian's configuration manages every device not in /etc/network/interfaces.
    assert not any("conf.d" in f for f in written)
    conf = chroot(nm, "NetworkManager", "--print-config").stdout
    assert re.search(r"^plugins=.*keyfile", conf, re.M) or "keyfile" in conf
    assert "unmanaged-devices" not in conf


# -- initrd tools -----------------------------------------------------------------------------

ALL = frozenset({"md", "lvm", "luks", "btrfs"})


def listing(root: Path, argv: list[str]) -> set[str]:
    out = chroot(root, *argv).stdout
    return {line.split()[-1].lstrip("./") for line in out.splitlines() if line.strip()}


def holds(files: set[str], *suffixes: str) -> list[str]:
    """The suffixes no file of the initrd ends with."""
    return [s for s in suffixes if not any(f.endswith(s) for f in files)]


WANTED = ("sbin/mdadm", "sbin/lvm", "sbin/cryptsetup", "/raid1.ko", "/dm-crypt.ko",
          "/dm-mod.ko", "/btrfs.ko")


def test_initramfs_tools_builds_md_lvm_luks_and_btrfs_in(itools: Path) -> None:
    tool = best(TOOLS, itools)
    assert isinstance(tool, InitramfsTools)
    assert tool.require(itools, ALL) == [MD_DEGRADED_SCRIPT]
    [kver] = kernel_versions(itools)
    with chroot_target(itools, efi=False):
        tool.regenerate(itools, [kver])
        files = listing(itools, ["lsinitramfs", f"/boot/initrd.img-{kver}"])
        # mkinitramfs put the degraded-start script in, and in its run order.
        order = chroot(itools, "sh", "-c", f"unmkinitramfs /boot/initrd.img-{kver} /tmp/u && "
                       "cat /tmp/u/main/scripts/init-premount/ORDER /tmp/u/scripts/"
                       "init-premount/ORDER 2>/dev/null; rm -rf /tmp/u", check=False).stdout
    assert holds({f.replace(".ko.xz", ".ko").replace(".ko.zst", ".ko") for f in files},
                 *WANTED, "scripts/init-premount/sysclone-md-degraded") == []
    assert "/scripts/init-premount/sysclone-md-degraded" in order, order


def test_initramfs_tools_without_lvm2_names_the_package(itools: Path) -> None:
    (itools / "usr/share/initramfs-tools/hooks/lvm2").unlink()
    with pytest.raises(InitrdError) as e:
        InitramfsTools().require(itools, frozenset({"lvm", "md"}))
    assert "the image lacks lvm2 (no /usr/share/initramfs-tools/hooks/lvm2)" in e.value.message
    assert e.value.hint == "install lvm2 in the golden image"


def test_dracut_builds_md_lvm_luks_and_btrfs_in(dracut: Path) -> None:
    tool = best(TOOLS, dracut)
    assert isinstance(tool, Dracut)
    assert tool.require(dracut, ALL) == ["etc/dracut.conf.d/50-sysclone.conf"]
    [kver] = kernel_versions(dracut)
    with chroot_target(dracut, efi=False):
        tool.regenerate(dracut, [kver])
        files = listing(dracut, ["lsinitrd", f"/boot/initrd.img-{kver}"])
        modules = chroot(dracut, "lsinitrd", "--mod", f"/boot/initrd.img-{kver}").stdout
    # A systemd initrd unlocks LUKS with systemd-cryptsetup, not cryptsetup.
    assert holds({f.replace(".ko.xz", ".ko").replace(".ko.zst", ".ko") for f in files},
                 *(w for w in WANTED if w != "sbin/cryptsetup"), "systemd-cryptsetup") == []
    assert {"mdraid", "lvm", "crypt", "btrfs"} <= set(modules.split())


def test_dracut_without_mdadm_names_the_package(dracut: Path) -> None:
    for p in ("sbin/mdadm", "usr/sbin/mdadm"):
        if (dracut / p).exists() and not (dracut / p).is_symlink():
            (dracut / p).unlink()
    with pytest.raises(InitrdError, match=r"lacks mdadm \(no /sbin/mdadm\)"):
        Dracut().require(dracut, frozenset({"md"}))
