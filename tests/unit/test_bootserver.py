"""imageserver.bootserver: the dnsmasq configuration and the ISC dhcpd
fragment for a PXE tree, and the checks of `sysclone bootserver`'s
options.  (dnsmasq and dhcpd read them for real in
tests/integration/test_bootserver_netns.py.)"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from imageserver import bootserver
from imageserver.bootserver import StaticLease, config_from_options, render_dhcpd, render_dnsmasq
from mkmedia.pxe import TreeInfo, build_tree
from sysclone.cli import main
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.unit.mediafakes import fake_bootfiles

IP_J = json.dumps([{"ifname": "lab0", "addr_info": [
    {"family": "inet", "local": "192.168.77.1", "prefixlen": 24}]}])


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> StateRoot:
    fake_bootfiles(tmp_path / "host", monkeypatch)
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    be = tmp_path / "be"
    be.mkdir()
    (be / "kernel").write_bytes(b"k")
    (be / "initrd.img").write_bytes(b"i")
    build_tree(s.pxe, be / "kernel", be / "initrd.img", TreeInfo("IMAGENAME=web"))
    return s


def opts(**kw) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    bootserver.add_arguments(ap)
    a = ap.parse_args(["--interface", "lab0", "--dnsmasq-user", "root"])
    for k, v in kw.items():
        setattr(a, k, v)
    return a


def lines(text: str) -> list[str]:
    return [x.split("  #")[0] for x in text.splitlines()]


def test_full_dhcp(state, fake_commands):
    fake_commands.add(["ip", "-j", "-4", "addr", "show", "dev", "lab0"], IP_J)
    state.logs.mkdir(parents=True)
    (state.logs / "node1.jsonl").write_text(
        json.dumps({"kind": "hello", "hostname": "node1", "mac": "52:54:00:00:00:01",
                    "ip": "192.168.77.150"}) + "\n")
    (state.logs / "far.jsonl").write_text(
        json.dumps({"kind": "hello", "hostname": "far", "mac": "52:54:00:00:00:02",
                    "ip": "10.9.9.9"}) + "\n")
    cfg = config_from_options(state, opts(host=["52:54:00:00:00:03,192.168.77.20,db1"],
                                          router="192.168.77.254", dns=["192.168.77.53"]))
    text = lines(render_dnsmasq(cfg))
    assert "port=0" in text and "interface=lab0" in text and "bind-interfaces" in text
    assert "user=root" in text
    assert f"tftp-root={state.pxe}" in text and "enable-tftp" in text
    assert "dhcp-range=192.168.77.100,192.168.77.199,255.255.255.0,12h" in text
    assert 'dhcp-option=140,"192.168.77.1"' in text
    assert "dhcp-option=option:router,192.168.77.254" in text
    # static leases: seen clients (the one from another network by name only) and --host
    assert "dhcp-host=52:54:00:00:00:01,192.168.77.150,node1" in text
    assert "dhcp-host=52:54:00:00:00:02,far" in text
    assert "dhcp-host=52:54:00:00:00:03,192.168.77.20,db1" in text
    # boot files by firmware, the tags exclusive
    assert "dhcp-match=set:efi64,option:client-arch,7" in text
    assert "dhcp-boot=tag:!ipxe,tag:!efihttp,tag:efi64,bootx64.efi" in text
    assert "dhcp-boot=tag:!ipxe,tag:!efihttp,tag:!efi64,pxelinux.0" in text
    assert "dhcp-boot=tag:ipxe,http://192.168.77.1:8181/boot/boot.ipxe" in text
    assert "dhcp-option-force=tag:efihttp,60,HTTPClient" in text
    assert "dhcp-boot=tag:!ipxe,tag:efihttp,http://192.168.77.1:8181/boot/ipxe.efi" in text


def test_ipxe_loaders_and_a_tree_the_api_does_not_serve(state, tmp_path):
    other = tmp_path / "other"
    build_tree(other, state.pxe / "kernel", state.pxe / "initrd.img",
               TreeInfo("IMAGENAME=web", ("ipxe",)))
    cfg = config_from_options(state, opts(tree=str(other), address="10.1.0.1/16",
                                          bios_loader="ipxe", efi_loader="ipxe",
                                          range="10.1.1.1,10.1.1.9"))
    text = lines(render_dnsmasq(cfg))
    assert "dhcp-boot=tag:ipxe,boot.ipxe" in text  # over TFTP: no HTTP for this tree
    assert "dhcp-boot=tag:!ipxe,tag:!efihttp,tag:efi64,ipxe.efi" in text
    assert "dhcp-boot=tag:!ipxe,tag:!efihttp,tag:!efi64,undionly.kpxe" in text
    assert not any("efihttp,60" in x for x in text)
    assert any("no UEFI HTTP boot" in w for w in cfg.warnings)


def test_a_tree_without_ipxe_boots_ipxe_clients_by_their_firmware(state, tmp_path):
    """QEMU's NICs (and many others) PXE-boot with iPXE's ROM: from a tree
    made with --loaders pxelinux,grub they must get pxelinux.0 or
    bootx64.efi, not a boot.ipxe the tree does not have."""
    build_tree(state.pxe, tmp_path / "be/kernel", tmp_path / "be/initrd.img",
               TreeInfo("IMAGENAME=web", ("pxelinux", "grub")))
    cfg = config_from_options(state, opts(address="192.168.77.1/24"))
    text = lines(render_dnsmasq(cfg))
    boots = [x for x in text if x.startswith("dhcp-boot=")]
    assert boots == ["dhcp-boot=tag:!efihttp,tag:efi64,bootx64.efi",
                     "dhcp-boot=tag:!efihttp,tag:!efi64,pxelinux.0"], boots
    assert not any("ipxe" in x.split("=", 1)[1] for x in text if x.startswith("dhcp-boot"))
    dhcpd = render_dhcpd(cfg)
    assert "iPXE" not in dhcpd and "boot.ipxe" not in dhcpd
    assert "    if option arch = 00:07 or option arch = 00:09 {" in dhcpd
    assert dhcpd.count("{") == dhcpd.count("}")


def test_proxy_dhcp(state):
    cfg = config_from_options(state, opts(address="192.168.1.5/24", mode="proxy"))
    text = lines(render_dnsmasq(cfg))
    assert "dhcp-range=192.168.1.0,proxy,255.255.255.0" in text
    assert 'pxe-service=x86PC,"sysclone (BIOS)",pxelinux' in text
    assert 'pxe-service=x86-64_EFI,"sysclone (UEFI)",bootx64.efi' in text
    assert not any(x.startswith(("dhcp-host", "dhcp-option=140")) for x in text)
    # The site's server gives no option 140: the tree must name the image server.
    assert any("IMAGESERVER=" in w for w in cfg.warnings)


def test_dhcpd_fragment(state):
    cfg = config_from_options(state, opts(address="192.168.77.1/24",
                                          host=["52:54:00:00:00:03,192.168.77.20,db1"]))
    text = render_dhcpd(cfg)
    assert "option option-140 code 140 = text;" in text
    assert "subnet 192.168.77.0 netmask 255.255.255.0 {" in text
    assert "    range 192.168.77.100 192.168.77.199;" in text
    assert '    option option-140 "192.168.77.1";' in text
    assert "elsif option arch = 00:07 or option arch = 00:09 {" in text
    assert '        filename "bootx64.efi";' in text and '        filename "pxelinux.0";' in text
    assert ("    host db1 { hardware ethernet 52:54:00:00:00:03; fixed-address 192.168.77.20; "
            'option host-name "db1"; }') in text
    assert text.count("{") == text.count("}")


@pytest.mark.parametrize(("kw", "message"), [
    ({"interface": None}, "--interface IFACE is required"),
    ({"interface": "eth0; rm"}, "is not an interface name"),
    ({"address": "192.168.77.1"}, "give the prefix too"),
    ({"address": "nonsense/24"}, "is not ADDR/PREFIX"),
    ({"address": "192.168.77.1/24", "range": "192.168.78.1,192.168.78.9"}, "both ends in"),
    ({"address": "192.168.77.1/24", "range": "192.168.77.5"}, "give both ends, START,END"),
    ({"address": "192.168.77.1/24", "range": ",192.168.77.9"}, "give both ends, START,END"),
    ({"address": "192.168.77.150/24"}, "holds this server's own address"),
    ({"address": "192.168.77.1/28"}, "too small for the default range"),
    ({"address": "192.168.77.1/24", "host": ["nonsense"]}, "is not valid"),
    ({"address": "192.168.77.1/24", "host": ["52:54:00:00:00:01,a b"]}, "neither an IPv4"),
    ({"address": "192.168.77.1/24", "mode": "proxy", "host": ["52:54:00:00:00:01"]},
     "--host is for full mode"),
    ({"address": "192.168.77.1/24", "mode": "proxy", "efi_loader": "ipxe"},
     "proxy mode boots pxelinux and GRUB only"),
    ({"address": "192.168.77.1/24", "router": "gw"}, "--router 'gw' is not an IPv4"),
    ({"address": "192.168.77.1/24", "dnsmasq_user": "root; x"}, "is not a user name"),
    ({"address": "192.168.77.1/24", "http_port": 0}, "is not a port number"),
])
def test_bad_options(state, kw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_options(state, opts(**kw))


def test_a_tree_dnsmasq_cannot_read_needs_a_user(state):
    # pytest's tmp_path is private to root: dnsmasq's own user could not read it.
    with pytest.raises(ConfigError, match="cannot be read by other users"):
        config_from_options(state, opts(address="192.168.77.1/24", dnsmasq_user=None))


def test_no_tree(tmp_path):
    s = StateRoot(tmp_path / "r", tmp_path / "c")
    with pytest.raises(ConfigError, match="no PXE tree in"):
        config_from_options(s, opts(address="192.168.77.1/24"))


def test_interface_without_an_address(state, fake_commands):
    fake_commands.add(["ip", "-j", "-4", "addr"], "[]")
    with pytest.raises(ConfigError, match="lab0 has no IPv4 address"):
        config_from_options(state, opts())


def test_static_lease_parsing():
    assert StaticLease.parse("52:54:00:AA:00:01") == StaticLease("52:54:00:aa:00:01")
    assert StaticLease.parse("52:54:00:aa:00:01,node7") == StaticLease("52:54:00:aa:00:01",
                                                                      None, "node7")
    with pytest.raises(ConfigError, match="expected MAC"):
        StaticLease.parse("a,b,c,d")


def test_bootserver_command_writes_both(state, tmp_path, capsys):
    conf, dhcpd = tmp_path / "d.conf", tmp_path / "dhcpd.inc"
    assert main(["--root", str(state.root), "bootserver", "--interface", "lab0", "--address",
                 "192.168.77.1/24", "--dnsmasq-user", "root", "--output", str(conf),
                 "--dhcpd", str(dhcpd)]) == 0
    assert "interface=lab0" in conf.read_text()
    assert "subnet 192.168.77.0" in dhcpd.read_text()
    err = capsys.readouterr().err
    assert f"dnsmasq configuration in {conf} (full DHCP on lab0" in err


@pytest.mark.parametrize("option", ["--output", "--dhcpd"])
def test_bootserver_files_are_checked_before_anything_is_written(state, tmp_path, capsys,
                                                                  option):
    """Neither file may land in the image store (clients would receive it)
    or in place of a directory; nothing is written when one is refused."""
    conf, dhcpd = tmp_path / "d.conf", tmp_path / "dhcpd.inc"
    paths = {"--output": conf, "--dhcpd": dhcpd}
    base = ["--root", str(state.root), "bootserver", "--interface", "lab0", "--address",
            "192.168.77.1/24", "--dnsmasq-user", "root"]
    for bad, says in ((state.images / "web.conf", "is inside the image store"),
                      (tmp_path, "is a directory")):
        argv = [*base, *(x for o, p in {**paths, option: bad}.items() for x in (o, str(p)))]
        assert main(argv) == 1
        err = capsys.readouterr().err.splitlines()
        assert len(err) == 1 and option in err[0] and says in err[0], err
        assert not conf.exists() and not dhcpd.exists()
        assert not (state.images / "web.conf").exists()


# -- proxy mode hands out nothing but boot files --------------------------------------------------

@pytest.mark.parametrize(("kw", "option"), [
    ({"router": "192.168.1.1"}, "--router"),
    ({"dns": ["192.168.1.53"]}, "--dns"),
    ({"domain": "lab.example"}, "--domain"),
    ({"range": "192.168.1.100,192.168.1.199"}, "--range"),
])
def test_proxy_mode_refuses_what_the_site_server_hands_out(state, kw, option):
    """The site's DHCP server gives router, DNS and domain: an option for
    them in proxy mode would be dropped without a word."""
    with pytest.raises(ConfigError, match=f"^{option} is for full mode: in proxy mode the "
                                          "site's DHCP server hands out"):
        config_from_options(state, opts(address="192.168.1.5/24", mode="proxy", **kw))


def test_proxy_mode_refuses_an_image_server_it_cannot_send(state):
    """dnsmasq's proxy replies carry no option 140: the image server must
    come from the tree's command line, and the error says so."""
    with pytest.raises(ConfigError, match="--image-server is for full mode") as e:
        config_from_options(state, opts(address="192.168.1.5/24", mode="proxy",
                                        image_server="10.0.0.3"))
    assert "IMAGESERVER=10.0.0.3 on the tree's command line" in str(e.value.hint)


def test_proxy_mode_writes_no_dhcpd_subnet(state):
    """An ISC dhcpd subnet hands out addresses: beside the site's DHCP
    server it would clash with it."""
    with pytest.raises(ConfigError, match="--dhcpd is for full mode"):
        config_from_options(state, opts(address="192.168.1.5/24", mode="proxy", dhcpd="x"))
    cfg = config_from_options(state, opts(address="192.168.1.5/24", mode="proxy"))
    assert cfg.image_server is None
    with pytest.raises(ConfigError, match="--dhcpd is for full mode"):
        render_dhcpd(cfg)


def test_proxy_bootserver_command_says_only_what_it_wrote(state, tmp_path, capsys):
    conf, dhcpd = tmp_path / "d.conf", tmp_path / "dhcpd.inc"
    argv = ["--root", str(state.root), "bootserver", "--interface", "lab0", "--address",
            "192.168.1.5/24", "--mode", "proxy", "--dnsmasq-user", "root", "--output", str(conf)]
    assert main([*argv, "--dhcpd", str(dhcpd)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "--dhcpd is for full mode" in err[0], err
    assert not conf.exists() and not dhcpd.exists()
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert f"dnsmasq configuration in {conf} (proxy DHCP on lab0: boot files only" in err
    assert "option 140" not in err.replace("no option 140 from", "")
    assert "dhcp-range=192.168.1.0,proxy,255.255.255.0" in conf.read_text()


# -- addresses outside the served network ---------------------------------------------------------

def test_a_host_address_outside_the_network_is_refused(state):
    """dnsmasq cannot hand it out: dropping it silently left the machine
    on a dynamic address."""
    with pytest.raises(ConfigError, match=r"^--host 52:54:00:aa:bb:cc,10\.9\.9\.9,node5: "
                                          r"10\.9\.9\.9 is outside the served network "
                                          r"192\.168\.77\.0/24 "):
        config_from_options(state, opts(address="192.168.77.1/24",
                                        host=["52:54:00:aa:bb:cc,10.9.9.9,node5"]))
    # a host by name only is still a lease
    cfg = config_from_options(state, opts(address="192.168.77.1/24",
                                          host=["52:54:00:aa:bb:cc,node5"]))
    assert cfg.hosts == (StaticLease("52:54:00:aa:bb:cc", None, "node5"),)


def test_two_hosts_for_one_mac_are_refused(state):
    with pytest.raises(ConfigError, match=r"^--host 52:54:00:aa:bb:cc,node5 and --host "
                                          r"52:54:00:AA:BB:CC,node6 name the same MAC "
                                          r"52:54:00:aa:bb:cc"):
        config_from_options(state, opts(address="192.168.77.1/24",
                                        host=["52:54:00:aa:bb:cc,node5",
                                              "52:54:00:AA:BB:CC,node6"]))
    # the same entry twice is one lease
    cfg = config_from_options(state, opts(address="192.168.77.1/24",
                                          host=["52:54:00:aa:bb:cc,node5"] * 2))
    assert cfg.hosts == (StaticLease("52:54:00:aa:bb:cc", None, "node5"),)


def test_a_router_outside_the_network_is_refused(state):
    with pytest.raises(ConfigError, match=r"^--router 10\.0\.0\.1 is outside the served "
                                          r"network 192\.168\.77\.0/24 "):
        config_from_options(state, opts(address="192.168.77.1/24", router="10.0.0.1"))
