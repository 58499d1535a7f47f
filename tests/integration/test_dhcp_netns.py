"""The agent's network bring-up against a real DHCP server (dnsmasq), each
in its own network namespace joined by a veth pair: nothing leaves them."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netlab import veth_lab
from tests.verify import sh

REPO = Path(__file__).resolve().parents[2]

CLIENT = """
import json, sys
from agent.network import Nic, dhcp, link_up
from agent.params import dhcp_layer, resolve
nic = Nic("sc-c0", open("/sys/class/net/sc-c0/address").read().strip(), None, None)
link_up(nic, wait=5)
cfg = dhcp(nic, timeout=30, hostname="node9")
params = resolve([dhcp_layer(cfg.options)]).params
print(json.dumps({**cfg.to_dict(), "image_server": str(params.image_server)}))
"""


@pytest.fixture
def netns_pair(root_only: None) -> Iterator[tuple[str, str]]:
    with veth_lab("sc-d", "192.168.77.1", client_up=False) as pair:
        yield pair


def test_dhcp_lease_configures_the_interface(netns_pair: tuple[str, str],
                                            tmp_path: Path) -> None:
    srv, cli = netns_pair
    dnsmasq = subprocess.Popen(
        ["ip", "netns", "exec", srv, "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
         "--port=0", "--interface=sc-s0", "--bind-interfaces",
         "--dhcp-range=192.168.77.50,192.168.77.60,1h",
         "--dhcp-option=option:router,192.168.77.1",
         "--dhcp-option=140,192.168.77.1",  # SystemImager's image server option
         f"--dhcp-leasefile={tmp_path / 'leases'}", f"--pid-file={tmp_path / 'pid'}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        assert dnsmasq.poll() is None, dnsmasq.stderr.read() if dnsmasq.stderr else ""
        out = subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c", CLIENT],
                             cwd=REPO, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        got = json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        dnsmasq.terminate()
        dnsmasq.wait(5)
    ip = got["address"].split("/")[0]
    assert ip.startswith("192.168.77.") and 50 <= int(ip.rsplit(".", 1)[1]) <= 60
    assert got["address"].endswith("/24")
    assert got["gateway"] == "192.168.77.1"
    assert got["image_server"] == "192.168.77.1"
    # Independent of the agent: the kernel has the address and the default route.
    addrs = sh("ip", "-n", cli, "-j", "addr", "show", "sc-c0")
    assert f'"local":"{ip}"' in addrs
    assert "default via 192.168.77.1" in sh("ip", "-n", cli, "route")
    # And the server handed out exactly that lease, to the client's MAC.
    assert ip in (tmp_path / "leases").read_text()
