"""The static install network, checked as a whole.

SystemImager's local.cfg says of IPADDR, NETMASK, NETWORK, BROADCAST,
GATEWAY and GATEWAYDEV: "all of these settings depend on each other.  If
you set one, set them all."  So they are checked together, once the
parameters are resolved and before any phase runs:

- si.ip-address with si.netmask (or, without it, si.network-address and
  si.broadcast, which then give the prefix length) is the address;
- si.network-address and si.broadcast must agree with it, si.gateway must
  lie inside its network, si.gateway-iface must be the install interface;
- without si.ip-address the install network comes from DHCP, and any of
  the others is refused rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass

from agent.params.kinds import is_hostname
from agent.params.resolve import InstallParams
from agent.params.table import param
from sysclone.errors import ConfigError

STATIC_ONLY = ("si.netmask", "si.network-address", "si.broadcast", "si.gateway",
               "si.gateway-iface")
"""Parameters that mean something only with si.ip-address."""


@dataclass(frozen=True)
class StaticNetwork:
    """The install interface's static addressing."""

    interface: ipaddress.IPv4Interface  # address/prefix
    gateway: ipaddress.IPv4Address | None
    dns: tuple[ipaddress.IPv4Address, ...]
    gateway_iface: str | None  # checked against the chosen NIC by the network phase

    @property
    def address(self) -> str:
        return str(self.interface.ip)

    @property
    def prefixlen(self) -> int:
        return self.interface.network.prefixlen

    @property
    def broadcast(self) -> str:
        return str(self.interface.network.broadcast_address)


def _no_origin(name: str) -> str:
    return ""


def static_network(params: InstallParams, origin: Callable[[str], str] = _no_origin
                   ) -> StaticNetwork | None:
    """The static addressing the parameters ask for, None for DHCP, or
    ConfigError naming the parameter that does not fit (and, given
    `origin` such as Resolved.origin, where it came from)."""

    def error(name: str, message: str, hint: str | None = None) -> ConfigError:
        where = origin(name)
        return ConfigError(f"{name}: {message}" + (f" ({where})" if where else ""), hint=hint,
                           parameter=name, source=where or None)

    def value(name: str) -> object:
        return getattr(params, param(name).field)

    ip = params.ip_address
    if ip is None:
        for name in STATIC_ONLY:
            if value(name) is not None:
                raise error(name, f"{param(name).format_value(value(name))!r} needs a static "
                            "address", hint="set si.ip-address (IPADDR) and si.netmask too, or "
                            "leave it out to use DHCP")
        return None

    network = _network(params, error)
    iface = ipaddress.IPv4Interface(f"{ip}/{network.prefixlen}")
    if network.prefixlen < 31 and ip in (network.network_address, network.broadcast_address):
        which = "network" if ip == network.network_address else "broadcast"
        raise error("si.ip-address", f"'{ip}' is the {which} address of {network}",
                    hint="use a host address inside the network")
    if params.network_address is not None and params.network_address != network.network_address:
        raise error("si.network-address",
                    f"'{params.network_address}' does not match si.ip-address {iface}, whose "
                    f"network is {network.network_address}")
    if params.broadcast is not None and params.broadcast != network.broadcast_address:
        raise error("si.broadcast",
                    f"'{params.broadcast}' does not match si.ip-address {iface}, whose "
                    f"broadcast address is {network.broadcast_address}")
    gateway = params.gateway
    if gateway is not None and (gateway not in network or gateway == ip):
        why = "is the address itself" if gateway == ip else f"is outside {network}"
        raise error("si.gateway", f"'{gateway}' {why}: the default router must be reachable "
                    f"from si.ip-address {iface}")
    if params.gateway_iface is not None:
        if gateway is None:
            raise error("si.gateway-iface", f"'{params.gateway_iface}' is set without "
                        "si.gateway", hint="set si.gateway (GATEWAY) or leave it out")
        wanted = params.install_iface
        if wanted is not None and params.gateway_iface.lower() != wanted.lower():
            raise error("si.gateway-iface", f"'{params.gateway_iface}' is not the install "
                        f"interface {wanted}: the agent configures only that one",
                        hint=f"set it to {wanted} or leave it out")
    if not params.dns_servers:
        # Without DHCP and without si.dns-servers nothing resolves a name:
        # the install would stop at its first contact, as "unreachable".
        for name in NAMED_SERVERS:
            host = value(name)
            host = getattr(host, "host", host)
            if host is not None and is_hostname(str(host)):
                raise error(name, f"'{host}' is a host name, and a static install without "
                            "si.dns-servers cannot look it up",
                            hint=f"give {name} as an IP address, or set si.dns-servers "
                                 "(DNS_SERVERS in local.cfg)")
    return StaticNetwork(iface, gateway, tuple(params.dns_servers), params.gateway_iface)


# The servers an install reaches by name or address.
NAMED_SERVERS = ("si.image-server", "si.monitor-server", "si.log-server")


def _network(params: InstallParams,
             error: Callable[[str, str, str | None], ConfigError]) -> ipaddress.IPv4Network:
    """The static address's network: from si.netmask, else from
    si.network-address and si.broadcast."""
    ip = params.ip_address
    if params.netmask is not None:
        return ipaddress.IPv4Interface(f"{ip}/{params.netmask}").network
    net, bcast = params.network_address, params.broadcast
    if net is None or bcast is None:
        raise error("si.ip-address", f"'{ip}' needs a netmask",
                    "set si.netmask (NETMASK), e.g. 255.255.255.0 or 24")
    size = int(bcast) - int(net) + 1
    if size < 1 or size & (size - 1) or int(net) % size:
        raise error("si.broadcast", f"'{bcast}' and si.network-address {net} do not "
                    "delimit a network", "set si.netmask (NETMASK) instead")
    return ipaddress.IPv4Network(f"{net}/{32 - (size.bit_length() - 1)}")
