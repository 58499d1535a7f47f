"""Read SystemImager's network configuration (si.network-config,
net-config.xml; schema network-config.xsd) into agent.configure.netmodel.

Every problem of a file is reported at once, each with its line.  What
SystemImager's schema marks as not supported (DSL, Wi-Fi, Bridge, IP
tunnel, Team) is refused.  Differences from the schema, all lenient:

  * VLANs, which the schema lists as unsupported: `<if dev="bond0.100"
    type="VLAN">` is VLAN 100 on bond0 (the kernel's own naming; the
    schema's device-name pattern has no dot because SystemImager never
    wrote VLANs);
  * device names follow the kernel's rules (up to 15 characters, no '/',
    ':' or white space), not the schema's list of naming schemes, so that
    names given by udev rules or .link files work too;
  * DNS servers may be IPv6 addresses (the schema's TODO).

A DOCTYPE or an entity declaration is refused: the file comes from the
network, and nothing in the format needs them.
"""

from __future__ import annotations

import re
import xml.parsers.expat
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_address

from agent.configure.netmodel import (
    Dns,
    Iface,
    Ipv4,
    Ipv6,
    NetConfigError,
    parse_bonding_opts,
    v6_interface,
)
from sysclone.errors import ConfigError

CONTROLS = ("legacy", "nm", "NetworkManager", "systemd")
TYPES = {"Ethernet": "ethernet", "Infiniband": "infiniband", "Bond": "bond", "VLAN": "vlan"}
UNSUPPORTED_TYPES = ("DSL", "Wi-Fi", "Bridge", "IP tunnel", "Team")
BOOTPROTOS = ("static", "dhcp", "bootp", "none")
_IFNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
_MAC = re.compile(r"([0-9A-Fa-f]{2}:){5}(([0-9A-Fa-f]{2}:){14})?[0-9A-Fa-f]{2}")
_UUID = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                   r"[0-9A-Fa-f]{12}")
_DOMAIN = re.compile(r"([a-z0-9]+(-[a-z0-9]+)*\.)*[a-z0-9]+(-[a-z0-9]+)*", re.I)

# element -> the attributes it may carry (the schema's, nothing more)
ATTRS: dict[str, tuple[str, ...]] = {
    "config": (),
    "if": ("dev", "type", "control"),
    "primary": ("name", "uuid", "onboot", "bootproto", "userctl", "master"),
    "alias": ("id", "uuid", "onparent"),
    "slave": ("name", "uuid"),
    "ip": ("ipv4_failure_fatal", "ipaddr", "prefix", "netmask", "broadcast", "gateway",
           "def_route", "mtu", "ipv4_route_metric"),
    "ip6": ("ipv6_failure_fatal", "ipv6_init", "ipv6_autoconf", "ipv6_addr", "ipv6_defaultgw",
            "ipv6_defroute", "ipv6_mtu", "ipv6_route_metric"),
    "options": ("hwaddr", "macaddr", "bonding_opts"),
    "dns": ("servers", "search", "peerdns", "ipv6_peerdns"),
}
CHILDREN: dict[str, tuple[str, ...]] = {
    "config": ("if",), "if": ("primary", "alias", "slave"),
    "primary": ("ip", "ip6", "options", "dns"), "alias": ("ip", "ip6"),
    "slave": ("options",), "ip": (), "ip6": (), "options": (), "dns": (),
}


@dataclass
class _Node:
    tag: str
    attrs: dict[str, str]
    line: int
    children: list[_Node] = field(default_factory=list)

    def child(self, tag: str) -> _Node | None:
        return next((c for c in self.children if c.tag == tag), None)


@dataclass(frozen=True)
class NetworkConfig:
    """A parsed network configuration file."""

    name: str
    ifaces: tuple[Iface, ...]
    controls: tuple[tuple[str, str], ...]  # (dev, control attribute), for the report
    warnings: tuple[str, ...] = ()


def _tree(text: str | bytes, source: str) -> _Node:
    parser = xml.parsers.expat.ParserCreate()
    stack: list[_Node] = []
    roots: list[_Node] = []

    def start(tag: str, attrs: dict[str, str]) -> None:
        node = _Node(tag, attrs, parser.CurrentLineNumber)
        (stack[-1].children if stack else roots).append(node)
        stack.append(node)

    def end(tag: str) -> None:
        stack.pop()

    def refuse(*_: object) -> None:
        raise NetConfigError(f"{source}:{parser.CurrentLineNumber}: a DOCTYPE or entity "
                             "declaration; network configurations may not have one",
                             hint="remove the <!DOCTYPE ...> / <!ENTITY ...> lines")

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    try:
        parser.Parse(text, True)
    except xml.parsers.expat.ExpatError as exc:
        raise NetConfigError(
            f"{source}:{exc.lineno}: not well-formed XML: "
            f"{xml.parsers.expat.ErrorString(exc.code)}",
            hint="network configurations are XML; see SystemImager's network-config.xsd"
        ) from None
    return roots[0]


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def bad(self, node: _Node, message: str) -> None:
        self.problems.append(f"line {node.line}: <{node.tag}>: {message}")

    def structure(self, node: _Node) -> None:
        allowed = ATTRS.get(node.tag)
        if allowed is None:
            return
        for a in node.attrs:
            if a not in allowed:
                self.bad(node, f"unknown attribute {a!r}"
                         + (f" (allowed: {', '.join(allowed)})" if allowed else ""))
        seen: set[str] = set()
        for c in node.children:
            if c.tag not in CHILDREN[node.tag]:
                self.bad(c, f"not allowed in <{node.tag}>")
                continue
            if c.tag in seen and c.tag not in ("if", "alias", "slave"):
                self.bad(c, f"a second <{c.tag}> in <{node.tag}>")
            seen.add(c.tag)
            self.structure(c)

    def yesno(self, node: _Node, attr: str, default: bool | None) -> bool | None:
        v = node.attrs.get(attr)
        if v is None:
            return default
        if v not in ("yes", "no"):
            self.bad(node, f'{attr}="{v}" must be "yes" or "no"')
            return default
        return v == "yes"

    def integer(self, node: _Node, attr: str, lo: int, hi: int) -> int | None:
        v = node.attrs.get(attr)
        if v is None:
            return None
        if not v.isdigit() or not lo <= int(v) <= hi:
            self.bad(node, f'{attr}="{v}" must be a number from {lo} to {hi}')
            return None
        return int(v)

    def ifname(self, node: _Node, attr: str, value: str | None) -> str | None:
        if value is None:
            return None
        if not _IFNAME.fullmatch(value) or value in (".", ".."):
            self.bad(node, f'{attr}="{value}" is not an interface name (at most 15 letters, '
                           "digits, '_', '-' or '.')")
            return None
        return value

    def mac(self, node: _Node, attr: str) -> str | None:
        v = node.attrs.get(attr)
        if v is not None and not _MAC.fullmatch(v):
            self.bad(node, f'{attr}="{v}" is not a MAC address (6 or 20 bytes, xx:xx:...)')
            return None
        return v.lower() if v else None

    def v4(self, node: _Node, attr: str) -> str | None:
        v = node.attrs.get(attr)
        if v is None:
            return None
        try:
            return str(IPv4Address(v))
        except ValueError:
            self.bad(node, f'{attr}="{v}" is not an IPv4 address')
            return None

    # -- <ip> --
    def ipv4(self, node: _Node | None, bootproto: str) -> Ipv4:
        method = bootproto  # static | dhcp | bootp | none, as the model names them
        if node is None:  # static without <ip>: no IPv4 address (IPv6 only)
            return Ipv4("none" if method == "static" else method)
        address = self.address(node)
        if address and method in ("dhcp", "bootp"):
            self.bad(node, f'ipaddr= given but bootproto="{bootproto}"')
        if not address and method == "static":
            method = "none"  # static with no IPv4 address: IPv6 only, or none
        if address and method == "none":
            method = "static"
        gateway = self.v4(node, "gateway")
        if gateway and address and IPv4Address(gateway) not in IPv4Interface(address).network:
            self.bad(node, f"gateway {gateway} is outside {IPv4Interface(address).network}")
        broadcast = self.v4(node, "broadcast")
        if broadcast and address:
            if broadcast == str(IPv4Interface(address).network.broadcast_address):
                broadcast = None  # the usual one: nothing to say
        elif broadcast:
            self.bad(node, "broadcast= without ipaddr=")
            broadcast = None
        return Ipv4(method, (address,) if address else (), gateway,
                    default_route=bool(self.yesno(node, "def_route", True)),
                    broadcast=broadcast,
                    metric=self.integer(node, "ipv4_route_metric", 0, 2**32 - 1),
                    required=bool(self.yesno(node, "ipv4_failure_fatal", False)))

    def address(self, node: _Node) -> str | None:
        raw = node.attrs.get("ipaddr")
        if raw is None:
            for a in ("prefix", "netmask"):
                if a in node.attrs:
                    self.bad(node, f"{a}= without ipaddr=")
            return None
        addr, _, plen = raw.partition("/")
        prefixes = []
        if plen:
            prefixes.append(("ipaddr", plen))
        if "prefix" in node.attrs:
            prefixes.append(("prefix", node.attrs["prefix"]))
        if "netmask" in node.attrs:
            try:
                prefixes.append(("netmask",
                                 str(IPv4Network(f"0.0.0.0/{node.attrs['netmask']}").prefixlen)))
            except ValueError:
                self.bad(node, f'netmask="{node.attrs["netmask"]}" is not a netmask')
                return None
        if not prefixes:
            self.bad(node, f'ipaddr="{raw}" has no prefix length',)
            self.problems[-1] += f' (write ipaddr="{addr}/24" or add netmask=)'
            return None
        if len({p for _, p in prefixes}) > 1:
            self.bad(node, "the prefix length is given differently by "
                     + " and ".join(f"{a}=" for a, _ in prefixes))
            return None
        try:
            iface = IPv4Interface(f"{addr}/{prefixes[0][1]}")
        except ValueError:
            self.bad(node, f'ipaddr="{raw}" is not an IPv4 address with a prefix')
            return None
        if prefixes[0][1] == "0" or not 1 <= iface.network.prefixlen <= 32:
            self.bad(node, f"prefix length {prefixes[0][1]} is out of range (1-32)")
            return None
        return str(iface)

    # -- <ip6> --
    def ipv6(self, node: _Node | None) -> Ipv6 | None:
        if node is None:
            return None
        init = self.yesno(node, "ipv6_init", True)
        autoconf = self.yesno(node, "ipv6_autoconf", None)
        raw = node.attrs.get("ipv6_addr")
        addresses: tuple[str, ...] = ()
        if raw:
            try:
                addresses = (v6_interface(raw.split("%")[0]),)
            except ValueError:
                self.bad(node, f'ipv6_addr="{raw}" is not an IPv6 address')
        gw = node.attrs.get("ipv6_defaultgw")
        if gw:
            try:
                gw = str(ip_address(gw.split("%")[0]))
            except ValueError:
                self.bad(node, f'ipv6_defaultgw="{gw}" is not an IPv6 address')
                gw = None
        if not init:
            if addresses or autoconf:
                self.bad(node, 'ipv6_init="no" with an IPv6 address or autoconfiguration')
            method = "disabled"
        elif addresses:
            method = "static"
        elif autoconf is False:
            method = "link-local"
        else:
            method = "auto"
        if autoconf and addresses:
            self.warnings.append(f"{self.source}:{node.line}: ipv6_autoconf=\"yes\" with "
                                 "ipv6_addr: the static address is used, router "
                                 "advertisements are not")
        return Ipv6(method, addresses, gw,
                    default_route=bool(self.yesno(node, "ipv6_defroute", True)),
                    mtu=self.integer(node, "ipv6_mtu", 1280, 65535),
                    metric=self.integer(node, "ipv6_route_metric", 0, 2**32 - 1),
                    required=bool(self.yesno(node, "ipv6_failure_fatal", False)))

    # -- <dns> --
    def dns(self, node: _Node | None) -> Dns:
        if node is None:
            return Dns()
        servers: list[str] = []
        raw = node.attrs.get("servers")
        if raw is None:
            self.bad(node, "servers= is required")
        for s in (raw or "").split(","):
            s = s.strip()
            if not s:
                continue
            try:
                servers.append(str(ip_address(s)))
            except ValueError:
                self.bad(node, f"DNS server {s!r} is not an IP address")
        search = tuple(d for d in re.split(r"[ ,]+", node.attrs.get("search", "")) if d)
        for d in search:
            if not _DOMAIN.fullmatch(d):
                self.bad(node, f"search domain {d!r} is not a domain name")
        return Dns(tuple(servers), search,
                   from_dhcp=bool(self.yesno(node, "peerdns", True)),
                   from_dhcp6=bool(self.yesno(node, "ipv6_peerdns", True)))

    # -- <if> --
    def interface(self, node: _Node) -> tuple[Iface, str] | None:
        dev = self.ifname(node, "dev", node.attrs.get("dev"))
        kind_attr, control = node.attrs.get("type"), node.attrs.get("control")
        for a in ("dev", "type", "control"):
            if a not in node.attrs:
                self.bad(node, f"{a}= is required")
        if control is not None and control not in CONTROLS:
            self.bad(node, f'control="{control}" is not one of {", ".join(CONTROLS)}')
        kind = TYPES.get(kind_attr or "")
        if kind_attr in UNSUPPORTED_TYPES:
            self.bad(node, f'type="{kind_attr}" is not supported (nor was it by '
                           "SystemImager)")
        elif kind_attr is not None and kind is None:
            self.bad(node, f'type="{kind_attr}" is not one of '
                           + ", ".join([*TYPES, *UNSUPPORTED_TYPES]))
        primaries = [c for c in node.children if c.tag == "primary"]
        if len(primaries) != 1:
            self.bad(node, "needs exactly one <primary>")
            return None
        if dev is None or kind is None:
            return None
        p = primaries[0]
        where = f"{self.source}:{node.line} <if dev=\"{dev}\">"
        bootproto = p.attrs.get("bootproto")
        if bootproto is None:
            self.bad(p, "bootproto= is required")
            bootproto = "none"
        elif bootproto not in BOOTPROTOS:
            self.bad(p, f'bootproto="{bootproto}" is not one of {", ".join(BOOTPROTOS)}')
            bootproto = "none"
        name = self.ifname(p, "name", p.attrs.get("name")) or dev
        master = self.ifname(p, "master", p.attrs.get("master"))
        uuid = p.attrs.get("uuid")
        if uuid is not None and not _UUID.fullmatch(uuid):
            self.bad(p, f'uuid="{uuid}" is not a UUID')
            uuid = None
        ipv4 = self.ipv4(p.child("ip"), bootproto)
        ipv6 = self.ipv6(p.child("ip6"))
        ip = p.child("ip")
        mtu = self.integer(ip, "mtu", 68, 65535) if ip is not None else None
        opts = p.child("options")
        mac = self.mac(opts, "hwaddr") if opts is not None else None
        set_mac = self.mac(opts, "macaddr") if opts is not None else None
        bond_options: tuple[tuple[str, str], ...] = ()
        if opts is not None and "bonding_opts" in opts.attrs:
            if kind != "bond":
                self.bad(opts, 'bonding_opts= on an interface that is not type="Bond"')
            else:
                try:
                    bond_options = parse_bonding_opts(opts.attrs["bonding_opts"], where)
                except ConfigError as e:
                    self.bad(opts, e.message.removeprefix(where + ": "))
        if master and bootproto != "none":
            self.bad(p, f'a slave of {master} has no address of its own: use bootproto="none"')
        if master and (p.child("ip6") is not None or p.child("dns") is not None):
            self.bad(p, f"a slave of {master} has no address of its own: no <ip6> or <dns>")
        if mac and kind in ("bond", "vlan"):
            self.bad(opts or p, f'hwaddr= matches hardware; a {kind_attr} is not hardware')
        vlan_id, vlan_parent = None, None
        if kind == "vlan":
            parent, dot, vid = dev.rpartition(".")
            if not dot or not parent or not vid.isdigit() or not 1 <= int(vid) <= 4094:
                self.bad(node, f'a VLAN is named PARENT.ID (eth0.100), not "{dev}"')
            else:
                vlan_id, vlan_parent = int(vid), parent
        extra4: list[str] = list(ipv4.addresses)
        extra6: list[str] = list(ipv6.addresses) if ipv6 else []
        for alias in (c for c in node.children if c.tag == "alias"):
            self.alias(alias, ipv4, extra4, extra6)
        # Aliases are more addresses of the same interface (the primary's
        # DHCP, if any, goes on beside them).
        if len(extra4) > len(ipv4.addresses):
            ipv4 = replace(ipv4, addresses=tuple(extra4),
                           method="static" if ipv4.method == "none" else ipv4.method)
        if ipv6 is not None and len(extra6) > len(ipv6.addresses):
            ipv6 = replace(ipv6, addresses=tuple(extra6),
                           method="static" if ipv6.method == "link-local" else ipv6.method)
        elif ipv6 is None and extra6:
            ipv6 = Ipv6("static", tuple(extra6))
        iface = Iface(dev, kind, connection=name, mac=mac, set_mac=set_mac, ipv4=ipv4,
                      ipv6=ipv6, dns=self.dns(p.child("dns")),
                      onboot=bool(self.yesno(p, "onboot", True)), mtu=mtu, master=master,
                      bond_options=bond_options, vlan_id=vlan_id, vlan_parent=vlan_parent,
                      uuid=uuid, userctl=self.yesno(p, "userctl", None), source=where)
        return iface, control or ""

    def alias(self, a: _Node, ipv4: Ipv4, extra4: list[str], extra6: list[str]) -> None:
        if "id" not in a.attrs or not a.attrs["id"].isdigit():
            self.bad(a, "id= must be a number")
        if self.yesno(a, "onparent", True) is False:
            self.bad(a, 'onparent="no" (an alias brought up on its own) is not supported: '
                        "aliases are addresses of their interface")
        ip = a.child("ip")
        if ip is None:
            self.bad(a, "an alias needs <ip ipaddr=...>")
            return
        addr = self.address(ip)
        if addr:
            extra4.append(addr)
        gw = self.v4(ip, "gateway")
        if gw and gw != ipv4.gateway:
            self.warnings.append(
                f"{self.source}:{a.line}: alias {a.attrs.get('id')}: gateway {gw} is not "
                "used (an interface has one default route; initscripts ignored an alias's "
                "GATEWAY too)")
        for attr in ("def_route", "mtu", "ipv4_route_metric", "broadcast",
                     "ipv4_failure_fatal"):
            if attr in ip.attrs:
                self.bad(ip, f"{attr}= on an alias: it belongs on the primary's <ip>")
        ip6 = self.ipv6(a.child("ip6"))
        if ip6 is not None:
            extra6.extend(ip6.addresses)

    def config(self, root: _Node) -> tuple[list[Iface], list[tuple[str, str]]]:
        if root.tag != "config":
            self.bad(root, "the root element must be <config>")
            return [], []
        self.structure(root)
        read: list[tuple[_Node, Iface]] = []
        controls = []
        ifs = [c for c in root.children if c.tag == "if"]
        if not ifs:
            self.bad(root, "no <if> interface")
        for node in ifs:
            got = self.interface(node)
            if got:
                read.append((node, got[0]))
                controls.append((got[0].name, got[1]))
        self.slaves(read)
        return [i for _, i in read], controls

    def slaves(self, read: list[tuple[_Node, Iface]]) -> None:
        """<slave name=...> names a connection; each must say that bond is
        its master (SystemImager logged the mismatch; here it is an error)."""
        ifaces = [i for _, i in read]
        by_conn = {i.connection: i for i in ifaces} | {i.name: i for i in ifaces}
        for node, bond in read:
            for s in (c for c in node.children if c.tag == "slave"):
                name = s.attrs.get("name")
                if bond.kind != "bond":
                    self.bad(s, f"{bond.name} is not a bond: it has no slaves")
                    continue
                target = by_conn.get(name or "")
                if target is None:
                    self.bad(s, f"no interface or connection named {name!r}")
                elif target.master != bond.name:
                    self.bad(s, f"{name} does not name {bond.name} as its master "
                                f'(<primary master="{bond.name}">)')
                if s.child("options") is not None:
                    self.bad(s, "<options> of a slave go in its own <if>")


def parse_network_config(text: str | bytes, name: str = "<network config>"
                         ) -> NetworkConfig:
    """Parse and check a whole file; every problem is reported at once."""
    reader = _Reader(name)
    root = _tree(text, name)
    ifaces, controls = reader.config(root)
    if reader.problems:
        n = len(reader.problems)
        raise NetConfigError(f"{name}: {n} problem{'s' if n > 1 else ''}: "
                             + "; ".join(reader.problems),
                             hint="see SystemImager's network-config.xsd")
    return NetworkConfig(name, tuple(ifaces), tuple(controls), tuple(reader.warnings))
