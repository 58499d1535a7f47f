"""RHEL's network-scripts: /etc/sysconfig/network-scripts/ifcfg-NAME, read
by initscripts and by NetworkManager's ifcfg-rh plugin.  The format
SystemImager's own network configuration was modelled on, so every setting
of net-config.xml has its variable here."""

from __future__ import annotations

from ipaddress import IPv4Interface
from pathlib import Path

from agent.configure.footprint import MAINLINE, NONE
from agent.configure.netmodel import Iface, write_file
from agent.configure.netstyle import Problems, Style, warn_common

SCRIPTS = "etc/sysconfig/network-scripts"


def _yn(b: bool) -> str:
    return "yes" if b else "no"


class NetworkScripts(Style):
    name = "network-scripts"
    controls = ("legacy",)
    bond_options = None  # BONDING_OPTS goes to the driver as it is
    can_bootp = True

    def fits(self, root: Path) -> int:
        return MAINLINE if (root / SCRIPTS).is_dir() else NONE

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        warn_common(i, p, uuid=True, userctl=True, failure_fatal=True)

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        # Named by the connection, as SystemImager named them; the install
        # NIC, which has no connection name of its own, by its device.
        return [write_file(root, f"{SCRIPTS}/ifcfg-{i.name if i.is_install_nic else i.connection}",
                           self.ifcfg(i)) for i in ifaces]

    def ifcfg(self, i: Iface) -> str:
        v = [f"DEVICE={i.name}"]
        if i.connection != i.name and not i.is_install_nic:
            v.append(f"NAME={i.connection}")
        if i.mac:
            v.append(f"HWADDR={i.mac}")
        if i.set_mac:
            v.append(f"MACADDR={i.set_mac}")
        if i.uuid:
            v.append(f"UUID={i.uuid}")
        v.append(f"ONBOOT={_yn(i.onboot)}")
        v.append("TYPE=" + {"ethernet": "Ethernet", "infiniband": "InfiniBand",
                            "bond": "Bond", "vlan": "Vlan"}[i.kind])
        if i.kind == "bond":
            v.append("BONDING_MASTER=yes")
            if i.bond_options:
                v.append('BONDING_OPTS="' + " ".join(f"{k}={val}" for k, val in i.bond_options)
                         + '"')
        if i.kind == "vlan":
            v += ["VLAN=yes", f"PHYSDEV={i.vlan_parent}", f"VLAN_ID={i.vlan_id}"]
        if i.master:
            v += [f"MASTER={i.master}", "SLAVE=yes"]
        v4 = i.ipv4
        v.append("BOOTPROTO=" + {"dhcp": "dhcp", "bootp": "bootp", "static": "none",
                                 "none": "none"}[v4.method])
        for n, a in enumerate(v4.addresses):
            iface = IPv4Interface(a)
            suffix = "" if n == 0 else str(n)
            v += [f"IPADDR{suffix}={iface.ip}", f"PREFIX{suffix}={iface.network.prefixlen}"]
        if v4.broadcast:
            v.append(f"BROADCAST={v4.broadcast}")
        if v4.gateway and v4.default_route:
            v.append(f"GATEWAY={v4.gateway}")
        if not v4.default_route:
            v.append("DEFROUTE=no")
        if v4.metric is not None:
            v.append(f"IPV4_ROUTE_METRIC={v4.metric}")
        if v4.required:
            v.append("IPV4_FAILURE_FATAL=yes")
        if i.mtu:
            v.append(f"MTU={i.mtu}")
        v += [f"DNS{n}={d}" for n, d in enumerate(i.dns.servers, 1)]
        if i.dns.search:
            v.append('DOMAIN="' + " ".join(i.dns.search) + '"')
        if not i.dns.from_dhcp:
            v.append("PEERDNS=no")
        v6 = i.ipv6
        if v6 is not None:
            v.append(f"IPV6INIT={_yn(v6.method != 'disabled')}")
            if v6.method != "disabled":
                v.append(f"IPV6_AUTOCONF={_yn(v6.method == 'auto')}")
            if v6.addresses:
                v.append(f"IPV6ADDR={v6.addresses[0]}")
            if len(v6.addresses) > 1:
                v.append('IPV6ADDR_SECONDARIES="' + " ".join(v6.addresses[1:]) + '"')
            if v6.gateway:
                v.append(f"IPV6_DEFAULTGW={v6.gateway}")
            if not v6.default_route:
                v.append("IPV6_DEFROUTE=no")
            if v6.mtu:
                v.append(f"IPV6_MTU={v6.mtu}")
            if v6.metric is not None:
                v.append(f"IPV6_ROUTE_METRIC={v6.metric}")
            if v6.required:
                v.append("IPV6_FAILURE_FATAL=yes")
            if not i.dns.from_dhcp6:
                v.append("IPV6_PEERDNS=no")
        if i.userctl is not None:
            v.append(f"USERCTL={_yn(i.userctl)}")
        return "\n".join(v) + "\n"
