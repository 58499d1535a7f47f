"""SystemImager's network configuration (net-config.xml) read into the
network model: the project's fixture in full, the compatibility corpus's
example where it exists, and malformed files each refused with the line
and the problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure.netmodel import (
    Addressing,
    Dns,
    Ipv4,
    Ipv6,
    NetConfigError,
    NicIdentity,
    check_set,
    parse_bonding_opts,
    with_install_nic,
)
from agent.configure.netxml import parse_network_config

SI = Path(__file__).resolve().parent / "data" / "si"


def parse(body: str) -> list:
    return list(parse_network_config(f"<config>\n{body}\n</config>\n", "t.xml").ifaces)


def refused(body: str) -> str:
    with pytest.raises(NetConfigError) as e:
        parse(body)
    return e.value.message


def test_the_projects_fixture_in_full() -> None:
    cfg = parse_network_config((SI / "net-config.xml").read_text(), "net-config.xml")
    by = {i.name: i for i in cfg.ifaces}
    assert list(by) == ["enp1s0", "enp2s0", "enp3s0", "ib0", "ib1", "ib2", "bond0"]
    e1 = by["enp1s0"]
    assert (e1.kind, e1.mac, e1.connection, e1.onboot) == \
        ("ethernet", "52:54:00:ab:cd:01", "enp1s0", True)
    # DHCP, plus the two aliases' addresses on the same interface.
    assert e1.ipv4 == Ipv4("dhcp", ("10.1.5.10/24", "10.1.6.10/24"))
    assert e1.dns == Dns(("10.1.0.53", "10.1.0.54"), ("lab.example", "example"),
                         from_dhcp=False)
    assert by["enp2s0"].connection == "storage"
    assert by["enp2s0"].uuid == "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert by["enp2s0"].ipv4.method == "none"  # static, but IPv6 only
    assert by["enp2s0"].ipv6 == Ipv6("static", ("2001:db8:10::5/64",), default_route=False)
    assert by["enp3s0"].onboot is False
    assert by["enp3s0"].ipv6 == Ipv6("static", ("2001:db8:20::5/64",), required=True)
    ib0 = by["ib0"]
    assert (ib0.kind, ib0.userctl, ib0.ipv4.addresses) == ("infiniband", False,
                                                           ("172.16.0.5/16",))
    assert ib0.ipv4.broadcast is None  # 172.16.255.255 is the network's own
    assert ib0.ipv6 == Ipv6("auto")
    assert (by["ib1"].master, by["ib2"].master) == ("bond0", "bond0")
    assert by["ib1"].ipv4.method == "none"
    bond = by["bond0"]
    assert bond.kind == "bond"
    assert bond.bond_options == (("mode", "active-backup"), ("miimon", "100"),
                                 ("primary_reselect", "always"))
    # Alias gateways were never default routes: said, not silently dropped.
    assert [w.split(": ", 1)[1] for w in cfg.warnings] == [
        "alias 1: gateway 10.1.5.1 is not used (an interface has one default route; "
        "initscripts ignored an alias's GATEWAY too)",
        "alias 2: gateway 10.1.6.1 is not used (an interface has one default route; "
        "initscripts ignored an alias's GATEWAY too)"]
    assert cfg.controls == (("enp1s0", "legacy"), ("enp2s0", "NetworkManager"),
                            ("enp3s0", "NetworkManager"), ("ib0", "NetworkManager"),
                            ("ib1", "NetworkManager"), ("ib2", "NetworkManager"),
                            ("bond0", "NetworkManager"))
    check_set(list(cfg.ifaces))


def test_the_corpus_example(compat: Path) -> None:
    cfg = parse_network_config((compat / "net-config.xml").read_text(), "net-config.xml")
    by = {i.name: i for i in cfg.ifaces}
    assert by["eno1"].ipv4 == Ipv4("dhcp", ("192.168.0.1/24", "192.168.0.2/24"))
    # Numeric bonding values become the driver's names.
    assert dict(by["bond0"].bond_options)["xmit_hash_policy"] == "layer2"
    assert dict(by["bond0"].bond_options)["mode"] == "active-backup"
    assert by["eno2"].ipv6 is not None and by["eno2"].ipv6.addresses == \
        ("fe80::204:61ff:fe9d:f156/64",)


def test_bonds_vlans_and_static_addresses() -> None:
    [e0, bond, vlan, e1] = parse('''
      <if dev="eth0" type="Ethernet" control="systemd">
        <primary master="bond0" bootproto="none"/>
      </if>
      <if dev="bond0" type="Bond" control="systemd">
        <primary bootproto="none">
          <options bonding_opts="mode=4 miimon=100 lacp_rate=1 xmit_hash_policy=layer3+4"/>
        </primary>
        <slave name="eth0"/>
      </if>
      <if dev="bond0.100" type="VLAN" control="systemd">
        <primary bootproto="static">
          <ip ipaddr="192.0.2.10" netmask="255.255.255.0" gateway="192.0.2.1" mtu="9000"
              ipv4_route_metric="50" broadcast="192.0.2.127" def_route="yes"/>
          <dns servers="192.0.2.53,2001:db8::53" search="a.example,b.example"/>
        </primary>
      </if>
      <if dev="eth1" type="Ethernet" control="systemd">
        <primary bootproto="static"><ip ipaddr="198.51.100.7" prefix="25"/></primary>
      </if>''')
    assert e0.master == "bond0"
    assert bond.bond_options == (("mode", "802.3ad"), ("miimon", "100"),
                                 ("lacp_rate", "fast"), ("xmit_hash_policy", "layer3+4"))
    assert bond.ipv4.method == "none"
    assert (vlan.kind, vlan.vlan_id, vlan.vlan_parent, vlan.mtu) == ("vlan", 100, "bond0", 9000)
    assert vlan.ipv4 == Ipv4("static", ("192.0.2.10/24",), "192.0.2.1", True, "192.0.2.127", 50)
    assert vlan.dns.servers == ("192.0.2.53", "2001:db8::53")
    assert e1.ipv4.addresses == ("198.51.100.7/25",)
    check_set([e0, bond, vlan, e1])


@pytest.mark.parametrize(("body", "problem"), [
    ('<if dev="eth0" type="Ethernet" control="legacy"><primary/></if>',
     "line 2: <primary>: bootproto= is required"),
    ('<if dev="eth0" type="Wi-Fi" control="nm"><primary bootproto="dhcp"/></if>',
     'type="Wi-Fi" is not supported (nor was it by SystemImager)'),
    ('<if dev="eth0" type="Ethernet" control="ifupdown"><primary bootproto="dhcp"/></if>',
     'control="ifupdown" is not one of legacy, nm, NetworkManager, systemd'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp" speed="1G"/></if>',
     "unknown attribute 'speed'"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp"/>'
     '<primary bootproto="dhcp"/></if>', "needs exactly one <primary>"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp"><route/></primary>'
     '</if>', "<route>: not allowed in <primary>"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="static">'
     '<ip ipaddr="10.0.0.5"/></primary></if>', 'ipaddr="10.0.0.5" has no prefix length'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="static">'
     '<ip ipaddr="10.0.0.5/24" netmask="255.255.0.0"/></primary></if>',
     "the prefix length is given differently by ipaddr= and netmask="),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="static">'
     '<ip ipaddr="10.0.0.5/24" gateway="10.9.0.1"/></primary></if>',
     "gateway 10.9.0.1 is outside 10.0.0.0/24"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
     '<ip ipaddr="10.0.0.5/24"/></primary></if>', 'ipaddr= given but bootproto="dhcp"'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
     '<options hwaddr="52:54:00:zz:00:01"/></primary></if>', "is not a MAC address"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
     '<options bonding_opts="mode=1"/></primary></if>',
     'bonding_opts= on an interface that is not type="Bond"'),
    ('<if dev="bond0" type="Bond" control="nm"><primary bootproto="dhcp">'
     '<options bonding_opts="mode=1 turbo=1"/></primary></if>',
     "'turbo' is not an option of the bonding driver"),
    ('<if dev="bond0" type="Bond" control="nm"><primary bootproto="dhcp">'
     '<options bonding_opts="mode=9"/></primary></if>', "mode=9 is out of range (0-6)"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary master="bond0" bootproto="dhcp"/>'
     '</if>', 'a slave of bond0 has no address of its own: use bootproto="none"'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="none"/></if>'
     '<if dev="bond0" type="Bond" control="nm"><primary bootproto="dhcp"/>'
     '<slave name="eth0"/></if>', 'eth0 does not name bond0 as its master'),
    ('<if dev="bond0" type="Bond" control="nm"><primary bootproto="dhcp"/>'
     '<slave name="eth9"/></if>', "no interface or connection named 'eth9'"),
    ('<if dev="vlan100" type="VLAN" control="nm"><primary bootproto="dhcp"/></if>',
     'a VLAN is named PARENT.ID (eth0.100), not "vlan100"'),
    ('<if dev="eth0.5000" type="VLAN" control="nm"><primary bootproto="dhcp"/></if>',
     'a VLAN is named PARENT.ID'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp"/>'
     '<alias id="1" onparent="no"><ip ipaddr="10.0.0.9/24"/></alias></if>',
     'onparent="no" (an alias brought up on its own) is not supported'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp"/>'
     '<alias id="1"><ip ipaddr="10.0.0.9/24" mtu="9000"/></alias></if>',
     "mtu= on an alias: it belongs on the primary's <ip>"),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
     '<ip6 ipv6_init="no" ipv6_addr="2001:db8::1"/></primary></if>',
     'ipv6_init="no" with an IPv6 address or autoconfiguration'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
     '<dns servers="8.8.8.8,dns.example"/></primary></if>',
     "DNS server 'dns.example' is not an IP address"),
    ('<if dev="eth/0" type="Ethernet" control="nm"><primary bootproto="dhcp"/></if>',
     'dev="eth/0" is not an interface name'),
    ('<if dev="eth0" type="Ethernet" control="nm"><primary bootproto="dhcp" onboot="true"/>'
     '</if>', 'onboot="true" must be "yes" or "no"'),
])
def test_malformed_configurations(body: str, problem: str) -> None:
    message = refused(body)
    assert message.startswith("t.xml: ")
    assert problem in message


def test_every_problem_at_once() -> None:
    message = refused('''<if dev="eth0" type="Ethernet" control="nm"><primary/></if>
<if dev="eth1" type="Team" control="nm"><primary bootproto="dhcp"/></if>''')
    assert message.startswith("t.xml: 2 problems: line 2: <primary>: bootproto= is required; "
                              "line 3: <if>: type=\"Team\"")


@pytest.mark.parametrize("text", [
    '<!DOCTYPE config [<!ENTITY x "y">]><config/>',
    '<!DOCTYPE config SYSTEM "file:///etc/passwd"><config/>',
])
def test_doctype_and_entities_are_refused(text: str) -> None:
    with pytest.raises(NetConfigError, match="DOCTYPE or entity declaration"):
        parse_network_config(text, "t.xml")


def test_not_xml() -> None:
    with pytest.raises(NetConfigError, match=r"^t\.xml:1: not well-formed XML"):
        parse_network_config("<config><if>", "t.xml")


def test_bonding_option_names() -> None:
    assert parse_bonding_opts("mode=balance-alb arp_ip_target=10.0.0.1,10.0.0.2", "x") == (
        ("mode", "balance-alb"), ("arp_ip_target", "10.0.0.1,10.0.0.2"))
    with pytest.raises(NetConfigError, match="is not name=value"):
        parse_bonding_opts("mode=", "x")


# -- the install NIC beside a configuration ---------------------------------------------------

NIC = NicIdentity("eth0", "52:54:00:AB:CD:01")


def test_a_configuration_that_names_the_install_nic_by_mac_replaces_it() -> None:
    cfg = parse_network_config((SI / "net-config.xml").read_text(), "net-config.xml")
    ifaces, note = with_install_nic(list(cfg.ifaces), NIC, "enp1s0", Addressing("dhcp"))
    assert note is None and ifaces == list(cfg.ifaces)


def test_the_install_nic_is_added_when_not_mentioned() -> None:
    [e9] = parse('<if dev="enp9s0" type="Ethernet" control="nm">'
                 '<primary bootproto="dhcp"/></if>')
    ifaces, note = with_install_nic([e9], NIC, "enp1s0",
                                    Addressing("static", "10.0.0.5/24", "10.0.0.1"))
    assert [i.name for i in ifaces] == ["enp1s0", "enp9s0"]
    assert ifaces[0].is_install_nic and ifaces[0].mac == "52:54:00:ab:cd:01"
    assert ifaces[0].ipv4 == Ipv4("static", ("10.0.0.5/24",), "10.0.0.1")
    assert note == ("the network configuration does not mention the install NIC enp1s0 "
                    "(52:54:00:AB:CD:01): it is configured as installed (static)")


def test_a_configuration_for_other_hardware_under_the_nics_name() -> None:
    [e1] = parse('<if dev="enp1s0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
                 '<options hwaddr="52:54:00:00:00:99"/></primary></if>')
    ifaces, note = with_install_nic([e1], NIC, "enp1s0", Addressing("dhcp"))
    assert ifaces == [e1]
    assert note is not None and "binds enp1s0 to another MAC address" in note


def test_a_vlan_on_an_interface_nobody_brings_up() -> None:
    ifaces = parse('<if dev="eth3.7" type="VLAN" control="nm"><primary bootproto="dhcp"/></if>')
    with pytest.raises(NetConfigError, match=r"VLAN eth3\.7 is on eth3, which this configuration "
                                             "does not bring up"):
        check_set(ifaces)
    check_set(ifaces, vlan_parents=False)  # the server does not know the install NIC yet
