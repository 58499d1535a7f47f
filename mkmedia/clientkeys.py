"""Naming a client's own boot entry the way pxelinux looks for it.

pxelinux (and GRUB 2.06's net search, which copies it) asks the TFTP server
for pxelinux.cfg/01-<mac with dashes>, then for the client's IPv4 address in
upper-case hex (C0A80A05 for 192.168.10.5), then that hex one digit shorter
at a time (C0A80A0, C0A80A... a subnet), then `default`.  A selector on the
command line is a MAC, an IPv4 address, a network whose prefix is a whole
number of hex digits (192.168.10.0/24 -> C0A80A), or the hex itself.

iPXE has no substring operations: it finds a client by MAC or by its whole
address (`${ip:hexraw}`, lower case), never by a network (`media pxe` warns
when a tree with iPXE has a network entry: mkmedia.pxe.ipxe_unmatched).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from sysclone.errors import ConfigError

_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
_PXE_MAC = re.compile(r"01-[0-9a-f]{2}(-[0-9a-f]{2}){5}\Z")
_HEX = re.compile(r"[0-9A-Fa-f]{1,8}\Z")
HINT = ("a MAC (52:54:00:12:34:56), an IPv4 address (10.0.0.5), a network with a prefix "
        "that is a multiple of 4 (10.0.0.0/24) or its hex (0A0000)")


@dataclass(frozen=True)
class ClientKey:
    """Where one client's (or subnet's) entry lives in a boot tree."""

    name: str  # pxelinux's file name: 01-52-54-00-12-34-56 or C0A80A05

    @property
    def is_mac(self) -> bool:
        return self.name.startswith("01-")

    @property
    def mac(self) -> str | None:
        return self.name[3:].replace("-", ":") if self.is_mac else None

    @property
    def ipxe_name(self) -> str | None:
        """iPXE's lookup name, or None when iPXE cannot find it (a network)."""
        if self.is_mac:
            return self.name
        return self.name.lower() if len(self.name) == 8 else None

    @property
    def shown(self) -> str:
        """As a person writes it: the MAC, the address or the network."""
        if self.is_mac:
            return str(self.mac)
        address = ipaddress.IPv4Address(int(self.name.ljust(8, "0"), 16))
        return str(address) if len(self.name) == 8 else f"{address}/{len(self.name) * 4}"


def mac_key(mac: str) -> ClientKey:
    if not _MAC.match(mac):
        raise ConfigError(f"MAC address {mac!r} is not valid", hint="expected aa:bb:cc:dd:ee:ff")
    return ClientKey("01-" + mac.lower().replace(":", "-"))


def ip_hex(address: str) -> str:
    return f"{int(ipaddress.IPv4Address(address)):08X}"


def parse_selector(text: str) -> ClientKey:
    """A client selector as typed (or stored) -> its key."""
    value = text.strip()
    if _PXE_MAC.match(value.lower()):
        return ClientKey(value.lower())
    if _MAC.match(value):
        return mac_key(value)
    if "/" in value:
        try:
            net = ipaddress.IPv4Network(value, strict=False)
        except ValueError:
            raise ConfigError(f"client {text!r} is not a network", hint=HINT) from None
        if net.prefixlen % 4 or net.prefixlen == 0:
            raise ConfigError(f"client network {text!r}: pxelinux matches whole hex digits, "
                              "so the prefix must be 4, 8, ... 32", hint=HINT)
        return ClientKey(ip_hex(str(net.network_address))[: net.prefixlen // 4])
    try:
        return ClientKey(ip_hex(value))
    except ValueError:
        pass
    if _HEX.match(value):
        return ClientKey(value.upper())
    raise ConfigError(f"client {text!r} is not a MAC, an address or a network", hint=HINT)
