"""NetworkManager: keyfiles in /etc/NetworkManager/system-connections.

NetworkManager reads keyfiles whatever its `plugins=` says (the keyfile
plugin is always on), but only for devices it manages: the image's own
configuration can leave a device unmanaged ([keyfile] unmanaged-devices,
as Ubuntu's 10-globally-managed-devices.conf does for every wired NIC).
When it would, a drop-in makes the NICs sysclone configures managed again,
and nothing else.  The service is enabled if it is not.
"""

from __future__ import annotations

import fnmatch
import re
import uuid as uuidlib
from pathlib import Path

from agent.configure import units
from agent.configure.footprint import MAINLINE, NONE, PREFERRED, exists
from agent.configure.netmodel import Iface, Ipv4, Ipv6, write_file
from agent.configure.netstyle import Problems, Style, warn_common

CONNECTIONS = "etc/NetworkManager/system-connections"
MANAGED_DROPIN = "etc/NetworkManager/conf.d/99-sysclone-managed.conf"
SERVICE = "NetworkManager.service"
# Stable connection UUIDs: the same configuration gives the same files.
NAMESPACE = uuidlib.UUID("6f1c3c1e-5d1a-4c55-9a7e-3b8f0c2f7a10")


def conf_files(root: Path) -> list[Path]:
    """NetworkManager's configuration, in the order it reads it: vendor
    snippets (unless an /etc file of the same name shadows them),
    NetworkManager.conf, then /etc/NetworkManager/conf.d."""
    lib = {p.name: p for p in sorted((root / "usr/lib/NetworkManager/conf.d").glob("*.conf"))}
    etc = {p.name: p for p in sorted((root / "etc/NetworkManager/conf.d").glob("*.conf"))}
    main = root / "etc/NetworkManager/NetworkManager.conf"
    return ([p for n, p in sorted(lib.items()) if n not in etc]
            + ([main] if main.is_file() else []) + [p for _, p in sorted(etc.items())])


def read_setting(root: Path, section: str, key: str, skip: str | None = None) -> list[str]:
    """A list-valued setting as NetworkManager ends up with it (later files
    override; `key+=` appends and `key-=` removes, its keyfile extension)."""
    value: list[str] = []
    for f in conf_files(root):
        if skip and f.name == Path(skip).name and f.parent.name == "conf.d" and \
                "etc" in f.parts:
            continue
        current = None
        for raw in f.read_text(errors="replace").splitlines():
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            m = re.fullmatch(r"\[(.+)\]", line)
            if m:
                current = m.group(1)
                continue
            if current != section:
                continue
            m = re.fullmatch(rf"{re.escape(key)}\s*([+-]?)=\s*(.*)", line)
            if not m:
                continue
            items = [x.strip() for x in re.split(r"[;,]", m.group(2)) if x.strip()]
            if m.group(1) == "+":
                value += [x for x in items if x not in value]
            elif m.group(1) == "-":
                value = [x for x in value if x not in items]
            else:
                value = items
    return value


def ifupdown_names(root: Path) -> set[str]:
    """Interfaces /etc/network/interfaces (and interfaces.d) configure."""
    files = [root / "etc/network/interfaces",
             *sorted((root / "etc/network/interfaces.d").glob("*"))]
    names: set[str] = set()
    for f in files:
        if f.is_file():
            names |= set(re.findall(r"^\s*iface\s+(\S+)", f.read_text(errors="replace"), re.M))
    return names - {"lo"}


def spec_matches(spec: str, i: Iface) -> bool:
    """One device spec of NetworkManager.conf(5) against an interface."""
    if spec == "*":
        return True
    if re.fullmatch(r"([0-9A-Fa-f]{2}:)+[0-9A-Fa-f]{2}", spec):
        kind, value = "mac", spec  # a bare MAC address
    else:
        kind, sep, value = spec.partition(":")
        if not sep:
            kind, value = "interface-name", spec  # a bare interface name
    if kind == "mac":
        return bool(i.mac) and value.lower() == (i.mac or "").lower()
    if kind == "interface-name":
        value = value.lstrip("=~")
        return fnmatch.fnmatchcase(i.name, value)
    if kind == "type":
        return value == {"ethernet": "ethernet", "infiniband": "infiniband", "bond": "bond",
                         "vlan": "vlan"}[i.kind]
    return False  # driver:, s390-subchannels:... never match what sysclone writes


def unmanaged(specs: list[str], i: Iface) -> bool:
    positive = [s for s in specs if not s.startswith("except:")]
    negative = [s.removeprefix("except:") for s in specs if s.startswith("except:")]
    if any(spec_matches(s, i) for s in negative):
        return False
    if not positive and negative:
        return True  # only negative specs: everything else matches
    return any(spec_matches(s, i) for s in positive)


class NetworkManager(Style):
    name = "NetworkManager"
    controls = ("nm", "NetworkManager")
    bond_options = None  # NetworkManager takes the kernel's names as they are

    def fits(self, root: Path) -> int:
        if not exists(root, "usr/sbin/NetworkManager"):
            return NONE
        return PREFERRED if units.is_enabled(root, SERVICE) else MAINLINE

    def check_iface(self, root: Path, i: Iface, ifaces: list[Iface], p: Problems) -> None:
        warn_common(i, p, uuid=True, failure_fatal=True)
        if i.name in ifupdown_names(root) and \
                "ifupdown" in read_setting(root, "main", "plugins") and \
                read_setting(root, "ifupdown", "managed") != ["true"]:
            p.warn(i, f"the image's /etc/network/interfaces configures {i.name} too: "
                      "NetworkManager leaves it to ifupdown ([ifupdown] managed=false)")
        if i.ipv4.broadcast:
            p.refuse(i, f"broadcast {i.ipv4.broadcast} (NetworkManager always uses the "
                        "network's own)")
        if i.ipv6 is not None and i.ipv6.mtu:
            p.refuse(i, "ipv6_mtu (NetworkManager 1.42 has no per-family MTU)")

    def render(self, root: Path, ifaces: list[Iface]) -> list[str]:
        written = [write_file(root, f"{CONNECTIONS}/{i.connection}.nmconnection",
                              self.keyfile(i, ifaces), 0o600) for i in ifaces]
        written += self.make_managed(root, ifaces)
        written += units.enable(root, SERVICE)
        return written

    def make_managed(self, root: Path, ifaces: list[Iface]) -> list[str]:
        specs = read_setting(root, "keyfile", "unmanaged-devices", skip=MANAGED_DROPIN)
        if not any(unmanaged(specs, i) for i in ifaces):
            return []
        exceptions = [f"except:mac:{i.mac}" if i.mac else f"except:interface-name:{i.name}"
                      for i in ifaces if unmanaged(specs, i)]
        text = ("# written by sysclone: the image's configuration leaves these devices\n"
                "# unmanaged; sysclone configured them for NetworkManager.\n"
                "[keyfile]\nunmanaged-devices=" + ";".join([*specs, *exceptions]) + "\n")
        return [write_file(root, MANAGED_DROPIN, text)]

    def keyfile(self, i: Iface, ifaces: list[Iface]) -> str:
        kind = i.kind  # NetworkManager's connection types have the same names
        uuid = i.uuid or str(uuidlib.uuid5(NAMESPACE, f"{i.connection}/{i.mac or i.name}"))
        out = ["[connection]", f"id={i.connection}", f"uuid={uuid}", f"type={kind}"]
        if i.kind in ("bond", "vlan") or not i.mac:
            out.append(f"interface-name={i.name}")
        out.append(f"autoconnect={'true' if i.onboot else 'false'}")
        # Wins over any profile the image has that could match the device.
        out.append("autoconnect-priority=10")
        if i.master:
            out += [f"master={i.master}", "slave-type=bond"]
        dev = []
        if i.mac and i.kind in ("ethernet", "infiniband"):
            dev.append(f"mac-address={i.mac.upper()}")
        if i.set_mac:
            dev.append(f"cloned-mac-address={i.set_mac.upper()}")
        if i.mtu:
            dev.append(f"mtu={i.mtu}")
        if dev:
            out += ["", f"[{'infiniband' if i.kind == 'infiniband' else 'ethernet'}]", *dev]
        if i.kind == "bond":
            out += ["", "[bond]", *(f"{k}={v}" for k, v in i.bond_options)]
            if not i.bond_option("mode"):
                out.append("mode=balance-rr")
        elif i.kind == "vlan":
            out += ["", "[vlan]", f"id={i.vlan_id}", f"parent={i.vlan_parent}"]
        if not i.master:  # a slave has no address of its own
            out += ["", "[ipv4]", *self.ipv4(i), "", "[ipv6]", *self.ipv6(i)]
        return "\n".join(out) + "\n"

    @staticmethod
    def ipv4(i: Iface) -> list[str]:
        v4 = i.ipv4
        method = {"dhcp": "auto", "static": "manual", "none": "disabled"}[v4.method]
        lines = [f"method={method}"]
        for n, a in enumerate(v4.addresses, 1):
            gw = f",{v4.gateway}" if n == 1 and v4.gateway and v4.default_route else ""
            lines.append(f"address{n}={a}{gw}")
        v4dns = [d for d in i.dns.servers if ":" not in d]
        if v4dns:
            lines.append("dns=" + ";".join(v4dns) + ";")
        if i.dns.search:
            lines.append("dns-search=" + ";".join(i.dns.search) + ";")
        if v4.method == "dhcp" and not i.dns.from_dhcp:
            lines.append("ignore-auto-dns=true")
        return lines + _routing(v4)

    @staticmethod
    def ipv6(i: Iface) -> list[str]:
        v6 = i.ipv6
        if v6 is None:
            return ["method=auto"]
        method = {"auto": "auto", "static": "manual", "link-local": "link-local",
                  "disabled": "disabled"}[v6.method]
        lines = [f"method={method}"]
        for n, a in enumerate(v6.addresses, 1):
            lines.append(f"address{n}={a}")
        if v6.gateway:
            lines.append(f"gateway={v6.gateway}")
        v6dns = [d for d in i.dns.servers if ":" in d]
        if v6dns:
            lines.append("dns=" + ";".join(v6dns) + ";")
        if v6.method == "auto" and not i.dns.from_dhcp6:
            lines.append("ignore-auto-dns=true")
        return lines + _routing(v6)


def _routing(ip: Ipv4 | Ipv6) -> list[str]:
    """What [ipv4] and [ipv6] say alike: the default route, metric, failure."""
    lines: list[str] = []
    if not ip.default_route:
        lines.append("never-default=true")
    if ip.metric is not None:
        lines.append(f"route-metric={ip.metric}")
    if ip.required:
        lines.append("may-fail=false")
    return lines
