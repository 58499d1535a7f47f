"""ifupdown (Debian's /etc/network/interfaces): one file per interface in
interfaces.d, sourced from interfaces.

ifupdown cannot match a NIC by MAC address, so each interface is named as
udev will name it on the installed system (agent.configure.netconfig).
VLANs named PARENT.ID are ifupdown's own (0.8); bonds need ifenslave in the
image.  DNS servers in `dns-nameservers` are only read by resolvconf or
systemd-resolved: without either, a static configuration's servers go to
/etc/resolv.conf itself, as Debian's installer does.
"""

from __future__ import annotations

import re
from ipaddress import IPv4Interface
from pathlib import Path

from agent.configure import units
from agent.configure.footprint import GENERIC, MAINLINE, NONE, exists
from agent.configure.netmodel import Iface, slaves_of, write_file
from agent.configure.netstyle import Problems, Style, warn_common

IFENSLAVE = ("sbin/ifenslave", "usr/sbin/ifenslave", "etc/network/if-pre-up.d/ifenslave")


class Ifupdown(Style):
    name = "ifupdown"
    controls = ("legacy",)
    bond_options = None  # ifenslave passes bond-* options to the driver by name

    def fits(self, root: Path) -> int:
        if not exists(root, "sbin/ifup", "usr/sbin/ifup"):
            return NONE
        return MAINLINE if (root / "etc/network/interfaces").is_file() else GENERIC

    def resolver(self, root: Path) -> str | None:
        """Who reads dns-nameservers (None: nobody, write resolv.conf)."""
        if exists(root, "sbin/resolvconf", "usr/sbin/resolvconf"):
            return "resolvconf"
        if units.is_enabled(root, "systemd-resolved.service"):
            return "systemd-resolved"
        return None

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        warn_common(i, p)
        if i.kind == "bond" and not exists(root, *IFENSLAVE):
            p.refuse(i, "bonds without ifenslave in the image (install ifenslave in the "
                        "golden image)")
        if i.ipv4.method == "dhcp":
            if not i.dns.from_dhcp:
                p.refuse(i, 'peerdns="no" with DHCP (dhclient always installs the lease\'s '
                            "DNS servers)")
            if not i.ipv4.default_route:
                p.refuse(i, 'def_route="no" with DHCP (dhclient always installs the '
                            "lease's default route)")
        v6 = i.ipv6
        if v6 is not None:
            if v6.method == "disabled":
                p.refuse(i, 'ipv6_init="no" (ifupdown has no setting to turn IPv6 off on '
                            "one interface)")
            if not v6.default_route and v6.method == "auto":
                p.refuse(i, 'ipv6_defroute="no" with autoconfiguration')
            if v6.metric is not None and not v6.gateway:
                p.refuse(i, "an IPv6 route metric without ipv6_defaultgw")
            if not i.dns.from_dhcp6:
                p.refuse(i, 'ipv6_peerdns="no"')
            if v6.mtu and v6.method != "static":
                p.refuse(i, "ipv6_mtu without a static IPv6 address")
            if v6.method == "auto" and v6.addresses:
                p.refuse(i, "static IPv6 addresses beside autoconfiguration")

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        # A bond's slaves have no stanza: its bond-slaves line brings them
        # up (ifenslave's README way; both ways at once enslave twice).
        written = [write_file(root, f"etc/network/interfaces.d/{i.name}",
                              "\n".join(self.stanzas(i, ifaces)) + "\n")
                   for i in ifaces if not i.master]
        interfaces = root / "etc/network/interfaces"
        text = interfaces.read_text() if interfaces.is_file() else ""
        if not re.search(r"^\s*source(-directory)?\s+/etc/network/interfaces\.d", text, re.M):
            text += "\nsource /etc/network/interfaces.d/*\n"
            written.append(write_file(root, "etc/network/interfaces", text))
        written += self.resolv_conf(root, ifaces)
        return written

    def stanzas(self, i: Iface, ifaces: list[Iface]) -> list[str]:
        mac = f" {i.mac}:" if i.mac else ""
        lines = [f"#{mac} written by sysclone"]
        if i.onboot:
            # Physical NICs appear when udev finds them; bonds and VLANs are
            # made by ifupdown itself, at boot.
            physical = i.kind in ("ethernet", "infiniband")
            lines.append(f"{'allow-hotplug' if physical else 'auto'} {i.name}")
        v4 = i.ipv4
        method = {"dhcp": "dhcp", "static": "static", "none": "manual"}[v4.method]
        lines.append(f"iface {i.name} inet {method}")
        opts = []
        if v4.method == "static":
            first = IPv4Interface(v4.addresses[0])
            opts.append(f"address {first.with_prefixlen}")
            if v4.broadcast:
                opts.append(f"broadcast {v4.broadcast}")
            if v4.gateway and v4.default_route:
                opts.append(f"gateway {v4.gateway}")
        if v4.metric is not None and (v4.method == "dhcp" or v4.gateway):
            opts.append(f"metric {v4.metric}")
        if i.set_mac:
            opts.append(f"hwaddress ether {i.set_mac}")
        if i.mtu:
            opts.append(f"mtu {i.mtu}")
        if i.kind == "bond":
            opts.append("bond-slaves " + " ".join(s.name for s in slaves_of(ifaces, i.name)))
            opts += [f"bond-{k.replace('_', '-')} {v}" for k, v in i.bond_options]
        if i.kind == "vlan" and i.vlan_parent and "." not in i.name:
            opts.append(f"vlan-raw-device {i.vlan_parent}")
        if i.dns.servers:
            opts.append("dns-nameservers " + " ".join(i.dns.servers))
        if i.dns.search:
            opts.append("dns-search " + " ".join(i.dns.search))
        lines += [f"    {o}" for o in opts]
        for extra in v4.addresses[1:]:
            lines += [f"iface {i.name} inet static", f"    address {extra}"]
        v6 = i.ipv6
        if v6 is not None:
            if v6.method == "auto":
                lines.append(f"iface {i.name} inet6 auto")
            elif v6.method == "link-local":
                lines += [f"iface {i.name} inet6 manual", "    accept_ra 0"]
            elif v6.method == "static":
                lines += [f"iface {i.name} inet6 static", f"    address {v6.addresses[0]}",
                          "    accept_ra 0"]
                if v6.gateway and v6.default_route:
                    lines.append(f"    gateway {v6.gateway}")
                if v6.metric is not None:
                    lines.append(f"    metric {v6.metric}")
                if v6.mtu:
                    lines.append(f"    mtu {v6.mtu}")
                for extra in v6.addresses[1:]:
                    lines += [f"iface {i.name} inet6 static", f"    address {extra}"]
        return lines

    def resolv_conf(self, root: Path, ifaces: list[Iface]) -> list[str]:
        servers = [d for i in ifaces if i.ipv4.method == "static" for d in i.dns.servers]
        search = [d for i in ifaces if i.ipv4.method == "static" for d in i.dns.search]
        if not servers or self.resolver(root) is not None:
            return []
        resolv = root / "etc/resolv.conf"
        if resolv.is_symlink():
            return []  # managed by something else in the image: left to it
        lines = ["# written by sysclone from the static network configuration"]
        if search:
            lines.append("search " + " ".join(dict.fromkeys(search)))
        lines += [f"nameserver {d}" for d in list(dict.fromkeys(servers))[:3]]
        return [write_file(root, "etc/resolv.conf", "\n".join(lines) + "\n")]
