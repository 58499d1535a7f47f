"""sysclone.pushupdate (si_pushupdate), sysclone.livenet (the live network
read through pyroute2 and D-Bus) and the SystemImager names of the media,
boot server and update commands (sysclone.sicompat)."""

from __future__ import annotations

import argparse
import json
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from imageserver.updateclient import script
from sysclone import cli, livenet, pushupdate, sicompat
from sysclone.errors import ConfigError, SyscloneError
from sysclone.pushupdate import PushOptions, Target, parse_target
from tests.conftest import FakeCommands, FakeResult

# ---------------------------------------------------------------- push-update ---


@pytest.mark.parametrize(("text", "target"), [
    ("node1", Target("root", "node1")),
    ("admin@node1.lab:2222", Target("admin", "node1.lab", 2222)),
    ("10.0.0.5", Target("root", "10.0.0.5")),
    ("[fe80::1]:22", Target("root", "fe80::1", 22)),
    ("fe80::1", Target("root", "fe80::1")),
])
def test_targets(text, target):
    assert parse_target(text) == target


@pytest.mark.parametrize(("text", "message"), [
    ("node1:99999", "is not a port"), ("Bad User@node1", "is not a user name"),
    ("node1;reboot", "is not a host"), ("-oProxyCommand=x", "is not a host"),
])
def test_bad_targets(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_target(text)


def opts(**kw: Any) -> PushOptions:
    return PushOptions(**{"server": "10.0.0.3", "image": "web@2", "concurrency": 2, **kw})


def test_the_script_goes_through_ssh_stdin(fake_commands: FakeCommands):
    seen: list[list[str]] = []

    def ssh(argv: list[str]) -> FakeResult:
        seen.append(argv)
        host = argv[-2]
        if host == "root@down":
            return FakeResult(stderr="ssh: connect to host down port 22: No route", returncode=255)
        if host == "root@bad":
            return FakeResult(stderr="updateclient: error: health check failed: `false` "
                                     "exited with 1 (the update was rolled back)", returncode=3)
        return FakeResult(stdout="updateclient: 3 changes\n" + json.dumps(
            {"image": "web@2", "changes": 3}) + "\n")

    fake_commands.add(["ssh"], ssh)
    results = pushupdate.push([Target("root", "n1", 2222), Target("root", "down"),
                               Target("root", "bad")], opts(ssh_key="/k", ssh_options=(
                                   "StrictHostKeyChecking=no",)))
    assert [r.status for r in results] == ["ok", "unreachable", "rolled-back"]
    assert results[0].changes == 3 and results[0].image == "web@2"
    assert "No route" in results[1].message
    assert results[2].message.startswith("health check failed")
    argv = next(a for a in seen if a[-2] == "root@n1")
    assert argv[:9] == ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20", "-p", "2222",
                        "-i", "/k"]
    assert argv[-1] == ("python3 - --server 10.0.0.3 --port 8181 --json --image web@2")


def test_the_script_is_sent_as_is(monkeypatch):
    sent: list[str] = []

    def run(argv: list[str], **kw: Any) -> Any:
        sent.append(kw["input"])
        return FakeResult(stdout="{}")

    monkeypatch.setattr(pushupdate, "run", run)
    pushupdate.update_one(Target("root", "n1"), opts(), script().decode())
    assert sent == [script().decode()]


def test_concurrency_is_a_limit(monkeypatch):
    running, most = [0], [0]
    lock = threading.Lock()

    def update_one(t: Target, o: PushOptions, text: str) -> pushupdate.PushResult:
        import time

        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        return pushupdate.PushResult(t, "ok", 0.0)

    monkeypatch.setattr(pushupdate, "update_one", update_one)
    results = pushupdate.push([Target("root", f"n{i}") for i in range(7)], opts(concurrency=3))
    assert [r.target.host for r in results] == [f"n{i}" for i in range(7)]
    assert most[0] == 3


def test_push_update_command_summary(tmp_path, capsys, fake_commands):
    fake_commands.add(["ssh"], FakeResult(stdout='{"image": "web@2", "changes": 0}\n'))
    assert cli.main(["--root", str(tmp_path), "push-update", "n1", "n2",
                     "--server", "10.0.0.3"]) == 0
    out = capsys.readouterr()
    assert "CLIENT" in out.out and "n1" in out.out and "n2" in out.out
    assert "2 of 2 clients updated" in out.err
    assert cli.main(["--root", str(tmp_path), "push-update", "n1"]) == 1
    assert "--server SERVER is required" in capsys.readouterr().err
    assert cli.main(["--root", str(tmp_path), "push-update", "n1", "n1",
                     "--server", "s"]) == 1
    assert "a client is named twice" in capsys.readouterr().err


def test_options_are_checked():
    ns = argparse.Namespace(server="s", port=8181, image=None, concurrency=0, dry_run=False,
                            exclude=None, health_check=None, ssh_key=None, ssh_option=None,
                            timeout=10, python="python3")
    with pytest.raises(ConfigError, match="--concurrency 0"):
        PushOptions.from_namespace(ns)
    ns.concurrency, ns.ssh_option = 1, ["ProxyCommand sh -c x"]
    with pytest.raises(ConfigError, match="expected Name=value"):
        PushOptions.from_namespace(ns)


# ------------------------------------------------------------------- livenet ---

class Msg(dict):
    def get_attr(self, name: str) -> Any:
        return self.get(name)


class FakeIPRoute:
    def __init__(self, valid: int = livenet.FOREVER, routes: bool = True) -> None:
        self.valid = valid
        self.routes = routes

    def get_routes(self, family: int) -> list[Msg]:
        assert family == socket.AF_INET
        if not self.routes:
            return []
        return [Msg(dst_len=24, RTA_OIF=2), Msg(dst_len=0, RTA_OIF=2, RTA_GATEWAY="10.0.0.1",
                                               RTA_PRIORITY=100)]

    def get_links(self, index: int) -> list[Msg]:
        return [Msg(IFLA_IFNAME="enp1s0", IFLA_ADDRESS="52:54:00:AA:BB:CC")]

    def get_addr(self, index: int, family: int) -> list[Msg]:
        return [Msg(prefixlen=24, IFA_ADDRESS="10.0.0.5",
                    IFA_CACHEINFO={"ifa_valid": self.valid})]


class Reply:
    def __init__(self, body: list[Any], error: str | None = None) -> None:
        from dbus_fast import MessageType

        self.body = body
        self.message_type = MessageType.ERROR if error else MessageType.METHOD_RETURN
        self.error_name = error


class FakeBus:
    """Answers D-Bus calls by (destination, member)."""

    def __init__(self, answers: dict[tuple[str, str], Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, list[Any]]] = []

    async def call(self, msg: Any) -> Reply:
        from dbus_fast import Variant

        self.calls.append((msg.destination, msg.member, list(msg.body)))
        key = (msg.destination, msg.member if msg.member != "Get" else msg.body[1])
        if key not in self.answers:
            return Reply(["not here"], "org.freedesktop.DBus.Error.ServiceUnknown")
        value = self.answers[key]
        return Reply([Variant("s" if isinstance(value, str) else "o", value)]
                     if msg.member == "Get" else [value])


def test_kernel_view():
    view = livenet.kernel_view(FakeIPRoute(valid=3600))
    assert (view.interface, view.mac, view.address, view.gateway) == (
        "enp1s0", "52:54:00:aa:bb:cc", "10.0.0.5/24", "10.0.0.1")
    assert view.finite_lifetime
    with pytest.raises(SyscloneError, match="no IPv4 default route"):
        livenet.kernel_view(FakeIPRoute(routes=False))


def test_network_manager_says_how(tmp_path):
    from dbus_fast import Variant

    nm = livenet.NM
    bus = FakeBus({
        (nm, "GetDeviceByIpIface"): "/org/freedesktop/NetworkManager/Devices/2",
        (nm, "ActiveConnection"): "/org/freedesktop/NetworkManager/ActiveConnection/1",
        (nm, "Connection"): "/org/freedesktop/NetworkManager/Settings/3",
        (nm, "GetSettings"): {"ipv4": {"method": Variant("s", "manual")}},
    })
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search lab.example\nnameserver 127.0.0.53\nnameserver 10.0.0.53\n")
    net = livenet.read_live_network(FakeIPRoute(valid=3600), bus, resolv)
    # The lifetime would say DHCP; NetworkManager knows it is static.
    assert (net.method, net.source) == ("static", "NetworkManager")
    assert net.dns == ("10.0.0.53",) and net.domain == "lab.example"
    assert bus.calls[0] == (nm, "GetDeviceByIpIface", ["enp1s0"])


def test_networkd_says_how():
    nd = livenet.NETWORKD
    bus = FakeBus({(nd, "GetLinkByIndex"): ("enp1s0", "/org/freedesktop/network1/link/_32"),
                   (nd, "Describe"): json.dumps({"Addresses": [
                       {"Family": 10, "ConfigSource": "static"},
                       {"Family": 2, "ConfigSource": "DHCPv4"}]})})
    net = livenet.read_live_network(FakeIPRoute(), bus, Path("/nonexistent"))
    assert (net.method, net.source) == ("dhcp", "systemd-networkd")
    assert net.to_dict()["dns"] == []


def test_without_a_manager_the_lifetime_decides():
    assert livenet.read_live_network(FakeIPRoute(valid=600), FakeBus({}),
                                     Path("/nonexistent")).method == "dhcp"
    net = livenet.read_live_network(FakeIPRoute(), FakeBus({}), Path("/nonexistent"))
    assert (net.method, net.source) == ("static", "netlink")


# ------------------------------------------------------------------ si_ names ---

@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    calls: list[list[str]] = []
    monkeypatch.setattr(cli, "main", lambda argv: calls.append(list(argv)) or 0)
    return calls


@pytest.mark.parametrize(("fn", "argv", "expected"), [
    (sicompat.si_updateclient, ["-server", "10.0.0.3", "-image", "web", "-dry-run",
                                "-configure-from", "eth0"],
     ["updateclient", "--server", "10.0.0.3", "--image", "web", "--dry-run"]),
    (sicompat.si_updateclient, ["--server", "s", "--autoinstall", "--reboot"],
     ["updateclient", "--server", "s", "--autoinstall"]),
    (sicompat.si_pushupdate, ["--clients", "n1 n2,n3", "--server", "s", "--ssh-user", "admin"],
     ["push-update", "--server", "s", "--", "admin@n1", "admin@n2", "admin@n3"]),
    (sicompat.si_mkbootserver, ["-interface", "lab0", "--run"],
     ["bootserver", "--interface", "lab0", "--mode", "full", "--run"]),
    (sicompat.si_mkautoinstallcd, ["-out-file", "a.iso", "-append", "console=ttyS0",
                                   "-config", "local.cfg", "--flavor", "x"],
     ["media", "iso", "--output", "a.iso", "--append", "console=ttyS0", "--local-cfg",
      "local.cfg"]),
    (sicompat.si_mkautoinstalldisk, ["-device", "/dev/sdb", "--force"],
     ["media", "usb", "--device", "/dev/sdb", "--force"]),
    (sicompat.si_mkclientnetboot, ["--localboot", "--clients", "52:54:00:00:00:01 10.0.0.9"],
     ["media", "pxe", "--local", "52:54:00:00:00:01", "--local", "10.0.0.9"]),
    (sicompat.si_mkclientnetboot, ["--netboot", "--clients", "10.0.0.9"],
     ["media", "pxe", "--client", "10.0.0.9", ""]),
])
def test_systemimager_names(ran, fn, argv, expected, capsys):
    assert fn(argv) == 0
    assert ran == [expected]


def test_dropped_options_say_why(ran, capsys):
    sicompat.si_updateclient(["--server", "s", "--no-bootloader"])
    assert "--no-bootloader: ignored (the boot loader is refreshed only when a kernel changed)" \
        in capsys.readouterr().err
