"""netplan: one YAML file in /etc/netplan, with the renderer named.

Where netplan is installed it generates the configuration of systemd-networkd
or NetworkManager at every boot, so it is the one written to.  The
renderer is NetworkManager when the image runs it (Ubuntu desktop style),
else systemd-networkd -- which is then enabled: netplan's generator only
starts networkd for the configuration it generated at boot, and a golden
image built with netplan but without networkd enabled must still come up.
"""

from __future__ import annotations

import json
from pathlib import Path

from agent.configure import units
from agent.configure.footprint import NONE, PREFERRED, exists
from agent.configure.netmodel import Iface, non_default_bond_options, write_file
from agent.configure.netstyle import Problems, Style, warn_common

NETPLAN_FILE = "etc/netplan/50-sysclone.yaml"

# kernel bonding option -> netplan bond parameter (netplan 0.106's names)
BOND_PARAMS = {
    "mode": "mode", "lacp_rate": "lacp-rate", "miimon": "mii-monitor-interval",
    "min_links": "min-links", "xmit_hash_policy": "transmit-hash-policy",
    "ad_select": "ad-select", "all_slaves_active": "all-slaves-active",
    "arp_interval": "arp-interval", "arp_ip_target": "arp-ip-targets",
    "arp_validate": "arp-validate", "arp_all_targets": "arp-all-targets",
    "updelay": "up-delay", "downdelay": "down-delay", "fail_over_mac": "fail-over-mac-policy",
    "num_grat_arp": "gratuitous-arp", "packets_per_slave": "packets-per-slave",
    "primary_reselect": "primary-reselect-policy", "resend_igmp": "resend-igmp",
    "lp_interval": "learn-packet-interval", "primary": "primary",
}
_NUMERIC = {"miimon", "min_links", "arp_interval", "updelay", "downdelay", "num_grat_arp",
            "packets_per_slave", "resend_igmp", "lp_interval"}


def q(value: str) -> str:
    """A YAML scalar that stays a string (a JSON string is valid YAML)."""
    return json.dumps(value)


class Netplan(Style):
    name = "netplan"
    controls = ("systemd", "nm", "NetworkManager")
    bond_options = frozenset(BOND_PARAMS)
    kinds = ("ethernet", "bond", "vlan")  # netplan has no InfiniBand device type

    def fits(self, root: Path) -> int:
        return PREFERRED if exists(root, "usr/sbin/netplan") else NONE

    def renderer(self, root: Path) -> str:
        if exists(root, "usr/sbin/NetworkManager") and \
                units.is_enabled(root, "NetworkManager.service"):
            return "NetworkManager"
        return "networkd"

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        warn_common(i, p)
        if i.ipv4.broadcast:
            p.refuse(i, f"broadcast {i.ipv4.broadcast} (netplan always uses the network's own)")
        if i.ipv4.metric is not None and i.ipv4.method == "static" and not i.ipv4.gateway:
            p.refuse(i, "a route metric without a gateway")
        for k, v in i.bond_options:
            if k == "arp_validate" and v.startswith("filter"):
                p.refuse(i, f"bonding option arp_validate={v}")

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        renderer = self.renderer(root)
        y = ["# written by sysclone", "network:", "  version: 2", f"  renderer: {renderer}"]
        for section, kinds in (("ethernets", ("ethernet",)), ("bonds", ("bond",)),
                               ("vlans", ("vlan",))):
            members = [i for i in ifaces if i.kind in kinds]
            if not members:
                continue
            y.append(f"  {section}:")
            for i in members:
                y.append(f"    {q(self.key(i))}:")
                y += ["      " + line for line in self.device(i, ifaces)]
        written = [write_file(root, NETPLAN_FILE, "\n".join(y) + "\n", 0o600)]
        service = "NetworkManager.service" if renderer == "NetworkManager" \
            else "systemd-networkd.service"
        written += units.enable(root, service)
        return written

    @staticmethod
    def key(i: Iface) -> str:
        return "install" if i.is_install_nic else i.name

    def device(self, i: Iface, ifaces: list[Iface]) -> list[str]:
        out: list[str] = []
        if i.kind == "ethernet":
            if i.mac:
                # Matched by MAC, named as udev names it (no set-name: the
                # name in the file is netplan's identifier for it).
                out += ["match:", f"  macaddress: {q(i.mac)}"]
            elif i.is_install_nic or self.key(i) != i.name:
                out += ["match:", f"  name: {q(i.name)}"]
        elif i.kind == "bond":
            slaves = [self.key(s) for s in ifaces if s.master == i.name]
            out.append("interfaces: [" + ", ".join(q(s) for s in slaves) + "]")
            params = [(k, v) for k, v in non_default_bond_options(i)]
            if i.bond_option("mode") and not any(k == "mode" for k, _ in params):
                params.insert(0, ("mode", i.bond_option("mode") or ""))
            if params:
                out.append("parameters:")
                for k, v in params:
                    if k == "arp_ip_target":
                        out.append(f"  {BOND_PARAMS[k]}: [" +
                                   ", ".join(q(t) for t in v.split(",")) + "]")
                    elif k == "all_slaves_active":
                        out.append(f"  {BOND_PARAMS[k]}: {'true' if v != '0' else 'false'}")
                    elif k in _NUMERIC:
                        out.append(f"  {BOND_PARAMS[k]}: {v}")
                    else:
                        out.append(f"  {BOND_PARAMS[k]}: {q(v)}")
        elif i.kind == "vlan":
            out += [f"id: {i.vlan_id}", f"link: {q(i.vlan_parent or '')}"]
        if i.set_mac:
            out.append(f"macaddress: {q(i.set_mac)}")
        if i.mtu:
            out.append(f"mtu: {i.mtu}")
        if not i.onboot:
            out.append("activation-mode: manual")
        if i.master:
            return out  # its bond lists it; it has no address of its own
        v4, v6 = i.ipv4, i.ipv6
        if v4.method == "dhcp":
            out.append("dhcp4: true")
            overrides = []
            if not i.dns.from_dhcp:
                overrides.append("use-dns: false")
            if not v4.default_route:
                overrides.append("use-routes: false")
            if v4.metric is not None:
                overrides.append(f"route-metric: {v4.metric}")
            if overrides:
                out += ["dhcp4-overrides:", *("  " + o for o in overrides)]
        addresses = list(v4.addresses) + (list(v6.addresses) if v6 else [])
        if addresses:
            out.append("addresses: [" + ", ".join(q(a) for a in addresses) + "]")
        routes = []
        if v4.gateway and v4.default_route:
            routes.append((v4.gateway, v4.metric))
        if v6 is not None and v6.gateway and v6.default_route:
            routes.append((v6.gateway, v6.metric))
        if routes:
            out.append("routes:")
            for gw, metric in routes:
                out += ["  - to: default", f"    via: {q(gw)}"]
                if metric is not None:
                    out.append(f"    metric: {metric}")
        if v6 is not None:
            if v6.method == "auto":
                out.append("accept-ra: true")
                if not i.dns.from_dhcp6:
                    out += ["ra-overrides:", "  use-dns: false"]
            elif v6.method in ("static", "link-local"):
                out.append("accept-ra: false")
            elif v6.method == "disabled":
                out += ["accept-ra: false", "link-local: []"]
            if v6.mtu:
                out.append(f"ipv6-mtu: {v6.mtu}")
        if i.dns.servers or i.dns.search:
            out.append("nameservers:")
            if i.dns.search:
                out.append("  search: [" + ", ".join(q(d) for d in i.dns.search) + "]")
            if i.dns.servers:
                out.append("  addresses: [" + ", ".join(q(d) for d in i.dns.servers) + "]")
        return out
