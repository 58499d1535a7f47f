"""The live network configuration of a running client, for the installer
that will replace it (`sysclone updateclient --autoinstall`): which NIC
reaches the default route, its MAC and address, the gateway and name
servers, and whether the address came from DHCP or is static.

The kernel's view comes from netlink (pyroute2).  How the address was
configured is asked of whoever configured it, over D-Bus (dbus-fast):
NetworkManager (the connection's ipv4.method) or systemd-networkd (the
address's ConfigSource in the link's description).  Without either, a
finite lifetime on the address means DHCP (dhclient, NetworkManager and
networkd all set one), an infinite one a static address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

FOREVER = 0xFFFFFFFF  # IFA_CACHEINFO's "no lifetime"
RESOLV_CONF = Path("/etc/resolv.conf")
NM = "org.freedesktop.NetworkManager"
NETWORKD = "org.freedesktop.network1"


@dataclass(frozen=True)
class LiveNetwork:
    interface: str
    mac: str
    address: str  # 10.0.0.5/24
    method: str  # dhcp | static
    gateway: str | None = None
    dns: tuple[str, ...] = ()
    domain: str | None = None
    source: str = "netlink"  # who said how it was configured
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dns"] = list(self.dns)
        return d


@dataclass(frozen=True)
class KernelView:
    """What netlink says of the default route's interface."""

    index: int
    interface: str
    mac: str
    address: str
    gateway: str | None
    finite_lifetime: bool


def kernel_view(ipr: Any = None) -> KernelView:
    """From an IPRoute (pyroute2); tests pass a fake."""
    if ipr is None:
        from pyroute2 import IPRoute

        with IPRoute() as real:
            return kernel_view(real)
    routes = [r for r in ipr.get_routes(family=socket.AF_INET)
              if r.get("dst_len") == 0 and r.get_attr("RTA_OIF") is not None]
    if not routes:
        raise SyscloneError("this machine has no IPv4 default route: its install network "
                            "cannot be told", hint="pass it with --append si.ip-address=...")
    route = min(routes, key=lambda r: r.get_attr("RTA_PRIORITY") or 0)
    index = int(route.get_attr("RTA_OIF"))
    link = ipr.get_links(index)[0]
    addrs = ipr.get_addr(index=index, family=socket.AF_INET)
    if not addrs:
        raise SyscloneError(f"{link.get_attr('IFLA_IFNAME')} has no IPv4 address")
    a = addrs[0]
    cache = a.get_attr("IFA_CACHEINFO") or {}
    return KernelView(index, str(link.get_attr("IFLA_IFNAME")),
                      str(link.get_attr("IFLA_ADDRESS")).lower(),
                      f"{a.get_attr('IFA_ADDRESS')}/{a.get('prefixlen')}",
                      route.get_attr("RTA_GATEWAY"),
                      int(cache.get("ifa_valid", FOREVER)) != FOREVER)


def resolv_conf(path: Path | None = None) -> tuple[tuple[str, ...], str | None]:
    """Name servers (not the local stub's) and the first search domain."""
    dns: list[str] = []
    domain = None
    try:
        text = (path or RESOLV_CONF).read_text()
    except OSError:
        return (), None
    for line in text.splitlines():
        w = line.split()
        if len(w) >= 2 and w[0] == "nameserver" and not w[1].startswith("127."):
            dns.append(w[1])
        elif len(w) >= 2 and w[0] in ("search", "domain") and domain is None:
            domain = w[1]
    return tuple(dns), domain


# ---------------------------------------------------------------- D-Bus ---

async def _call(bus: Any, dest: str, path: str, iface: str, member: str,
                signature: str = "", body: list[Any] | None = None) -> list[Any]:
    from dbus_fast import Message, MessageType

    reply = await bus.call(Message(destination=dest, path=path, interface=iface,
                                   member=member, signature=signature, body=body or []))
    if reply.message_type == MessageType.ERROR:
        raise SyscloneError(f"D-Bus {dest} {member}: {reply.error_name}: "
                            f"{reply.body[0] if reply.body else ''}")
    return list(reply.body)


async def _prop(bus: Any, dest: str, path: str, iface: str, name: str) -> Any:
    body = await _call(bus, dest, path, "org.freedesktop.DBus.Properties", "Get", "ss",
                       [iface, name])
    value = body[0]
    return getattr(value, "value", value)


async def networkmanager_method(bus: Any, interface: str) -> str | None:
    """The ipv4.method of the connection active on `interface` (auto -> dhcp)."""
    [device] = await _call(bus, NM, "/org/freedesktop/NetworkManager", NM,
                           "GetDeviceByIpIface", "s", [interface])
    active = await _prop(bus, NM, device, f"{NM}.Device", "ActiveConnection")
    if not active or active == "/":
        return None
    conn = await _prop(bus, NM, active, f"{NM}.Connection.Active", "Connection")
    [settings] = await _call(bus, NM, conn, f"{NM}.Settings.Connection", "GetSettings")
    ipv4 = settings.get("ipv4") or {}
    method = ipv4.get("method")
    method = getattr(method, "value", method)
    return {"auto": "dhcp", "manual": "static"}.get(str(method)) if method else None


async def networkd_method(bus: Any, index: int) -> str | None:
    """How networkd configured the link's IPv4 address (ConfigSource)."""
    [path] = await _call(bus, NETWORKD, "/org/freedesktop/network1",
                         f"{NETWORKD}.Manager", "GetLinkByIndex", "i", [index])
    if isinstance(path, list | tuple):  # (name, path) on some versions
        path = path[-1]
    [text] = await _call(bus, NETWORKD, str(path), f"{NETWORKD}.Link", "Describe")
    desc = json.loads(text)
    for a in desc.get("Addresses") or ():
        if a.get("Family") == socket.AF_INET:
            source = str(a.get("ConfigSource") or "").lower()
            if source.startswith("dhcp"):
                return "dhcp"
            if source == "static":
                return "static"
    return None


async def _ask_managers(view: KernelView, bus: Any | None) -> tuple[str | None, str]:
    own = bus is None
    if own:
        from dbus_fast import BusType
        from dbus_fast.aio import MessageBus

        bus = await MessageBus(bus_type=BusType.SYSTEM).connect()
    assert bus is not None
    try:
        for name, ask in (("NetworkManager", lambda: networkmanager_method(bus, view.interface)),
                          ("systemd-networkd", lambda: networkd_method(bus, view.index))):
            try:
                method = await ask()
            except Exception as e:  # not running, or not managing this link
                log.debug("%s: %s", name, e)
                continue
            if method:
                return method, name
        return None, "netlink"
    finally:
        if own:
            bus.disconnect()


def configuration_method(view: KernelView, bus: Any | None = None) -> tuple[str, str]:
    """(dhcp|static, who said so)."""
    try:
        method, source = asyncio.run(_ask_managers(view, bus))
    except Exception as e:  # no system bus at all
        log.debug("D-Bus: %s", e)
        method, source = None, "netlink"
    if method:
        return method, source
    return ("dhcp" if view.finite_lifetime else "static"), "netlink"


def read_live_network(ipr: Any = None, bus: Any = None,
                      resolv: Path | None = None) -> LiveNetwork:
    view = kernel_view(ipr)
    method, source = configuration_method(view, bus)
    dns, domain = resolv_conf(resolv)
    return LiveNetwork(view.interface, view.mac, view.address, method, view.gateway, dns,
                       domain, source)
