"""systemd-networkd: .network files (and .netdev for bonds and VLANs) in
/etc/systemd/network, matched by MAC address where there is one; the
service is enabled, since an image can carry networkd without using it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.configure import units
from agent.configure.footprint import GENERIC, NONE, PREFERRED, exists
from agent.configure.netmodel import Iface, non_default_bond_options, vlans_on, write_file
from agent.configure.netstyle import Problems, Style, warn_common

NETWORK_DIR = "etc/systemd/network"
SERVICE = "systemd-networkd.service"


def _ms(v: str) -> str:
    return f"{v}ms"


def _yes(v: str) -> str:
    return "yes" if v not in ("0", "no") else "no"


# kernel bonding option -> ([Bond] key, value conversion)
BOND_KEYS: dict[str, tuple[str, Callable[[str], str]]] = {
    "mode": ("Mode", str), "xmit_hash_policy": ("TransmitHashPolicy", str),
    "lacp_rate": ("LACPTransmitRate", str), "ad_select": ("AdSelect", str),
    "fail_over_mac": ("FailOverMACPolicy", str),
    "primary_reselect": ("PrimaryReselectPolicy", str), "arp_validate": ("ARPValidate", str),
    "arp_all_targets": ("ARPAllTargets", str), "miimon": ("MIIMonitorSec", _ms),
    "updelay": ("UpDelaySec", _ms), "downdelay": ("DownDelaySec", _ms),
    "arp_interval": ("ARPIntervalSec", _ms),
    "arp_ip_target": ("ARPIPTargets", lambda v: v.replace(",", " ")),
    "resend_igmp": ("ResendIGMP", str), "num_grat_arp": ("GratuitousARP", str),
    "num_unsol_na": ("GratuitousARP", str), "all_slaves_active": ("AllSlavesActive", _yes),
    "min_links": ("MinLinks", str), "lp_interval": ("LearnPacketIntervalSec", str),
    "packets_per_slave": ("PacketsPerSlave", str),
    "tlb_dynamic_lb": ("DynamicTransmitLoadBalancing", _yes),
    "ad_actor_sys_prio": ("AdActorSystemPriority", str),
    "ad_user_port_key": ("AdUserPortKey", str), "ad_actor_system": ("AdActorSystem", str),
}


class Networkd(Style):
    name = "systemd-networkd"
    controls = ("systemd",)
    bond_options = frozenset([*BOND_KEYS, "primary"])

    def fits(self, root: Path) -> int:
        if not exists(root, "lib/systemd/systemd-networkd", "usr/lib/systemd/systemd-networkd"):
            return NONE
        # Every systemd image carries networkd; only an enabled one says the
        # image uses it.  Installed alone, it is the last resort (and is
        # enabled when written to).
        return PREFERRED if units.is_enabled(root, SERVICE) else GENERIC

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        warn_common(i, p, failure_fatal=True)
        if i.kind == "infiniband" and i.mac:
            p.warn(i, "systemd-networkd matches InfiniBand ports by name, not by their "
                      f"20-byte address: {i.name}")
        for k, v in i.bond_options:
            if k == "arp_validate" and v.startswith("filter"):
                p.refuse(i, f"bonding option arp_validate={v}")

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        written = []
        for i in ifaces:
            if i.kind in ("bond", "vlan"):
                written.append(write_file(root, f"{NETWORK_DIR}/50-sysclone-{i.name}.netdev",
                                          self.netdev(i, ifaces)))
            written.append(write_file(root, f"{NETWORK_DIR}/50-sysclone-{self.id(i)}.network",
                                      self.network(i, ifaces)))
        written += units.enable(root, SERVICE)
        return written

    @staticmethod
    def id(i: Iface) -> str:
        return i.mac.replace(":", "") if i.mac and i.kind == "ethernet" else i.name

    def netdev(self, i: Iface, ifaces: list[Iface]) -> str:
        lines = ["# written by sysclone", "[NetDev]", f"Name={i.name}",
                 f"Kind={'bond' if i.kind == 'bond' else 'vlan'}"]
        if i.mtu:
            lines.append(f"MTUBytes={i.mtu}")
        if i.set_mac:
            lines.append(f"MACAddress={i.set_mac}")
        if i.kind == "vlan":
            lines += ["", "[VLAN]", f"Id={i.vlan_id}"]
        else:
            opts = [(k, v) for k, v in non_default_bond_options(i) if k != "primary"]
            if i.bond_option("mode") and ("mode", i.bond_option("mode")) not in opts:
                opts.insert(0, ("mode", i.bond_option("mode") or ""))
            lines += ["", "[Bond]"]
            lines += [f"{BOND_KEYS[k][0]}={BOND_KEYS[k][1](v)}" for k, v in opts]
        return "\n".join(lines) + "\n"

    def network(self, i: Iface, ifaces: list[Iface]) -> str:
        lines = ["# written by sysclone", "[Match]"]
        lines.append(f"MACAddress={i.mac}" if i.mac and i.kind == "ethernet"
                     else f"Name={i.name}")
        link = []
        if i.set_mac and i.kind not in ("bond", "vlan"):
            link.append(f"MACAddress={i.set_mac}")
        if i.mtu and i.kind not in ("bond", "vlan"):
            link.append(f"MTUBytes={i.mtu}")
        if not i.onboot:
            link.append("ActivationPolicy=manual")
        families = [f for f, req in (("ipv4", i.ipv4.required),
                                     ("ipv6", i.ipv6 is not None and i.ipv6.required)) if req]
        if families:
            link.append("RequiredFamilyForOnline=" + ("both" if len(families) == 2
                                                      else families[0]))
        if link:
            lines += ["", "[Link]", *link]
        lines += ["", "[Network]"]
        if i.master:
            lines.append(f"Bond={i.master}")
            bond = next(b for b in ifaces if b.name == i.master)
            if bond.bond_option("primary") == i.name:
                lines.append("PrimarySlave=yes")
            return "\n".join(lines) + "\n"
        v4, v6 = i.ipv4, i.ipv6
        sections: list[list[str]] = []
        if v4.method == "dhcp":
            lines.append("DHCP=ipv4")
        for a in v4.addresses:
            if v4.broadcast and a == v4.addresses[0]:
                sections.append(["[Address]", f"Address={a}", f"Broadcast={v4.broadcast}"])
            else:
                lines.append(f"Address={a}")
        if v4.gateway and v4.default_route:
            if v4.metric is not None and v4.method == "static":
                sections.append(["[Route]", f"Gateway={v4.gateway}", f"Metric={v4.metric}"])
            else:
                lines.append(f"Gateway={v4.gateway}")
        if v6 is not None:
            if v6.method == "disabled":
                lines += ["LinkLocalAddressing=no", "IPv6AcceptRA=no"]
            elif v6.method in ("link-local", "static"):
                lines.append("IPv6AcceptRA=no")
            else:
                lines.append("IPv6AcceptRA=yes")
            lines += [f"Address={a}" for a in v6.addresses]
            if v6.gateway and v6.default_route:
                if v6.metric is not None:
                    sections.append(["[Route]", f"Gateway={v6.gateway}", f"Metric={v6.metric}"])
                else:
                    lines.append(f"Gateway={v6.gateway}")
            if v6.mtu:
                lines.append(f"IPv6MTUBytes={v6.mtu}")
        lines += [f"DNS={d}" for d in i.dns.servers]
        if i.dns.search:
            lines.append("Domains=" + " ".join(i.dns.search))
        lines += [f"VLAN={v.name}" for v in vlans_on(ifaces, i.name)]
        if v4.method == "dhcp":
            dhcp = []
            if not i.dns.from_dhcp:
                dhcp.append("UseDNS=no")
            if not v4.default_route:
                dhcp.append("UseGateway=no")
            if v4.metric is not None:
                dhcp.append(f"RouteMetric={v4.metric}")
            if dhcp:
                sections.append(["[DHCPv4]", *dhcp])
        if v6 is not None and v6.method == "auto":
            ra = []
            if not i.dns.from_dhcp6:
                ra.append("UseDNS=no")
            if v6.metric is not None:
                ra.append(f"RouteMetric={v6.metric}")
            if ra:
                sections.append(["[IPv6AcceptRA]", *ra])
        for s in sections:
            lines += ["", *s]
        return "\n".join(lines) + "\n"
