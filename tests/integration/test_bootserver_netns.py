"""`sysclone bootserver --run` answering machines for real: dnsmasq in one
network namespace, a client in another, joined by a veth pair.  The
client speaks DHCP over a raw socket as PXE firmware does (option 93, the
vendor and user classes), so each firmware's boot file, option 140 and the
static lease of a client the monitor saw are read off the wire; the boot
files are then fetched over TFTP with curl, and the agent's own DHCP
client gets option 140.  ISC dhcpd checks its fragment (dhcpd -t)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mkmedia.pxe import TreeInfo, build_tree
from sysclone.paths import StateRoot
from tests.integration.netlab import veth_lab
from tests.integration.test_dhcp_netns import CLIENT as AGENT_DHCP

REPO = Path(__file__).resolve().parents[2]
SERVER_IP = "192.168.77.1"
SEEN_MAC, SEEN_IP = "52:54:00:77:00:05", "192.168.77.55"

# A DHCPDISCOVER as PXE firmware sends it, over a raw socket (the
# interface has no address yet); prints the OFFER as JSON.
PROBE = r"""
import json, random, socket, struct, sys, time
iface, mac, arch, vendor, user = sys.argv[1:6]
hw = bytes.fromhex(mac.replace(":", ""))
xid = random.getrandbits(32)
opts = bytes([53, 1, 1])
if arch != "-":
    opts += bytes([93, 2]) + struct.pack("!H", int(arch))
if vendor != "-":
    opts += bytes([60, len(vendor)]) + vendor.encode()
if user != "-":
    opts += bytes([77, len(user)]) + user.encode()
opts += bytes([55, 6, 1, 3, 6, 60, 67, 140, 255])
bootp = struct.pack("!BBBBIHH4s4s4s4s16s64s128s", 1, 1, 6, 0, xid, 0, 0x8000, bytes(4),
                    bytes(4), bytes(4), bytes(4), hw.ljust(16, b"\0"), bytes(64), bytes(128))
payload = bootp + b"\x63\x82\x53\x63" + opts
udp = struct.pack("!HHHH", 68, 67, 8 + len(payload), 0) + payload
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes(4),
                 b"\xff\xff\xff\xff")
ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
frame = b"\xff" * 6 + hw + b"\x08\x00" + ip + udp
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
s.bind((iface, 0))
s.settimeout(1)
deadline = time.time() + 20
while time.time() < deadline:
    s.send(frame)
    try:
        while True:
            data = s.recv(4096)
            ihl = (data[14] & 15) * 4
            if data[23] != 17:
                continue
            u = 14 + ihl
            if struct.unpack("!H", data[u + 2:u + 4])[0] != 68:
                continue
            b = data[u + 8:]
            if b[0] != 2 or struct.unpack("!I", b[4:8])[0] != xid:
                continue
            out = {"yiaddr": socket.inet_ntoa(b[16:20]), "siaddr": socket.inet_ntoa(b[20:24]),
                   "file": b[108:236].split(b"\0")[0].decode(), "options": {}}
            i = 240
            while i < len(b) and b[i] != 255:
                if b[i] == 0:
                    i += 1
                    continue
                code, n = b[i], b[i + 1]
                out["options"][str(code)] = b[i + 2:i + 2 + n].hex()
                i += 2 + n
            print(json.dumps(out))
            sys.exit(0)
    except socket.timeout:
        continue
sys.exit("no offer")
"""


@pytest.fixture
def lab(root_only: None) -> Iterator[tuple[str, str]]:
    with veth_lab("sc-b", SERVER_IP, client_up=True) as pair:
        yield pair


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    s = StateRoot(tmp_path / "state", tmp_path / "cache")
    be = tmp_path / "be"
    be.mkdir()
    (be / "kernel").write_bytes(os.urandom(100_000))
    (be / "initrd.img").write_bytes(os.urandom(200_000))
    build_tree(s.pxe, be / "kernel", be / "initrd.img", TreeInfo("IMAGENAME=web"))
    s.logs.mkdir(parents=True)
    (s.logs / "node5.jsonl").write_text(json.dumps(
        {"kind": "done", "hostname": "node5", "mac": SEEN_MAC, "ip": SEEN_IP}) + "\n")
    return s


@pytest.fixture
def bootserver(lab: tuple[str, str], state: StateRoot, tmp_path: Path
               ) -> Iterator[subprocess.Popen[str]]:
    with running(lab[0], state, tmp_path) as proc:
        yield proc


@contextmanager
def running(srv: str, state: StateRoot, tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """`sysclone bootserver --run` in namespace `srv`, stopped (and its exit
    status checked) afterwards."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", srv, sys.executable, "-m", "sysclone.cli", "--root",
         str(state.root), "bootserver", "--interface", "sc-s0", "--dnsmasq-user", "root",
         "--dhcpd", str(tmp_path / "dhcpd.inc"), "--run"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 20
        while not (state.run / "dnsmasq.pid").is_file():
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "dnsmasq did not start"
            time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
        out = proc.stdout.read() if proc.stdout else ""
        assert rc == 0, out


def probe(cli: str, mac: str, arch: str = "-", vendor: str = "-", user: str = "-"
          ) -> dict[str, object]:
    r = subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c", PROBE, "sc-c0", mac,
                        arch, vendor, user], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def text(offer: dict, code: int) -> str:
    return bytes.fromhex(offer["options"][str(code)]).decode().rstrip("\0")


def bootfile(offer: dict) -> str:
    """The BOOTP file field, or option 67 when the client asked for it."""
    return str(offer["file"]) or text(offer, 67)


def test_each_firmware_gets_its_boot_file_and_option_140(lab, bootserver, state):
    _, cli = lab
    bios = probe(cli, "52:54:00:77:00:01", "0", "PXEClient:Arch:00000:UNDI:002001")
    assert bootfile(bios) == "pxelinux.0" and bios["siaddr"] == SERVER_IP, bios
    assert text(bios, 140) == SERVER_IP
    last = int(str(bios["yiaddr"]).rsplit(".", 1)[1])
    assert str(bios["yiaddr"]).startswith("192.168.77.") and 100 <= last <= 199
    efi = probe(cli, "52:54:00:77:00:02", "7", "PXEClient:Arch:00007:UNDI:003016")
    assert bootfile(efi) == "bootx64.efi"
    http = probe(cli, "52:54:00:77:00:03", "16", "HTTPClient:Arch:00016:UNDI:003001")
    assert bootfile(http) == f"http://{SERVER_IP}:8181/boot/ipxe.efi"
    assert text(http, 60) == "HTTPClient"  # UEFI HTTP boot ignores an offer without it
    ipxe = probe(cli, "52:54:00:77:00:04", "7", "PXEClient:Arch:00007:UNDI:003016", "iPXE")
    assert bootfile(ipxe) == f"http://{SERVER_IP}:8181/boot/boot.ipxe"
    # a client the monitor saw keeps its address
    seen = probe(cli, SEEN_MAC, "0")
    assert seen["yiaddr"] == SEEN_IP


def test_the_tree_over_tftp_and_the_agents_dhcp(lab, bootserver, state):
    _, cli = lab
    r = subprocess.run(["ip", "netns", "exec", cli, sys.executable, "-c", AGENT_DHCP],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["image_server"] == SERVER_IP  # option 140, no IMAGESERVER= needed
    for name in ("pxelinux.0", "bootx64.efi", "grubx64.efi", "grub/grub.cfg", "kernel",
                 "initrd.img", "boot.ipxe"):
        data = subprocess.run(["ip", "netns", "exec", cli, "curl", "-sf", "--max-time", "30",
                               f"tftp://{SERVER_IP}/{name}"], capture_output=True,
                              timeout=60).stdout
        assert data == (state.pxe / name).read_bytes(), name


def test_ipxe_firmware_gets_pxelinux_from_a_tree_without_ipxe(lab, state, tmp_path):
    """QEMU's NIC ROM is iPXE: from a pxelinux + GRUB tree it must be sent
    pxelinux.0 over TFTP, not a boot.ipxe the tree does not have."""
    own = StateRoot(tmp_path / "pxelinux-grub", tmp_path / "cache")
    build_tree(own.pxe, state.pxe / "kernel", state.pxe / "initrd.img",
               TreeInfo("IMAGENAME=web", ("pxelinux", "grub")))
    assert not (own.pxe / "boot.ipxe").exists()
    with running(lab[0], own, tmp_path):
        offer = probe(lab[1], "52:54:00:77:00:06", "0", "PXEClient:Arch:00000:UNDI:002001",
                      "iPXE")
        assert bootfile(offer) == "pxelinux.0" and text(offer, 140) == SERVER_IP, offer
        efi = probe(lab[1], "52:54:00:77:00:07", "7", "PXEClient:Arch:00007:UNDI:003016",
                    "iPXE")
        assert bootfile(efi) == "bootx64.efi", efi
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(f"include \"{tmp_path / 'dhcpd.inc'}\";\n")
    r = subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_dhcpd_fragment_is_valid(lab, bootserver, tmp_path):
    conf = tmp_path / "dhcpd.conf"
    conf.write_text(f"include \"{tmp_path / 'dhcpd.inc'}\";\n")
    r = subprocess.run(["dhcpd", "-t", "-cf", str(conf)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_proxy_mode_is_accepted_by_dnsmasq(state, tmp_path, root_only):
    conf = tmp_path / "proxy.conf"
    r = subprocess.run([sys.executable, "-m", "sysclone.cli", "--root", str(state.root),
                        "bootserver", "--interface", "lo", "--address", "192.168.1.5/24",
                        "--mode", "proxy", "--dnsmasq-user", "root", "--output", str(conf)],
                       cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "put IMAGESERVER= on the tree's command line" in r.stderr
    t = subprocess.run(["dnsmasq", "--test", f"--conf-file={conf}"], capture_output=True,
                       text=True)
    assert t.returncode == 0, t.stderr
