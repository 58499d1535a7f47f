"""Network configuration for the installed system.

The install NIC is configured the way it was brought up for the install
(DHCP, or the static IPADDR/NETMASK/GATEWAY given), in whatever style the
image uses: systemd-networkd, NetworkManager, netplan, ifupdown or RHEL's
network-scripts.  Styles that can match the NIC by MAC address do; ifupdown
cannot, so it is given the name udev will give the NIC on the installed
system (computed with udev's own net_id builtin, under the image's naming
policy), not the kernel's eth0 of the boot environment.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from ipaddress import IPv4Interface
from pathlib import Path

from agent.configure.footprint import GENERIC, MAINLINE, NONE, PREFERRED, exists

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NicIdentity:
    kernel_name: str  # as named in the boot environment (eth0)
    mac: str
    udev_names: dict[str, str] = field(default_factory=dict)  # ID_NET_NAME_* -> name


@dataclass(frozen=True)
class Addressing:
    method: str  # dhcp | static
    address: str | None = None  # 10.0.0.5/24
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None


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


class Style:
    name = "none"
    files: tuple[str, ...] = ()

    def fits(self, root: Path) -> int:
        return NONE

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        raise NotImplementedError


def _write(root: Path, rel: str, text: str, mode: int = 0o644) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    p.chmod(mode)
    return "/" + rel


def _enabled(root: Path, unit: str) -> bool:
    # systemctl enable makes absolute symlinks (/lib/systemd/system/...):
    # dangling when seen from outside the image, and glob() skips those.
    wants = root / "etc/systemd/system"
    return any((d / unit).is_symlink() or (d / unit).exists() for d in wants.glob("*.wants"))


class Networkd(Style):
    name = "systemd-networkd"

    def fits(self, root: Path) -> int:
        if not exists(root, "lib/systemd/systemd-networkd", "usr/lib/systemd/systemd-networkd"):
            return NONE
        return PREFERRED if _enabled(root, "systemd-networkd.service") else NONE

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        lines = ["[Match]", f"MACAddress={nic.mac}", "", "[Network]"]
        if addr.method == "dhcp":
            lines.append("DHCP=ipv4")
        else:
            lines.append(f"Address={addr.address}")
            if addr.gateway:
                lines.append(f"Gateway={addr.gateway}")
            lines += [f"DNS={d}" for d in addr.dns]
            if addr.domain:
                lines.append(f"Domains={addr.domain}")
        name = f"etc/systemd/network/50-sysclone-{nic.mac.replace(':', '')}.network"
        return [_write(root, name, "# written by sysclone\n" + "\n".join(lines) + "\n")]


class NetworkManager(Style):
    name = "NetworkManager"

    def fits(self, root: Path) -> int:
        if not exists(root, "usr/sbin/NetworkManager"):
            return NONE
        return PREFERRED if _enabled(root, "NetworkManager.service") else MAINLINE

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        lines = ["[connection]", "id=sysclone-install", "type=ethernet",
                 "autoconnect=true", "", "[ethernet]", f"mac-address={nic.mac.upper()}", "",
                 "[ipv4]"]
        if addr.method == "dhcp":
            lines.append("method=auto")
        else:
            gw = f",{addr.gateway}" if addr.gateway else ""
            lines += ["method=manual", f"address1={addr.address}{gw}"]
            if addr.dns:
                lines.append("dns=" + ";".join(addr.dns) + ";")
        lines += ["", "[ipv6]", "method=auto"]
        return [_write(root, "etc/NetworkManager/system-connections/sysclone-install"
                             ".nmconnection", "\n".join(lines) + "\n", 0o600)]


class Netplan(Style):
    name = "netplan"

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/netplan") else NONE

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        y = ["network:", "  version: 2", "  ethernets:", "    install:",
             "      match:", f"        macaddress: \"{nic.mac}\""]
        if addr.method == "dhcp":
            y.append("      dhcp4: true")
        else:
            y.append(f"      addresses: [{addr.address}]")
            if addr.gateway:
                y += ["      routes:", "        - to: default", f"          via: {addr.gateway}"]
            if addr.dns:
                y += ["      nameservers:", f"        addresses: [{', '.join(addr.dns)}]"]
        return [_write(root, "etc/netplan/50-sysclone.yaml", "\n".join(y) + "\n", 0o600)]


class Ifupdown(Style):
    name = "ifupdown"

    def fits(self, root: Path) -> int:
        if not exists(root, "sbin/ifup", "usr/sbin/ifup"):
            return NONE
        return MAINLINE if (root / "etc/network/interfaces").is_file() else GENERIC

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        name = installed_name(nic, root)
        lines = [f"# {nic.mac}: written by sysclone", f"allow-hotplug {name}"]
        if addr.method == "dhcp":
            lines.append(f"iface {name} inet dhcp")
        else:
            iface = IPv4Interface(addr.address or "")
            lines += [f"iface {name} inet static", f"    address {iface.with_prefixlen}"]
            if addr.gateway:
                lines.append(f"    gateway {addr.gateway}")
            if addr.dns:
                lines.append(f"    dns-nameservers {' '.join(addr.dns)}")
        written = [_write(root, f"etc/network/interfaces.d/{name}", "\n".join(lines) + "\n")]
        interfaces = root / "etc/network/interfaces"
        text = interfaces.read_text() if interfaces.is_file() else ""
        if not re.search(r"^\s*source(-directory)?\s+/etc/network/interfaces\.d", text, re.M):
            text += "\nsource /etc/network/interfaces.d/*\n"
            written.append(_write(root, "etc/network/interfaces", text))
        return written


class NetworkScripts(Style):
    name = "network-scripts"

    def fits(self, root: Path) -> int:
        return MAINLINE if (root / "etc/sysconfig/network-scripts").is_dir() else NONE

    def write(self, root: Path, nic: NicIdentity, addr: Addressing) -> list[str]:
        name = installed_name(nic, root)
        lines = [f"DEVICE={name}", f"HWADDR={nic.mac}", "ONBOOT=yes", "TYPE=Ethernet"]
        if addr.method == "dhcp":
            lines.append("BOOTPROTO=dhcp")
        else:
            iface = IPv4Interface(addr.address or "")
            lines += ["BOOTPROTO=none", f"IPADDR={iface.ip}", f"PREFIX={iface.network.prefixlen}"]
            if addr.gateway:
                lines.append(f"GATEWAY={addr.gateway}")
            lines += [f"DNS{i}={d}" for i, d in enumerate(addr.dns, 1)]
        return [_write(root, f"etc/sysconfig/network-scripts/ifcfg-{name}",
                       "\n".join(lines) + "\n")]


# Netplan first: where it is installed it generates the networkd or
# NetworkManager configuration, so it must be the one written to.
STYLES: tuple[Style, ...] = (Netplan(), Networkd(), NetworkManager(), Ifupdown(),
                             NetworkScripts())
