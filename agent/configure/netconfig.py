"""Network configuration for the installed system.

The install NIC is configured the way it was brought up for the install
(DHCP, or the static IPADDR/NETMASK/GATEWAY given), plus whatever the
server's network configuration (si.network-config, SystemImager's
net-config.xml: more NICs, bonds, VLANs, aliases, IPv6) describes, in
whatever style the image uses: systemd-networkd, NetworkManager, netplan,
ifupdown or RHEL's network-scripts (one module each, net_*.py; registered
in STYLES below).  A style that cannot express a setting refuses it by
name, before anything is written.

Styles that can match the NIC by MAC address do; ifupdown and
network-scripts name it, so the install NIC is given the name udev will
give it on the installed system (computed with udev's own net_id builtin,
under the image's naming policy), not the kernel's eth0 of the boot
environment.  What a style writes to, it also enables (systemctl enable,
done on the tree): an image can carry networkd or NetworkManager unused.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from agent.configure.footprint import best, exists
from agent.configure.net_ifcfg import NetworkScripts
from agent.configure.net_ifupdown import Ifupdown
from agent.configure.net_netplan import Netplan
from agent.configure.net_networkd import Networkd
from agent.configure.net_nm import NetworkManager
from agent.configure.netmodel import (
    Addressing,
    Iface,
    NetConfigError,
    NicIdentity,
    check_set,
    install_iface,
    with_install_nic,
)
from agent.configure.netstyle import Style, Written
from agent.configure.netxml import NetworkConfig, parse_network_config

log = logging.getLogger(__name__)

__all__ = [
    "STYLES",
    "Addressing",
    "Iface",
    "Ifupdown",
    "NetConfigError",
    "Netplan",
    "NetworkConfig",
    "NetworkManager",
    "NetworkScripts",
    "Networkd",
    "NicIdentity",
    "Style",
    "Written",
    "configure",
    "installed_name",
    "parse_net_id",
    "parse_network_config",
]


# udev's NamePolicy words -> the net_id property each one reads.
_POLICY_PROPS = {"database": "ID_NET_NAME_FROM_DATABASE", "onboard": "ID_NET_NAME_ONBOARD",
                 "slot": "ID_NET_NAME_SLOT", "path": "ID_NET_NAME_PATH",
                 "mac": "ID_NET_NAME_MAC"}
DEFAULT_POLICY = ("kernel", "database", "onboard", "slot", "path")


def parse_net_id(text: str) -> dict[str, str]:
    """Properties printed by `udevadm test-builtin net_id /sys/class/net/X`."""
    props = {}
    for line in text.splitlines():
        m = re.match(r"^(ID_NET_NAME_\w+)=(\S+)$", line.strip())
        if m:
            props[m.group(1)] = m.group(2)
    return props


def name_policy(root: Path) -> tuple[str, ...] | None:
    """The image's NamePolicy, or None when predictable names are off."""
    grub = root / "etc/default/grub"
    if grub.is_file() and re.search(r"^[^#]*net\.ifnames=0", grub.read_text(), re.M):
        return None
    for d in ("etc/systemd/network", "run/systemd/network", "usr/lib/systemd/network",
              "lib/systemd/network"):
        link = root / d / "99-default.link"
        if link.is_file():
            m = re.search(r"^NamePolicy=(.*)$", link.read_text(), re.M)
            if m:
                return tuple(m.group(1).split())
            break
    if not exists(root, "usr/lib/udev", "lib/udev"):
        return None
    return DEFAULT_POLICY


def installed_name(nic: NicIdentity, root: Path) -> str:
    policy = name_policy(root)
    if policy is None:
        return nic.kernel_name
    for word in policy:
        prop = _POLICY_PROPS.get(word)
        if prop and prop in nic.udev_names:
            return nic.udev_names[prop]
    return nic.kernel_name


# Netplan first: where it is installed it generates the networkd or
# NetworkManager configuration, so it must be the one written to.
STYLES: tuple[Style, ...] = (Netplan(), Networkd(), NetworkManager(), Ifupdown(),
                             NetworkScripts())


def choose(root: Path) -> Style | None:
    return best(STYLES, root)


def configure(root: Path, style: Style, nic: NicIdentity, addr: Addressing,
              netcfg: NetworkConfig | None = None) -> Written:
    """Write the installed system's network in `style`: the install NIC as
    it was brought up, and what the network configuration file describes.
    Every warning (a setting with no equivalent, a control= the image's
    style overrides, the install NIC added) comes back for the report."""
    name = installed_name(nic, root)
    notes: list[str] = []
    if netcfg is None:
        ifaces = [install_iface(name, nic, addr)]
    else:
        ifaces, note = with_install_nic(list(netcfg.ifaces), nic, name, addr)
        notes += list(netcfg.warnings) + ([note] if note else [])
        notes += control_notes(style, netcfg)
    check_set(ifaces)
    written = style.write(root, ifaces)
    return Written(written.files, (*notes, *written.warnings))


def control_notes(style: Style, netcfg: NetworkConfig) -> list[str]:
    """SystemImager picked the writer from each <if>'s control=; sysclone
    picks it from what the image contains.  Say where they differ."""
    odd = sorted({c for _, c in netcfg.controls if c and c not in style.controls})
    if not odd:
        return []
    return [f"{netcfg.name}: control=\"{', '.join(odd)}\" is not how this image configures "
            f"its network: written for {style.name}, which the image uses"]


def check_image(root: Path, netcfg: NetworkConfig) -> tuple[str, list[str]]:
    """What the image server checks before it sends a network configuration:
    that the image's style can express it (the install NIC is not known
    yet).  Returns the style's name and the warnings; raises NetConfigError."""
    style = choose(root)
    if style is None:
        raise NetConfigError(f"{netcfg.name}: the image has no network style sysclone knows "
                             "(systemd-networkd, NetworkManager, netplan, ifupdown, "
                             "network-scripts)")
    ifaces = list(netcfg.ifaces)
    check_set(ifaces, vlan_parents=False)
    problems = style.check(root, ifaces)
    problems.raise_if_any()
    return style.name, [*netcfg.warnings, *control_notes(style, netcfg), *problems.warnings]
