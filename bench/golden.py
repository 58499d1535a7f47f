"""The golden client the capture benchmarks pull from: this machine, in a
chroot reached over SSH.

The chroot has the host's /usr and /etc bound read-only (sshd and rsync
run in it), its own /proc, /dev and /run, and a realistic tree at /data --
the debootstrapped demo image from $SYSCLONE_CACHE if one is cached (else
the newest cached tree), else a copy of /usr/share, else a generated one.
sshd runs chrooted with a generated host key and client key: on loopback
on a free port (golden_over_ssh), or in a network namespace behind a veth
pair shaped by tc's token bucket (over_link), the way a golden client is
another machine on the image server's network.  Needs root, rsync and
openssh-server.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from imageserver.sources import SshSource
from sysclone.paths import StateRoot
from sysclone.run import daemon, output, run


@dataclass(frozen=True)
class Golden:
    """A golden client reachable over SSH, and a store to capture it into."""

    root: Path
    data: Path
    source: SshSource
    state: StateRoot
    tree: str  # what the tree is, for the report
    link: str = "loopback"  # between the server and the client: loopback, or a rate


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd did not listen on port {port}")


def demo_tarball(cache: Path) -> Path | None:
    """The demo image's cached debootstrap tree if there is one, else the
    newest cached tree: the same input from run to run, whatever other
    images (the VM tests' variants) the cache holds too."""
    from imageserver.bootstrap import BootstrapSpec, debootstrap_version
    from kernels.aptsources import find_debian_mirror
    from sysclone.errors import ConfigError

    tarballs = sorted((cache / "debootstrap").glob("*.tar.zst"),
                      key=lambda p: p.stat().st_mtime)
    try:
        spec = BootstrapSpec(mirror=find_debian_mirror().uri)
        demo = cache / "debootstrap" / spec.tarball_name(spec.cache_key(debootstrap_version()))
    except (ConfigError, OSError):  # no Debian in apt's sources: any cached tree will do
        demo = None
    if demo is not None and demo.is_file():
        return demo
    return tarballs[-1] if tarballs else None


def realistic_tree(dest: Path, cache: Path) -> str:
    tarball = demo_tarball(cache)
    if tarball is not None:
        run(["tar", "--zstd", "--xattrs", "--xattrs-include=*", "--acls", "--numeric-owner",
             "-xpf", str(tarball), "-C", str(dest)])
        return f"debootstrapped image {tarball.name}"
    if Path("/usr/share").is_dir():
        run(["cp", "-a", "/usr/share/.", f"{dest}/"])
        return "a copy of /usr/share"
    rnd = random.Random(42)
    for i in range(3000):  # mostly small files, a few large ones, like /usr
        d = dest / f"d{i % 60}"
        d.mkdir(exist_ok=True)
        size = rnd.choice((200, 2000, 20_000, 200_000)) if i % 100 else 4 << 20
        (d / f"f{i}").write_bytes(rnd.randbytes(size))
    return "a generated tree"


@contextmanager
def golden_over_ssh(work: Path, cache: Path) -> Iterator[Golden]:
    root = work / "golden"
    root.mkdir(parents=True)
    with ExitStack() as stack:
        def mount(*argv: str | Path) -> None:
            run(["mount", *map(str, argv)])
            stack.callback(run, ["umount", "-l", str(argv[-1])], check=False)

        mount("--bind", root, root)
        run(["mount", "--make-private", str(root)])
        for d in ("usr", "etc", "proc", "dev", "run", "root", "tmp", "data"):
            (root / d).mkdir()
        for link in ("bin", "sbin", "lib", "lib64"):
            (root / link).symlink_to(f"usr/{link}")
        for d in ("usr", "etc"):
            mount("--bind", f"/{d}", root / d)
            run(["mount", "-o", "remount,bind,ro", str(root / d)])
        mount("-t", "proc", "proc", root / "proc")
        mount("--bind", "/dev", root / "dev")
        mount("-t", "tmpfs", "tmpfs", root / "run")
        tree = realistic_tree(root / "data", cache)
        keys = root / "run/bench"
        keys.mkdir()
        (root / "run/sshd").mkdir()
        for k in ("hostkey", "client"):
            run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / k)])
        (keys / "authorized_keys").write_text((keys / "client.pub").read_text())
        port = _free_port()
        source = stack.enter_context(_sshd(root, "127.0.0.1", port))
        state = StateRoot.from_options(work / "state", cache)
        yield Golden(root, root / "data", source, state, tree)


@contextmanager
def _sshd(root: Path, address: str, port: int, netns: str | None = None) -> Iterator[SshSource]:
    """sshd chrooted into the golden client's root, listening on
    `address`:`port` (in network namespace `netns`), with the keys
    golden_over_ssh made; the source that reaches it."""
    name = f"sshd_config-{address}-{port}"
    (root / "run/bench" / name).write_text(
        f"Port {port}\nListenAddress {address}\nHostKey /run/bench/hostkey\n"
        "AuthorizedKeysFile /run/bench/authorized_keys\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nStrictModes no\nUseDNS no\nPasswordAuthentication no\n")
    inside = ["ip", "netns", "exec", netns] if netns else []
    sshd = daemon([*inside, "chroot", str(root), "/usr/sbin/sshd", "-D", "-f",
                   f"/run/bench/{name}"], stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, host=address)
        yield SshSource(address, "root", port, root / "run/bench/client",
                        ("StrictHostKeyChecking=no", "UserKnownHostsFile=/dev/null"))
    finally:
        sshd.terminate()
        sshd.wait()


# The link between the image server and the golden client, when it is not
# loopback: a veth pair into a network namespace, shaped to `rate` both ways
# by a token bucket, on the first of these private /30s that no route of
# this machine's covers (TEST-NET-1 was this machine's own network).
LINK_NETS = ("10.254.77.0/30", "172.31.254.0/30", "192.168.254.0/30", "100.127.254.0/30")
LINK_RATE = "1gbit"


def _free_link_net() -> tuple[str, str, int]:
    """(this end, the client's end, prefix length) of an unused /30."""
    taken = [ipaddress.ip_network(r["dst"], strict=False)
             for r in json.loads(output(["ip", "-j", "-4", "route", "show", "table", "all"]))
             if r.get("dst") not in (None, "default")]
    for cidr in LINK_NETS:
        net = ipaddress.ip_network(cidr)
        if not any(net.overlaps(t) for t in taken):
            mine, theirs = list(net.hosts())
            return str(mine), str(theirs), net.prefixlen
    raise RuntimeError(f"every one of {', '.join(LINK_NETS)} is routed on this machine")


@contextmanager
def over_link(g: Golden, rate: str = LINK_RATE) -> Iterator[Golden]:
    """The same golden client behind a `rate` link (tc's units: 1gbit,
    100mbit): its sshd in a network namespace of its own, the server's
    end of a veth pair here."""
    tag = f"{os.getpid() % 10**6}"
    ns, here, there = f"sysclone-bench-{tag}", f"scb{tag}h", f"scb{tag}g"
    mine, theirs, bits = _free_link_net()
    with ExitStack() as stack:
        run(["ip", "netns", "add", ns])
        stack.callback(run, ["ip", "netns", "delete", ns], check=False)
        run(["ip", "link", "add", here, "type", "veth", "peer", "name", there])
        stack.callback(run, ["ip", "link", "delete", here], check=False)
        run(["ip", "link", "set", there, "netns", ns])
        run(["ip", "addr", "add", f"{mine}/{bits}", "dev", here])
        run(["ip", "-n", ns, "addr", "add", f"{theirs}/{bits}", "dev", there])
        run(["ip", "link", "set", here, "up"])
        run(["ip", "-n", ns, "link", "set", there, "up"])
        run(["ip", "-n", ns, "link", "set", "lo", "up"])
        # A bucket of a few hundred packets: the rate holds over anything
        # longer than a millisecond or two.
        shape = ["root", "tbf", "rate", rate, "burst", "256kb", "latency", "20ms"]
        run(["tc", "qdisc", "add", "dev", here, *shape])
        run(["tc", "-n", ns, "qdisc", "add", "dev", there, *shape])
        source = stack.enter_context(_sshd(g.root, theirs, 22, netns=ns))
        yield replace(g, source=source, link=rate)
