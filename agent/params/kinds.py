"""Value types of install parameters: turning one raw string into a typed value.

Each parser takes the raw text and returns the typed value, or raises
`BadValue` with the reason, worded to follow the quoted value
("'rebot' is not one of reboot, ...").  The caller adds the parameter name
and the source, so the reasons never repeat them.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, StrEnum
from urllib.parse import urlsplit

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from agent.storage.diskspec import DiskSpec

IPAddress = ipaddress.IPv4Address
"""Addresses in install parameters: the install network is IPv4 only (the
agent's DHCP client, its netlink setup and SystemImager's own parameters
all are), so an IPv6 value is refused when it is parsed rather than failing
later, deep in the network code."""

_IPV4_ONLY = "is an IPv6 address; the install network is IPv4 only"


class BadValue(Exception):
    """A raw value that does not fit its type; the message is the reason."""

    def __init__(self, reason: str, *, suggestion: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.suggestion = suggestion


class Kind(Enum):
    """The type of one value (for lists and repeatables: of one item)."""

    TEXT = "text"
    NAME = "name"
    BOOL = "bool"
    INT = "int"
    PORT = "port"
    ENUM = "enum"
    HOST = "host"
    HOSTNAME = "hostname"
    HOSTPORT = "host[:port]"
    IP = "ip"
    NETMASK = "netmask"
    IFACE = "iface"
    URL = "url"
    DISK = "disk"
    STEP = "step"


class Shape(Enum):
    """How many values a parameter holds."""

    SCALAR = "scalar"  # one value; the last occurrence wins
    LIST = "list"  # one comma-separated value; the last occurrence wins
    REPEATABLE = "repeatable"  # every occurrence adds to the list (commas allowed too)


@dataclass(frozen=True)
class HostPort:
    """A host (name or IP address) with an optional port."""

    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"


TRUE_WORDS = frozenset({"1", "y", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "n", "no", "false", "off"})

# RFC 1123 labels: letters, digits and inner hyphens, at most 63 characters.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)\Z")
# The kernel's own rule for a device name (dev_valid_name): at most 15
# bytes, no '/', ':' or white space.  A MAC address names an interface too.
_IFACE = re.compile(r"[^\s/:]{1,15}\Z")
_MAC = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\Z")
_NAME = re.compile(r"[^\s/\x00]+\Z")
_STEP = re.compile(r"[a-z0-9][a-z0-9_-]*\Z")


def parse_bool(raw: str) -> bool:
    """0/1, y/n, yes/no (and true/false, on/off); an empty value, as from a
    bare flag, means on."""
    word = raw.strip().lower()
    if word == "" or word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise BadValue("is not a boolean (use 1/0, y/n or yes/no)")


def parse_int(raw: str, minimum: int | None = None, maximum: int | None = None) -> int:
    text = raw.strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise BadValue("is not a whole number")
    value = int(text, 10)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            raise BadValue(f"is below the minimum of {minimum}")
        if minimum is None:
            raise BadValue(f"is above the maximum of {maximum}")
        raise BadValue(f"is not between {minimum} and {maximum}")
    return value


def parse_port(raw: str) -> int:
    try:
        return parse_int(raw, 1, 65535)
    except BadValue:
        raise BadValue("is not a port number (1-65535)") from None


def is_hostname(text: str) -> bool:
    """A host name or FQDN of RFC 1123 labels (a trailing dot allowed)."""
    name = text[:-1] if text.endswith(".") else text
    if not name or len(name) > 253:
        return False
    labels = name.split(".")
    if all(label.isdigit() for label in labels):
        return False  # 10.0.0 or 300.1.1.1: a broken address, not a name
    return all(_LABEL.match(label) for label in labels)


def parse_ip(raw: str) -> IPAddress:
    """An IPv4 address; an IPv6 one is refused with the reason."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise BadValue("is not an IPv4 address") from None
    if isinstance(address, ipaddress.IPv6Address):
        raise BadValue(_IPV4_ONLY)
    return address


def parse_hostname(raw: str) -> str:
    text = raw.strip()
    if not is_hostname(text):
        raise BadValue("is not a valid host name (letters, digits, '-', dot-separated)")
    return text


def parse_host(raw: str) -> str:
    """A host name or an IPv4 address, returned in its normal form.  Servers
    are reached over the install network, so an IPv6 address is refused."""
    text = raw.strip()
    if _is_ipv6(text):
        raise BadValue(_IPV4_ONLY)
    try:
        return str(parse_ip(text))
    except BadValue:
        pass
    if is_hostname(text):
        return text
    raise BadValue("is not a host name or IPv4 address")


def _is_ipv6(text: str) -> bool:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return isinstance(ipaddress.ip_address(text), ipaddress.IPv6Address)
    except ValueError:
        return False


def parse_hostport(raw: str) -> HostPort:
    """host or host:port, the host a name or an IPv4 address.  IPv6 forms
    (bare, [IPv6] or [IPv6]:port) are recognized to be refused clearly."""
    text = raw.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise BadValue("has an unclosed '['")
        if _is_ipv6(text[:end + 1]):
            raise BadValue(_IPV4_ONLY)
        raise BadValue("is not host or host:port")
    if text.count(":") > 1:
        raise BadValue(_IPV4_ONLY if _is_ipv6(text) else "is not host or host:port")
    host: str = text
    port_text: str | None = None
    if ":" in text:
        host, port_text = text.split(":")
    try:
        host = parse_host(host)
    except BadValue:
        raise BadValue("is not a host name or IPv4 address, optionally with :port") from None
    if port_text is None:
        return HostPort(host)
    try:
        return HostPort(host, parse_port(port_text))
    except BadValue:
        raise BadValue(f"has a bad port {port_text!r} (1-65535)") from None


def parse_netmask(raw: str) -> int:
    """A dotted IPv4 netmask (255.255.255.0) or a prefix length (24 or /24),
    returned as the prefix length."""
    text = raw.strip().removeprefix("/")
    if text.isdigit():
        length = int(text)
        if length > 32:
            raise BadValue("is not an IPv4 prefix length (0-32); the install network is "
                           "IPv4 only")
        return length
    try:
        bits = int(ipaddress.IPv4Address(text))
    except ValueError:
        raise BadValue("is not a netmask (255.255.255.0) or prefix length (24)") from None
    inverted = ~bits & 0xFFFFFFFF
    if inverted & (inverted + 1):
        raise BadValue("is not a netmask: its one-bits are not contiguous")
    return 32 - inverted.bit_length()


def parse_iface(raw: str) -> str:
    """An interface by name (eth0, enp1s0) or by MAC (lower-cased, as
    sysfs spells it)."""
    text = raw.strip()
    if _MAC.match(text):
        return text.lower()
    if not _IFACE.match(text) or text in (".", ".."):
        raise BadValue("is neither a network interface name (at most 15 characters, no '/', "
                       "':' or spaces) nor a MAC address (52:54:00:12:34:56)")
    return text


def parse_url(raw: str) -> str:
    text = raw.strip()
    parts = urlsplit(text)
    if not parts.scheme or not parts.netloc or any(c.isspace() for c in text):
        raise BadValue("is not a URL (scheme://host/path)")
    return text


def parse_name(raw: str) -> str:
    """A file or image name: no '/' and no white space."""
    text = raw.strip()
    if not _NAME.match(text) or text in (".", ".."):
        raise BadValue("is not a plain name (no '/' or spaces)")
    return text


def parse_text(raw: str) -> str:
    return raw.strip()


def parse_disk(raw: str) -> DiskSpec:
    """A disk (sda becomes /dev/sda; /dev/disk/by-id/... links are kept, to
    be resolved on the machine) or a rule (size>=100G+bus=nvme): see
    agent.storage.diskspec."""
    # Imported only when a disk is named: the storage model is not part of
    # the agent's start (the ready marker comes before it).
    from agent.storage.diskspec import parse_disk_spec

    try:
        return parse_disk_spec(raw)
    except ValueError as e:
        raise BadValue(str(e)) from None


def parse_step(raw: str) -> str:
    text = raw.strip()
    if not _STEP.match(text):
        raise BadValue("is not a step name (lower-case letters, digits, '-')")
    return text


def parse_enum(raw: str, choices: type[StrEnum]) -> StrEnum:
    text = raw.strip().lower()
    try:
        return choices(text)
    except ValueError:
        pass
    names = [str(c) for c in choices]
    from difflib import get_close_matches

    close = get_close_matches(text, names, n=1)
    raise BadValue(f"is not one of {', '.join(names)}",
                   suggestion=close[0] if close else None) from None


SIMPLE_PARSERS: dict[Kind, Callable[[str], Any]] = {
    Kind.TEXT: parse_text,
    Kind.NAME: parse_name,
    Kind.BOOL: parse_bool,
    Kind.PORT: parse_port,
    Kind.HOST: parse_host,
    Kind.HOSTNAME: parse_hostname,
    Kind.HOSTPORT: parse_hostport,
    Kind.IP: parse_ip,
    Kind.NETMASK: parse_netmask,
    Kind.IFACE: parse_iface,
    Kind.URL: parse_url,
    Kind.DISK: parse_disk,
    Kind.STEP: parse_step,
}
"""Parsers of the kinds that need nothing but the text (INT and ENUM need the
parameter's bounds or choices)."""
