"""Whole network configurations written in each style: SystemImager's
net-config.xml (the project's fixture) and a bond + VLAN + IPv6
configuration every style can express, compared file by file with the
expected trees under data/agent/netconfig/<config>/<style>/; what a style
cannot express refused by name; NetworkManager made to manage the NICs the
image's configuration would leave alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure import netconfig
from agent.configure.footprint import best
from agent.configure.netconfig import STYLES, Addressing, NicIdentity
from agent.configure.netmodel import NetConfigError
from agent.configure.netxml import parse_network_config
from tests.unit.agentfakes import DATA

NETDATA = DATA / "netconfig"
SI = Path(__file__).resolve().parent / "data" / "si"
FIXTURES = {"si": SI / "net-config.xml", "bond-vlan": NETDATA / "bond-vlan.xml"}
# The install NIC of each: named by the file, so nothing is added for it.
NICS = {"si": NicIdentity("eth0", "52:54:00:AB:CD:01", {"ID_NET_NAME_PATH": "enp1s0"}),
        "bond-vlan": NicIdentity("eth0", "52:54:00:00:01:03",
                                 {"ID_NET_NAME_PATH": "enp3s0"})}
BY_NAME = {s.name: s for s in STYLES}
CASES = [("si", "systemd-networkd"), ("si", "NetworkManager"), ("si", "network-scripts"),
         *(("bond-vlan", s.name) for s in STYLES)]


def image(root: Path) -> Path:
    """What every style needs of an image: its services' unit files,
    ifenslave for bonds, resolvconf for dns-nameservers."""
    for unit in ("systemd-networkd.service", "NetworkManager.service"):
        f = root / "usr/lib/systemd/system" / unit
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("[Install]\nWantedBy=multi-user.target\n")
    for f in ("usr/sbin/ifenslave", "sbin/resolvconf"):
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).touch()
    return root


def render(case: str, style: str, root: Path | None = None) -> dict[str, str]:
    import tempfile

    root = image(root or Path(tempfile.mkdtemp()))
    cfg = parse_network_config(FIXTURES[case].read_text(), FIXTURES[case].name)
    written = netconfig.configure(root, BY_NAME[style], NICS[case], Addressing("dhcp"), cfg)
    return {f.lstrip("/"): (root / f.lstrip("/")).read_text() for f in written.files
            if not f.startswith("/etc/systemd/system/")}


@pytest.mark.parametrize(("case", "style"), CASES)
def test_written_as_expected(case: str, style: str, tmp_path: Path) -> None:
    got = render(case, style, tmp_path)
    want_dir = NETDATA / case / style
    want = {p.relative_to(want_dir).as_posix(): p.read_text()
            for p in sorted(want_dir.rglob("*")) if p.is_file()}
    assert sorted(got) == sorted(want)
    for rel in want:
        assert got[rel] == want[rel], rel


def test_the_enabled_services(tmp_path: Path) -> None:
    root = image(tmp_path)
    cfg = parse_network_config(FIXTURES["bond-vlan"].read_text(), "bond-vlan.xml")
    w = netconfig.configure(root, BY_NAME["netplan"], NICS["bond-vlan"], Addressing("dhcp"), cfg)
    assert "/etc/systemd/system/multi-user.target.wants/systemd-networkd.service" in w.files


@pytest.mark.parametrize(("style", "problem"), [
    ("netplan", 'net-config.xml:31 <if dev="ib0">: infiniband interfaces'),
    ("ifupdown", 'net-config.xml:8 <if dev="enp1s0">: peerdns="no" with DHCP'),
])
def test_what_a_style_cannot_express_is_refused_before_writing(
        style: str, problem: str, tmp_path: Path) -> None:
    root = image(tmp_path)
    cfg = parse_network_config(FIXTURES["si"].read_text(), "net-config.xml")
    with pytest.raises(NetConfigError) as e:
        netconfig.configure(root, BY_NAME[style], NICS["si"], Addressing("dhcp"), cfg)
    assert e.value.message.startswith(f"the image's network style ({style}) cannot express ")
    assert problem in e.value.message
    assert not (root / "etc").exists()  # nothing written


def one(xml: str) -> netconfig.NetworkConfig:
    return parse_network_config(f"<config>{xml}</config>", "t.xml")


@pytest.mark.parametrize(("style", "xml", "problem"), [
    ("ifupdown", '<if dev="eth0" type="Ethernet" control="legacy"><primary bootproto="none"'
                 ' master="bond0"/></if><if dev="bond0" type="Bond" control="legacy">'
                 '<primary bootproto="dhcp"/><slave name="eth0"/></if>',
     "bonds without ifenslave in the image"),
    ("NetworkManager", '<if dev="eth0" type="Ethernet" control="nm"><primary '
                       'bootproto="static"><ip ipaddr="10.0.0.5/24" broadcast="10.0.0.127"/>'
                       '</primary></if>', "broadcast 10.0.0.127"),
    ("systemd-networkd", '<if dev="eth0" type="Ethernet" control="systemd"><primary '
                         'bootproto="bootp"/></if>', 'bootproto="bootp"'),
    ("systemd-networkd", '<if dev="eth0" type="Ethernet" control="systemd"><primary '
                         'bootproto="none" master="bond0"/></if><if dev="bond0" type="Bond" '
                         'control="systemd"><primary bootproto="dhcp"><options bonding_opts='
                         '"mode=1 arp_validate=filter"/></primary><slave name="eth0"/></if>',
     "bonding option arp_validate=filter"),
    ("netplan", '<if dev="eth0" type="Ethernet" control="systemd"><primary bootproto="none" '
                'master="bond0"/></if><if dev="bond0" type="Bond" control="systemd"><primary '
                'bootproto="dhcp"><options bonding_opts="mode=1 use_carrier=0"/></primary>'
                '<slave name="eth0"/></if>', "bonding option use_carrier=0"),
    ("ifupdown", '<if dev="eth0" type="Ethernet" control="legacy"><primary bootproto="dhcp">'
                 '<ip6 ipv6_init="no"/></primary></if>', 'ipv6_init="no"'),
])
def test_style_refusals(style: str, xml: str, problem: str, tmp_path: Path) -> None:
    root = image(tmp_path)
    (root / "usr/sbin/ifenslave").unlink()
    with pytest.raises(NetConfigError, match="cannot express") as e:
        netconfig.configure(root, BY_NAME[style], NicIdentity("x", "02:00:00:00:00:09"),
                            Addressing("dhcp"), one(xml))
    assert problem in e.value.message


def test_bootp_is_network_scripts_only(tmp_path: Path) -> None:
    root = image(tmp_path)
    cfg = one('<if dev="eth0" type="Ethernet" control="legacy"><primary bootproto="bootp"/>'
              '</if>')
    netconfig.configure(root, BY_NAME["network-scripts"], NicIdentity("x", "02:00:00:00:00:09"),
                        Addressing("dhcp"), cfg)
    assert "BOOTPROTO=bootp\n" in (root / "etc/sysconfig/network-scripts/ifcfg-eth0"
                                   ).read_text()


def test_the_install_nic_joins_a_configuration_that_omits_it(tmp_path: Path) -> None:
    root = image(tmp_path)
    cfg = one('<if dev="enp9s0" type="Ethernet" control="systemd"><primary bootproto="dhcp"/>'
              '</if>')
    w = netconfig.configure(root, BY_NAME["systemd-networkd"], NICS["si"],
                            Addressing("static", "10.0.0.5/24", "10.0.0.1"), cfg)
    assert w.files[:2] == ("/etc/systemd/network/50-sysclone-525400abcd01.network",
                           "/etc/systemd/network/50-sysclone-enp9s0.network")
    assert any("does not mention the install NIC" in note for note in w.warnings)
    assert "Address=10.0.0.5/24\nGateway=10.0.0.1\n" in \
        (root / "etc/systemd/network/50-sysclone-525400abcd01.network").read_text()


def test_control_values_that_the_footprint_overrides_are_said(tmp_path: Path) -> None:
    root = image(tmp_path)
    cfg = one('<if dev="enp1s0" type="Ethernet" control="nm"><primary bootproto="dhcp">'
              '<options hwaddr="52:54:00:ab:cd:01"/></primary></if>')
    w = netconfig.configure(root, BY_NAME["systemd-networkd"], NICS["si"], Addressing("dhcp"),
                            cfg)
    assert w.warnings == ('t.xml: control="nm" is not how this image configures its network: '
                          "written for systemd-networkd, which the image uses",)


# -- NetworkManager: managed devices -----------------------------------------------------------

UBUNTU_GLOBALLY_MANAGED = "[keyfile]\nunmanaged-devices=*,except:type:wifi,except:type:gsm," \
                          "except:type:cdma\n"
DEBIAN_NM_CONF = "[main]\nplugins=ifupdown,keyfile\n\n[ifupdown]\nmanaged=false\n"


def nm_image(root: Path, vendor: str | None = None) -> Path:
    image(root)
    etc = root / "etc/NetworkManager"
    etc.mkdir(parents=True)
    (etc / "NetworkManager.conf").write_text(DEBIAN_NM_CONF)
    if vendor:
        lib = root / "usr/lib/NetworkManager/conf.d"
        lib.mkdir(parents=True)
        (lib / "10-globally-managed-devices.conf").write_text(vendor)
    return root


def test_debians_configuration_manages_the_nic_as_it_is(tmp_path: Path) -> None:
    root = nm_image(tmp_path)
    w = netconfig.configure(root, BY_NAME["NetworkManager"], NICS["si"], Addressing("dhcp"))
    assert not any("conf.d" in f for f in w.files)


def test_a_globally_unmanaged_image_gets_its_nics_managed(tmp_path: Path) -> None:
    root = nm_image(tmp_path, UBUNTU_GLOBALLY_MANAGED)
    w = netconfig.configure(root, BY_NAME["NetworkManager"], NICS["si"], Addressing("dhcp"))
    assert "/etc/NetworkManager/conf.d/99-sysclone-managed.conf" in w.files
    text = (root / "etc/NetworkManager/conf.d/99-sysclone-managed.conf").read_text()
    assert text.splitlines()[-2:] == [
        "[keyfile]", "unmanaged-devices=*;except:type:wifi;except:type:gsm;except:type:cdma;"
                     "except:mac:52:54:00:ab:cd:01"]
    # Written again, the drop-in does not count itself.
    w = netconfig.configure(root, BY_NAME["NetworkManager"], NICS["si"], Addressing("dhcp"))
    assert text == (root / "etc/NetworkManager/conf.d/99-sysclone-managed.conf").read_text()


def test_an_etc_file_of_the_same_name_shadows_the_vendors(tmp_path: Path) -> None:
    root = nm_image(tmp_path, UBUNTU_GLOBALLY_MANAGED)
    (root / "etc/NetworkManager/conf.d").mkdir()
    (root / "etc/NetworkManager/conf.d/10-globally-managed-devices.conf").write_text("")
    w = netconfig.configure(root, BY_NAME["NetworkManager"], NICS["si"], Addressing("dhcp"))
    assert not any("99-sysclone" in f for f in w.files)


@pytest.mark.parametrize(("specs", "unmanaged"), [
    (["*"], True), (["interface-name:enp*"], True), (["mac:52:54:00:AB:CD:01"], True),
    (["52:54:00:ab:cd:01"], True), (["type:ethernet"], True), (["type:wifi"], False),
    (["*", "except:interface-name:enp1s0"], False), (["except:type:wifi"], True),
    (["interface-name:eno*"], False), ([], False),
])
def test_device_specs(specs: list[str], unmanaged: bool) -> None:
    from agent.configure.net_nm import unmanaged as is_unmanaged
    from agent.configure.netmodel import Iface

    nic = Iface("enp1s0", mac="52:54:00:ab:cd:01")
    assert is_unmanaged(specs, nic) is unmanaged


def test_the_server_checks_a_configuration_against_the_image(tmp_path: Path) -> None:
    root = tmp_path
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/netplan").touch()
    cfg = parse_network_config(FIXTURES["si"].read_text(), "net-config.xml")
    assert best(STYLES, root) is BY_NAME["netplan"]
    with pytest.raises(NetConfigError, match="infiniband interfaces"):
        netconfig.check_image(root, cfg)
    ok = parse_network_config(FIXTURES["bond-vlan"].read_text(), "bond-vlan.xml")
    style, warnings = netconfig.check_image(root, ok)
    assert style == "netplan" and warnings == []
    with pytest.raises(NetConfigError, match="the image has no network style"):
        netconfig.check_image(tmp_path / "empty", ok)


def test_a_nic_ifupdown_configures_too_is_said(tmp_path: Path) -> None:
    root = nm_image(tmp_path)
    (root / "usr/lib/udev").mkdir(parents=True)  # so the NIC is named as udev names it
    (root / "etc/network").mkdir(parents=True)
    (root / "etc/network/interfaces").write_text(
        "auto lo\niface lo inet loopback\nallow-hotplug enp1s0\niface enp1s0 inet dhcp\n")
    w = netconfig.configure(root, BY_NAME["NetworkManager"], NICS["si"], Addressing("dhcp"))
    assert w.warnings == ("the install NIC (52:54:00:AB:CD:01): the image's "
                          "/etc/network/interfaces configures enp1s0 too: NetworkManager "
                          "leaves it to ifupdown ([ifupdown] managed=false)",)
