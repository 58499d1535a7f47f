"""Two network namespaces joined by a veth pair (sc-s0 on the server side,
sc-c0 on the client side): a private LAN for DHCP and TFTP tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from tests.verify import sh


@contextmanager
def veth_lab(prefix: str, server_ip: str, *, client_up: bool) -> Iterator[tuple[str, str]]:
    """Yields (server namespace, client namespace); the server's end has
    `server_ip`/24 and is up; the client's is up only with `client_up` (an
    agent under test brings its own link up)."""
    tag = str(os.getpid())
    srv, cli = f"{prefix}s-{tag}", f"{prefix}c-{tag}"
    sh("ip", "netns", "add", srv)
    sh("ip", "netns", "add", cli)
    try:
        sh("ip", "link", "add", "sc-s0", "netns", srv, "type", "veth", "peer", "name", "sc-c0",
           "netns", cli)
        sh("ip", "-n", srv, "addr", "add", f"{server_ip}/24", "dev", "sc-s0")
        up = [(srv, "sc-s0"), (srv, "lo")] + ([(cli, "sc-c0"), (cli, "lo")] if client_up else [])
        for ns, dev in up:
            sh("ip", "-n", ns, "link", "set", dev, "up")
        yield srv, cli
    finally:
        sh("ip", "netns", "del", cli, check=False)
        sh("ip", "netns", "del", srv, check=False)
