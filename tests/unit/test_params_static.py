"""The static install network checked as a whole (agent/params/static.py):
SystemImager's local.cfg "set one, set them all" settings."""

from __future__ import annotations

import ipaddress

import pytest

from agent.params import parse_cmdline, parse_local_cfg, resolve
from agent.params.static import STATIC_ONLY, StaticNetwork, static_network
from sysclone.errors import ConfigError

LOCAL_CFG = """\
DEVICE=eth0
IPADDR=192.168.1.7
NETMASK=255.255.255.0
NETWORK=192.168.1.0
BROADCAST=192.168.1.255
GATEWAY=192.168.1.254
GATEWAYDEV=eth0
DNS_SERVERS=192.168.1.2,9.9.9.9
"""


def static(cmdline: str = "", local_cfg: str | None = None) -> StaticNetwork | None:
    layers = [parse_cmdline(cmdline)]
    if local_cfg is not None:
        layers.append(parse_local_cfg(local_cfg, name="local.cfg at /local.cfg"))
    resolved = resolve(layers)
    return static_network(resolved.params, resolved.origin)


def error(cmdline: str = "", local_cfg: str | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as e:
        static(cmdline, local_cfg)
    return e.value


def test_the_manuals_local_cfg() -> None:
    net = static(local_cfg=LOCAL_CFG)
    assert net == StaticNetwork(ipaddress.IPv4Interface("192.168.1.7/24"),
                                ipaddress.IPv4Address("192.168.1.254"),
                                (ipaddress.IPv4Address("192.168.1.2"),
                                 ipaddress.IPv4Address("9.9.9.9")), "eth0")
    assert (net.address, net.prefixlen, net.broadcast) == ("192.168.1.7", 24, "192.168.1.255")


def test_dhcp_when_there_is_no_address() -> None:
    assert static("si.dns-servers=10.0.0.1 si.install-iface=eth1") is None


def test_network_and_broadcast_give_the_netmask() -> None:
    net = static("IPADDR=10.1.2.3 NETWORK=10.1.0.0 BROADCAST=10.1.255.255")
    assert net is not None and net.interface == ipaddress.IPv4Interface("10.1.2.3/16")


@pytest.mark.parametrize(("cmdline", "message"), [
    ("si.ip-address=10.0.0.5",
     "si.ip-address: '10.0.0.5' needs a netmask (kernel command line)"),
    ("IPADDR=10.0.0.5 NETWORK=10.0.0.0",
     "si.ip-address: '10.0.0.5' needs a netmask (kernel command line (as IPADDR))"),
    ("IPADDR=10.0.0.5 NETWORK=10.0.0.0 BROADCAST=10.0.0.200",
     "si.broadcast: '10.0.0.200' and si.network-address 10.0.0.0 do not delimit a network "
     "(kernel command line (as BROADCAST))"),
    ("IPADDR=10.0.0.5 NETMASK=24 NETWORK=10.0.1.0",
     "si.network-address: '10.0.1.0' does not match si.ip-address 10.0.0.5/24, whose network "
     "is 10.0.0.0 (kernel command line (as NETWORK))"),
    ("IPADDR=10.0.0.5 NETMASK=24 BROADCAST=10.0.255.255",
     "si.broadcast: '10.0.255.255' does not match si.ip-address 10.0.0.5/24, whose broadcast "
     "address is 10.0.0.255 (kernel command line (as BROADCAST))"),
    ("IPADDR=10.0.0.5 NETMASK=24 GATEWAY=10.0.1.1",
     "si.gateway: '10.0.1.1' is outside 10.0.0.0/24: the default router must be reachable "
     "from si.ip-address 10.0.0.5/24 (kernel command line (as GATEWAY))"),
    ("IPADDR=10.0.0.5 NETMASK=24 GATEWAY=10.0.0.5",
     "si.gateway: '10.0.0.5' is the address itself: the default router must be reachable "
     "from si.ip-address 10.0.0.5/24 (kernel command line (as GATEWAY))"),
    ("IPADDR=10.0.0.0 NETMASK=24",
     "si.ip-address: '10.0.0.0' is the network address of 10.0.0.0/24 "
     "(kernel command line (as IPADDR))"),
    ("IPADDR=10.0.0.255 NETMASK=24",
     "si.ip-address: '10.0.0.255' is the broadcast address of 10.0.0.0/24 "
     "(kernel command line (as IPADDR))"),
    ("IPADDR=10.0.0.5 NETMASK=24 GATEWAYDEV=eth0",
     "si.gateway-iface: 'eth0' is set without si.gateway (kernel command line (as GATEWAYDEV))"),
    ("IPADDR=10.0.0.5 NETMASK=24 GATEWAY=10.0.0.1 DEVICE=eth0 GATEWAYDEV=eth1",
     "si.gateway-iface: 'eth1' is not the install interface eth0: the agent configures only "
     "that one (kernel command line (as GATEWAYDEV))"),
])
def test_settings_that_do_not_fit(cmdline: str, message: str) -> None:
    assert error(cmdline).message == message


@pytest.mark.parametrize("name, word", [("si.image-server", "IMAGESERVER=imgsrv.lab"),
                                        ("si.monitor-server", "si.monitor-server=mon"),
                                        ("si.log-server", "si.log-server=logs.lab")])
def test_a_server_by_name_needs_dns_servers_when_static(name: str, word: str) -> None:
    e = error(f"IPADDR=10.0.0.5 NETMASK=24 {word}")
    assert e.message.startswith(f"{name}: '{word.split('=')[1]}' is a host name, and a static "
                                "install without si.dns-servers cannot look it up")
    assert "si.dns-servers (DNS_SERVERS in local.cfg)" in (e.hint or "")
    # with a DNS server, by address, or with DHCP: fine
    assert static(f"IPADDR=10.0.0.5 NETMASK=24 {word} si.dns-servers=10.0.0.53") is not None
    assert static(f"IPADDR=10.0.0.5 NETMASK=24 {word.split('=')[0]}=10.0.0.9:8873"
                  if name == "si.image-server" else
                  f"IPADDR=10.0.0.5 NETMASK=24 {word.split('=')[0]}=10.0.0.9") is not None
    assert static(word) is None


def test_a_point_to_point_address_may_use_both_ends() -> None:
    net = static("si.ip-address=10.0.0.0 si.netmask=31 si.gateway=10.0.0.1")
    assert net is not None and net.address == "10.0.0.0"


def test_gateway_iface_matches_the_install_iface_in_any_case() -> None:
    net = static("IPADDR=10.0.0.5 NETMASK=24 GATEWAY=10.0.0.1 DEVICE=eth0 GATEWAYDEV=ETH0")
    assert net is not None and net.gateway_iface == "ETH0"


@pytest.mark.parametrize(("name", "value"), list(zip(STATIC_ONLY, [
    "24", "10.0.0.0", "10.0.0.255", "10.0.0.1", "eth0"], strict=True)))
def test_static_settings_without_an_address_are_refused(name: str, value: str) -> None:
    """With DHCP they would be ignored: say so instead."""
    e = error(local_cfg=f"{name}={value}\n")
    assert e.message.startswith(f"{name}: '")
    assert e.message.endswith("needs a static address (local.cfg at /local.cfg, line 1)")
    assert e.hint == "set si.ip-address (IPADDR) and si.netmask too, or leave it out to use DHCP"


def test_without_origins_the_message_is_plain() -> None:
    params = resolve([parse_cmdline("si.gateway=10.0.0.1")]).params
    with pytest.raises(ConfigError) as e:
        static_network(params)
    assert e.value.message == "si.gateway: '10.0.0.1' needs a static address"


def test_checked_whole_or_partial() -> None:
    """agent.params.checked: the agent's own start-up check, also run where
    media are made; a boot environment's local.cfg alone is partial (the
    command lines that will boot it may bring the netmask or DNS)."""
    from agent.params.checked import checked

    cfg = parse_local_cfg("IPADDR=10.0.0.5\nIMAGESERVER=imgsrv\n", name="local.cfg")
    with pytest.raises(ConfigError, match="needs a netmask"):
        checked([cfg])
    assert str(checked([cfg], partial=True).params.ip_address) == "10.0.0.5"
    with pytest.raises(ConfigError, match="is not a step"):
        checked([parse_local_cfg("si.break=nowhere\n", name="local.cfg")], partial=True)
