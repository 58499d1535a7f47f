"""The installed system's network, independent of the style that writes it.

One `Iface` per interface the installed system brings up: the install NIC
(configured as it was brought up for the install), and whatever
SystemImager's network configuration file (si.network-config,
net-config.xml; agent.configure.netxml) describes: more NICs, bonds and
their slaves, VLANs, alias addresses, IPv6.  Each network style
(agent.configure.netconfig) renders the same list, and refuses by name what
it cannot express.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from ipaddress import IPv4Interface, IPv6Interface, ip_address
from pathlib import Path

from sysclone.errors import ConfigError


class NetConfigError(ConfigError):
    """A network configuration that cannot be written as asked."""


@dataclass(frozen=True)
class NicIdentity:
    kernel_name: str  # as named in the boot environment (eth0)
    mac: str
    udev_names: dict[str, str] = field(default_factory=dict)  # ID_NET_NAME_* -> name


@dataclass(frozen=True)
class Addressing:
    """How the install NIC was brought up (DHCP, or the static si.* settings)."""

    method: str  # dhcp | static
    address: str | None = None  # 10.0.0.5/24
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None


@dataclass(frozen=True)
class Ipv4:
    method: str = "dhcp"  # dhcp | bootp | static | none
    addresses: tuple[str, ...] = ()  # "10.0.0.5/24"; the first is the primary one
    gateway: str | None = None
    default_route: bool = True  # def_route: whether the default route goes this way
    broadcast: str | None = None  # only when it is not the network's usual one
    metric: int | None = None
    required: bool = False  # ipv4_failure_fatal


@dataclass(frozen=True)
class Ipv6:
    method: str = "auto"  # auto (router advertisements) | static | link-local | disabled
    addresses: tuple[str, ...] = ()  # "2001:db8::5/64"
    gateway: str | None = None
    default_route: bool = True
    mtu: int | None = None
    metric: int | None = None
    required: bool = False  # ipv6_failure_fatal


@dataclass(frozen=True)
class Dns:
    servers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    from_dhcp: bool = True  # peerdns: use the lease's servers too
    from_dhcp6: bool = True  # ipv6_peerdns


KINDS = ("ethernet", "infiniband", "bond", "vlan")


@dataclass(frozen=True)
class Iface:
    name: str  # the interface in the installed system: enp1s0, ib0, bond0, bond0.100
    kind: str = "ethernet"  # one of KINDS
    connection: str = ""  # its connection's name (NetworkManager id, ifcfg file)
    mac: str | None = None  # the device to match (hwaddr)
    set_mac: str | None = None  # a MAC address to give it (macaddr)
    ipv4: Ipv4 = field(default_factory=Ipv4)
    ipv6: Ipv6 | None = None  # None: the style's default
    dns: Dns = field(default_factory=Dns)
    onboot: bool = True
    mtu: int | None = None
    master: str | None = None  # the bond this is a slave of
    bond_options: tuple[tuple[str, str], ...] = ()  # kernel bonding names, as given
    vlan_id: int | None = None
    vlan_parent: str | None = None
    uuid: str | None = None
    userctl: bool | None = None
    source: str = ""  # where it was described, for messages
    is_install_nic: bool = False

    def __post_init__(self) -> None:
        if not self.connection:
            object.__setattr__(self, "connection", self.name)

    @property
    def where(self) -> str:
        return self.source or f"interface {self.name}"

    def bond_option(self, name: str) -> str | None:
        return next((v for k, v in self.bond_options if k == name), None)


# -- kernel bonding options (Documentation/networking/bonding.rst) -------------------------

# Numeric values the kernel accepts for the options that take names, so that
# styles needing names (networkd, netplan) get them.
BOND_VALUE_NAMES: dict[str, tuple[str, ...]] = {
    "mode": ("balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad",
             "balance-tlb", "balance-alb"),
    "xmit_hash_policy": ("layer2", "layer3+4", "layer2+3", "encap2+3", "encap3+4",
                         "vlan+srcmac"),
    "lacp_rate": ("slow", "fast"),
    "ad_select": ("stable", "bandwidth", "count"),
    "fail_over_mac": ("none", "active", "follow"),
    "primary_reselect": ("always", "better", "failure"),
    "arp_validate": ("none", "active", "backup", "all", "filter", "filter_active",
                     "filter_backup"),
    "arp_all_targets": ("any", "all"),
}

# Every option the bonding driver takes, with its default: a default value
# needs no setting, so a style that lacks the setting can still write it.
BOND_DEFAULTS: dict[str, str | None] = {
    "mode": "balance-rr", "miimon": "0", "updelay": "0", "downdelay": "0",
    "use_carrier": "1", "xmit_hash_policy": "layer2", "lacp_rate": "slow",
    "ad_select": "stable", "fail_over_mac": "none", "primary_reselect": "always",
    "primary": None, "arp_interval": "0", "arp_ip_target": None, "arp_validate": "none",
    "arp_all_targets": "any", "resend_igmp": "1", "num_grat_arp": "1",
    "num_unsol_na": "1", "all_slaves_active": "0", "min_links": "0", "lp_interval": "1",
    "packets_per_slave": "1", "tlb_dynamic_lb": "1", "ad_actor_sys_prio": "65535",
    "ad_user_port_key": "0", "ad_actor_system": None, "peer_notif_delay": "0",
    "max_bonds": None,
}
_BOND_OPT = re.compile(r"([A-Za-z][0-9A-Za-z_]*[0-9A-Za-z])=([0-9A-Za-z_.,:+-]+)")


def parse_bonding_opts(text: str, where: str) -> tuple[tuple[str, str], ...]:
    """`bonding_opts="mode=active-backup miimon=100"` as (name, value) pairs,
    numeric values of named options turned into their names."""
    out: list[tuple[str, str]] = []
    for word in text.split():
        m = _BOND_OPT.fullmatch(word)
        if not m:
            raise NetConfigError(f"{where}: bonding option {word!r} is not name=value")
        name, value = m.group(1), m.group(2)
        if name not in BOND_DEFAULTS or name == "max_bonds":
            raise NetConfigError(f"{where}: {name!r} is not an option of the bonding driver",
                                 hint="see the kernel's bonding documentation for the names")
        names = BOND_VALUE_NAMES.get(name)
        if names is not None:
            value = bond_value_name(name, value, where)
        out.append((name, value))
    return tuple(out)


def bond_value_name(name: str, value: str, where: str) -> str:
    names = BOND_VALUE_NAMES[name]
    if value.isdigit():
        if int(value) >= len(names):
            raise NetConfigError(f"{where}: {name}={value} is out of range "
                                 f"(0-{len(names) - 1})")
        return names[int(value)]
    if value not in names:
        raise NetConfigError(f"{where}: {name}={value} is not one of {', '.join(names)}")
    return value


def non_default_bond_options(iface: Iface) -> list[tuple[str, str]]:
    return [(k, v) for k, v in iface.bond_options if BOND_DEFAULTS.get(k) != v]


# -- checks shared by every style ----------------------------------------------------------

def check_set(ifaces: list[Iface], vlan_parents: bool = True) -> None:
    """What must hold whatever the style: unique names, slaves of bonds
    that exist, VLANs on interfaces that are configured too (not checked
    when the install NIC is not known yet: it may be the parent)."""
    names: dict[str, Iface] = {}
    for i in ifaces:
        if i.name in names:
            raise NetConfigError(f"{i.where}: interface {i.name} is configured twice (also "
                                 f"{names[i.name].where})")
        names[i.name] = i
    for i in ifaces:
        if i.master is not None:
            m = names.get(i.master)
            if m is None or m.kind != "bond":
                raise NetConfigError(f"{i.where}: its master {i.master} is not a bond of "
                                     "this configuration")
        if i.kind == "vlan" and vlan_parents and i.vlan_parent not in names:
            raise NetConfigError(f"{i.where}: VLAN {i.name} is on {i.vlan_parent}, which this "
                                 "configuration does not bring up",
                                 hint=f"describe {i.vlan_parent} too (bootproto=\"none\" if "
                                      "it has no address of its own)")
        if i.kind == "bond" and not any(s.master == i.name for s in ifaces):
            raise NetConfigError(f"{i.where}: bond {i.name} has no slave")


def slaves_of(ifaces: list[Iface], bond: str) -> list[Iface]:
    return [i for i in ifaces if i.master == bond]


def vlans_on(ifaces: list[Iface], parent: str) -> list[Iface]:
    return [i for i in ifaces if i.kind == "vlan" and i.vlan_parent == parent]


# -- the install NIC -----------------------------------------------------------------------

def install_iface(name: str, nic: NicIdentity, addr: Addressing) -> Iface:
    """The install NIC as the installed system brings it up: by MAC, as it
    was brought up for the install."""
    if addr.method == "static":
        ipv4 = Ipv4("static", (addr.address or "",), addr.gateway)
        dns = Dns(tuple(addr.dns), (addr.domain,) if addr.domain else ())
    else:
        ipv4, dns = Ipv4("dhcp"), Dns()
    return Iface(name, "ethernet", connection="sysclone-install", mac=nic.mac.lower(),
                 ipv4=ipv4, dns=dns, source=f"the install NIC ({nic.mac})",
                 is_install_nic=True)


def covers(iface: Iface, nic: NicIdentity, installed: str) -> bool:
    """Whether a described interface is the install NIC."""
    if iface.mac:
        return iface.mac.lower() == nic.mac.lower()
    return iface.name == installed


def with_install_nic(described: list[Iface], nic: NicIdentity, installed: str,
                     addr: Addressing) -> tuple[list[Iface], str | None]:
    """The described interfaces, plus the install NIC when they do not
    mention it (an installed machine must come back on the network it was
    installed from); the second value says what was done, for the report."""
    if any(covers(i, nic, installed) for i in described):
        return described, None
    if any(i.name == installed for i in described):
        # Named like the install NIC but bound to another MAC: the file is
        # about another machine's hardware; keep the NIC reachable anyway.
        return described, (f"the network configuration binds {installed} to another MAC "
                           f"address than the install NIC's ({nic.mac})")
    return [install_iface(installed, nic, addr), *described], (
        f"the network configuration does not mention the install NIC {installed} "
        f"({nic.mac}): it is configured as installed ({addr.method})")


# -- helpers for the styles ----------------------------------------------------------------

def default_broadcast(address: str) -> str:
    return str(IPv4Interface(address).network.broadcast_address)


def is_v6(address: str) -> bool:
    return ip_address(address.split("/")[0]).version == 6


def v6_interface(address: str) -> str:
    """An IPv6 address with a prefix length (/64 when none is given, as
    initscripts and NetworkManager assume)."""
    return str(IPv6Interface(address if "/" in address else f"{address}/64"))


def write_file(root: Path, rel: str, text: str, mode: int = 0o644) -> str:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink():
        p.unlink()  # never write through a link out of the image
    p.write_text(text)
    p.chmod(mode)
    return "/" + rel
