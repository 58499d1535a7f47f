"""The install network: NICs from a fake sysfs, choosing one, turning a DHCP
lease into a NetConfig (with a fake lease and with an ACK decoded by
pyroute2 itself), resolv.conf, static addressing."""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path
from typing import Any, ClassVar

import pytest

from agent import network
from agent.network import (
    NetConfig,
    NetworkError,
    Nic,
    _from_lease,
    _options_by_number,
    choose_nic,
    has_carrier,
    list_nics,
    write_resolv_conf,
)
from agent.params import dhcp_layer, resolve
from tests.unit.agentfakes import FakeSysfs
from tests.unit.netfakes import FakeNetlink

ETH0 = Nic("eth0", "02:fc:00:00:00:01", "virtio_net", "0000:00:03.0")


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """The captured VM (eth0 on virtio, ifb0/ifb1, lo) plus an onboard Intel
    NIC without link, a USB NIC, an InfiniBand port and a bridge."""
    fs = FakeSysfs.captured(tmp_path / "sys")
    e1000e = fs.pci("0000:00:19.0", vendor="0x8086", device="0x15b8", subsystem_vendor="0x1028",
                    subsystem_device="0x07a1", pci_class="0x020000",
                    modalias="pci:v00008086d000015B8sv00001028sd000007A1bc02sc00i00",
                    driver="e1000e")
    fs.net("eno1", address="D8:9E:F3:12:AB:CD", device=e1000e, carrier="0")
    usb = fs.usb_interface("0000:00:14.0", "2-1", "2-1:1.0", driver="r8152")
    fs.net("enx00e04c680123", address="00:e0:4c:68:01:23", device=usb, carrier="0")
    mlx = fs.pci("0000:3b:00.0", vendor="0x15b3", device="0x1017", subsystem_vendor="0x15b3",
                 subsystem_device="0x0020", pci_class="0x020700",
                 modalias="pci:v000015B3d00001017sv000015B3sd00000020bc02sc07i00",
                 driver="mlx5_core")
    fs.net("ib0", address="00:00:10:49:fe:80:00:00:00:00:00:00:ec:0d:9a:03:00:1b:2c:3d",
           device=mlx, type="32")
    fs.net("br0", address="02:fc:00:00:00:01")  # virtual: no device
    return tmp_path / "sys"


def test_list_nics_keeps_only_device_backed_ethernet_and_infiniband(sysfs: Path) -> None:
    nics = list_nics(sysfs)
    assert [n.name for n in nics] == ["eno1", "enx00e04c680123", "eth0", "ib0"]
    by_name = {n.name: n for n in nics}
    assert by_name["eth0"] == ETH0  # virtio: the PCI slot is the virtio device's parent
    assert by_name["eno1"] == Nic("eno1", "d8:9e:f3:12:ab:cd", "e1000e", "0000:00:19.0")
    assert by_name["ib0"].driver == "mlx5_core"
    assert by_name["ib0"].pci_slot == "0000:3b:00.0"


def test_usb_nic_has_no_pci_slot(sysfs: Path) -> None:
    usb = next(n for n in list_nics(sysfs) if n.name == "enx00e04c680123")
    assert usb.driver == "r8152"
    assert usb.pci_slot is None  # its device is USB interface 2-1:1.0, not a PCI function


def test_no_class_net_means_no_nics(tmp_path: Path) -> None:
    assert list_nics(tmp_path) == []


def test_has_carrier_reads_sysfs(sysfs: Path) -> None:
    nics = {n.name: n for n in list_nics(sysfs)}
    assert has_carrier(nics["eth0"], sysfs) is True
    assert has_carrier(nics["eno1"], sysfs) is False
    assert has_carrier(nics["ib0"], sysfs) is False  # no carrier file: not up


def test_bootif_form() -> None:
    assert ETH0.bootif == "01-02-fc-00-00-00-01"


# -- choose_nic ------------------------------------------------------------------------------

@pytest.fixture
def nics(sysfs: Path) -> list[Nic]:
    return list_nics(sysfs)


def _carrier(sysfs: Path) -> Any:
    return functools.partial(has_carrier, sysfs=sysfs)


def test_choose_by_name_or_mac(nics: list[Nic], sysfs: Path) -> None:
    never = _carrier(sysfs)
    assert choose_nic(nics, "eno1", None, never).name == "eno1"
    assert choose_nic(nics, "d8:9e:f3:12:ab:cd", None, never).name == "eno1"
    assert choose_nic(nics, "D8:9E:F3:12:AB:CD", None, never).name == "eno1"
    # The name asked for wins over BOOTIF.
    assert choose_nic(nics, "eno1", "01-02-fc-00-00-00-01", never).name == "eno1"


def test_choose_unknown_interface_lists_the_ones_found(nics: list[Nic], sysfs: Path) -> None:
    with pytest.raises(NetworkError) as e:
        choose_nic(nics, "eth7", None, _carrier(sysfs))
    assert e.value.message == "si.install-iface=eth7: no such interface"
    assert "eno1 (d8:9e:f3:12:ab:cd)" in (e.value.hint or "")
    assert "eth0 (02:fc:00:00:00:01)" in (e.value.hint or "")


def test_choose_the_pxe_boot_nic(nics: list[Nic]) -> None:
    def no_link(n: Nic) -> bool:
        return False

    assert choose_nic(nics, None, "01-d8-9e-f3-12-ab-cd", no_link).name == "eno1"
    assert choose_nic(nics, None, "01-D8-9E-F3-12-AB-CD", no_link).name == "eno1"


def test_choose_first_with_link_then_first(nics: list[Nic], sysfs: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    # BOOTIF of a NIC this machine does not have: fall back to carrier, and say so.
    assert choose_nic(nics, None, "01-aa-bb-cc-dd-ee-ff", _carrier(sysfs)).name == "eth0"
    assert "BOOTIF=01-aa-bb-cc-dd-ee-ff names no interface of this machine" in caplog.text
    assert choose_nic(nics, None, None, lambda n: False).name == "eno1"


def test_choose_without_nics() -> None:
    with pytest.raises(NetworkError, match="no network interface found") as e:
        choose_nic([], None, None, lambda n: True)
    assert "driver" in (e.value.hint or "")


# -- DHCP leases -----------------------------------------------------------------------------

class FakeLease:
    """Like pyroute2's Lease: options are properties that raise a
    LookupError (MissingOptionError) when the server did not send them."""

    _props: ClassVar[dict[str, str]] = {"routers": "router", "name_servers": "name_server",
                                         "domain_name": "domain_name", "server_id": "server_id"}

    def __init__(self, ack: dict[str, Any]) -> None:
        self.ack = ack

    @property
    def ip(self) -> str:
        return str(self.ack["yiaddr"])

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(f"0.0.0.0/{self.ack['options']['subnet_mask']}").prefixlen

    def __getattr__(self, name: str) -> Any:
        opt = self._props.get(name)
        if opt is None:
            raise AttributeError(name)
        if opt not in self.ack["options"]:
            raise LookupError(f"Lease does not set {opt}")
        return self.ack["options"][opt]


def test_lease_to_netconfig() -> None:
    lease = FakeLease({"yiaddr": "10.0.0.57", "siaddr": "10.0.0.2", "options": {
        "subnet_mask": "255.255.254.0", "router": ["10.0.0.1", "10.0.0.254"],
        "name_server": ["10.0.0.1", "9.9.9.9"], "domain_name": "lab.example",
        "server_id": "10.0.0.1", "host_name": "node07", "lease_time": 3600}})
    cfg = _from_lease(ETH0, lease)
    assert cfg == NetConfig(nic=ETH0, method="dhcp", address="10.0.0.57", prefixlen=23,
                            gateway="10.0.0.1", dns=("10.0.0.1", "9.9.9.9"),
                            domain="lab.example", server_id="10.0.0.1", next_server="10.0.0.2",
                            options={1: "255.255.254.0", 3: "10.0.0.1,10.0.0.254",
                                     6: "10.0.0.1,9.9.9.9", 15: "lab.example",
                                     54: "10.0.0.1", 12: "node07", 51: 3600})
    assert cfg.to_dict() == {"iface": "eth0", "mac": "02:fc:00:00:00:01", "method": "dhcp",
                             "address": "10.0.0.57/23", "gateway": "10.0.0.1",
                             "dns": ["10.0.0.1", "9.9.9.9"], "domain": "lab.example"}


def test_minimal_lease_leaves_the_rest_unset() -> None:
    lease = FakeLease({"yiaddr": "192.168.1.20", "siaddr": "0.0.0.0",
                       "options": {"subnet_mask": "255.255.255.0"}})
    cfg = _from_lease(ETH0, lease)
    assert (cfg.address, cfg.prefixlen) == ("192.168.1.20", 24)
    assert cfg.gateway is None and cfg.dns == () and cfg.domain is None
    assert cfg.server_id is None
    assert cfg.next_server is None  # siaddr 0.0.0.0 means "none"


def test_options_by_number() -> None:
    decoded: dict[Any, Any] = {"host_name": "node07", "domain_name": "lab.example",
                               "mos_fqdn": list(b"10.0.0.2"), "option224": [1, 2, 3],
                               "log_server": ["10.0.0.5", "10.0.0.6"],
                               66: "tftp.lab", "no_such_option_name": "x"}
    opts = _options_by_number(decoded)
    assert opts == {12: "node07", 15: "lab.example", 140: b"10.0.0.2", 224: b"\x01\x02\x03",
                    7: "10.0.0.5,10.0.0.6", 66: "tftp.lab"}


def test_image_server_option_as_text_or_as_address() -> None:
    # ISC dhcpd (SystemImager's `option-140 code 140 = text`) sends text;
    # dnsmasq's --dhcp-option=140,10.0.0.2 sends four address bytes.
    assert _options_by_number({"mos_fqdn": list(b"10.0.0.2")})[140] == b"10.0.0.2"
    assert _options_by_number({"mos_fqdn": [10, 0, 0, 2]})[140] == "10.0.0.2"
    assert _options_by_number({"mos_fqdn": list(b"imgs")})[140] == b"imgs"


def _real_ack(extra_options: bytes) -> dict[str, Any]:
    """A DHCPACK encoded and decoded by pyroute2's own dhcp4msg, with raw
    options appended the way a server sends them."""
    from pyroute2.dhcp.dhcp4msg import dhcp4msg
    from pyroute2.dhcp.enums.dhcp import MessageType

    msg = dhcp4msg({"op": 2, "xid": 0x5C10E, "yiaddr": "192.168.77.59",
                    "siaddr": "192.168.77.1", "chaddr": "02:fc:00:00:00:01", "options": {
                        "message_type": MessageType.ACK, "subnet_mask": "255.255.255.0",
                        "router": ["192.168.77.1"], "name_server": ["192.168.77.1"],
                        "domain_name": "cluster.lan", "server_id": "192.168.77.1",
                        "host_name": "node9", "lease_time": 3600,
                        "log_server": ["192.168.77.5", "192.168.77.6"]}})
    buf = msg.encode().buf
    assert buf[-1] == 0xFF  # the END option
    decoded = dhcp4msg(buf=buf[:-1] + extra_options + b"\xff").decode()
    return dict(decoded)


@pytest.mark.parametrize("option140", [
    bytes([140, 12]) + b"192.168.77.2",  # text (ISC dhcpd)
    bytes([140, 4, 192, 168, 77, 2]),  # an address (dnsmasq)
])
def test_real_ack_feeds_the_install_parameters(option140: bytes) -> None:
    from pyroute2.dhcp.leases import JSONStdoutLease

    ack = _real_ack(option140 + bytes([141, 3]) + b"514")
    lease = JSONStdoutLease(ack=ack, interface="eth0", server_mac="52:54:00:00:00:01")
    cfg = _from_lease(ETH0, lease)
    assert (cfg.address, cfg.prefixlen, cfg.gateway) == ("192.168.77.59", 24, "192.168.77.1")
    assert cfg.dns == ("192.168.77.1",)
    assert cfg.domain == "cluster.lan"
    assert cfg.next_server == "192.168.77.1"
    params = resolve([dhcp_layer(cfg.options)]).params
    assert str(params.image_server) == "192.168.77.2"
    assert params.hostname == "node9"
    assert params.domainname == "cluster.lan"
    assert params.log_server_port == 514
    assert str(params.log_server) == "192.168.77.5"


# -- resolv.conf, static, DHCP wrapper -------------------------------------------------------

def test_write_resolv_conf(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    cfg = NetConfig(ETH0, "dhcp", "10.0.0.57", 24, dns=("10.0.0.1", "9.9.9.9"),
                    domain="lab.example")
    write_resolv_conf(cfg, path)
    assert path.read_text() == "search lab.example\nnameserver 10.0.0.1\nnameserver 9.9.9.9\n"


def test_resolv_conf_without_dns_is_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "resolv.conf"
    path.write_text("nameserver 127.0.0.53\n")
    write_resolv_conf(NetConfig(ETH0, "dhcp", "10.0.0.57", 24), path)
    assert path.read_text() == "nameserver 127.0.0.53\n"
    write_resolv_conf(NetConfig(ETH0, "static", "10.0.0.57", 24, dns=("1.1.1.1",)), path)
    assert path.read_text() == "nameserver 1.1.1.1\n"


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[NetConfig]:
    """network.apply talks to the kernel (netlink): record instead."""
    got: list[NetConfig] = []
    monkeypatch.setattr(network, "apply", got.append)
    return got


@pytest.mark.parametrize(("address", "netmask", "ip", "prefix"), [
    ("10.0.0.5", "255.255.255.0", "10.0.0.5", 24),
    ("10.0.0.5", "16", "10.0.0.5", 16),
    ("10.0.0.5/20", "255.255.255.0", "10.0.0.5", 20),  # a prefix in IPADDR wins
    ("10.0.0.5", None, "10.0.0.5", 32),
])
def test_static_config(applied: list[NetConfig], address: str, netmask: str | None, ip: str,
                       prefix: int) -> None:
    cfg = network.static_config(ETH0, address, netmask, "10.0.0.1", ("10.0.0.1",))
    assert (cfg.method, cfg.address, cfg.prefixlen, cfg.gateway) == \
        ("static", ip, prefix, "10.0.0.1")
    assert cfg.dns == ("10.0.0.1",)
    assert applied == [cfg]


def test_static_config_rejects_a_bad_address(applied: list[NetConfig]) -> None:
    with pytest.raises(NetworkError, match=r"^IPADDR/NETMASK: .*10\.0\.0\.300"):
        network.static_config(ETH0, "10.0.0.300", "24", None)
    assert applied == []


def test_dhcp_without_answer(monkeypatch: pytest.MonkeyPatch, applied: list[NetConfig]) -> None:
    async def no_answer(nic: Nic, timeout: float, hostname: str | None) -> NetConfig:
        raise TimeoutError

    monkeypatch.setattr(network, "_dhcp", no_answer)
    with pytest.raises(NetworkError) as e:
        network.dhcp(ETH0, 60)
    assert e.value.message == "no DHCP answer on eth0 within 60s"
    assert "IPADDR" in (e.value.hint or "")
    assert applied == []


def test_dhcp_applies_the_lease(monkeypatch: pytest.MonkeyPatch,
                                applied: list[NetConfig]) -> None:
    got = NetConfig(ETH0, "dhcp", "10.0.0.57", 24, gateway="10.0.0.1")
    seen: list[tuple[str, float, str | None]] = []

    async def lease(nic: Nic, timeout: float, hostname: str | None) -> NetConfig:
        seen.append((nic.name, timeout, hostname))
        return got

    monkeypatch.setattr(network, "_dhcp", lease)
    assert network.dhcp(ETH0, 30, hostname="node9") is got
    assert seen == [("eth0", 30, "node9")]
    assert applied == [got]


# -- static addressing with broadcast and DNS, on a fake netlink ----------------------------

def test_static_config_sets_address_broadcast_and_route(monkeypatch: pytest.MonkeyPatch) -> None:
    net = FakeNetlink().install(monkeypatch)
    cfg = network.static_config(ETH0, "10.0.0.5", "24", "10.0.0.1", ("10.0.0.53",),
                                broadcast="10.0.0.255", domain="lab.example")
    assert (cfg.method, cfg.address, cfg.prefixlen, cfg.gateway, cfg.dns, cfg.domain,
            cfg.broadcast) == ("static", "10.0.0.5", 24, "10.0.0.1", ("10.0.0.53",),
                               "lab.example", "10.0.0.255")
    assert net.addresses == {"eth0": {"address": "10.0.0.5", "prefixlen": 24,
                                      "broadcast": "10.0.0.255"}}
    assert net.routes == [{"dst": "0.0.0.0/0", "gateway": "10.0.0.1", "oif": "eth0"}]


def test_without_broadcast_the_kernel_picks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    net = FakeNetlink().install(monkeypatch)
    network.static_config(ETH0, "10.0.0.5", "24", None)
    assert net.addresses == {"eth0": {"address": "10.0.0.5", "prefixlen": 24}}
    assert net.routes == []


def test_link_up_raises_the_nic_and_loopback(monkeypatch: pytest.MonkeyPatch,
                                             sysfs: Path) -> None:
    net = FakeNetlink().install(monkeypatch)
    monkeypatch.setattr(network, "SYSFS", sysfs)
    network.link_up(ETH0, wait=0)
    assert net.up == {"eth0", "lo"}


def test_resolv_conf_goes_to_the_module_path(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "RESOLV_CONF", tmp_path / "resolv.conf")
    write_resolv_conf(NetConfig(ETH0, "static", "10.0.0.5", 24, dns=("10.0.0.53", "9.9.9.9"),
                                domain="lab.example"))
    assert (tmp_path / "resolv.conf").read_text() == (
        "search lab.example\nnameserver 10.0.0.53\nnameserver 9.9.9.9\n")


def test_sysfs_default_is_the_module_path(monkeypatch: pytest.MonkeyPatch, sysfs: Path) -> None:
    monkeypatch.setattr(network, "SYSFS", sysfs)
    assert [n.name for n in list_nics()] == ["eno1", "enx00e04c680123", "eth0", "ib0"]
    assert has_carrier(ETH0)
