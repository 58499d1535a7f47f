"""Fakes at the install network's boundaries: the kernel's netlink (what
pyroute2.IPRoute sets on links, addresses and routes) and the DHCP client
(agent.network._dhcp), recorded as data rather than call order."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import pytest

from agent import network
from agent.network import NetConfig, Nic


@dataclass
class FakeNetlink:
    """Stands for pyroute2.IPRoute: links by name, and what was set on them."""

    links: dict[str, int] = field(default_factory=lambda: {"lo": 1, "eth0": 2})
    up: set[str] = field(default_factory=set)
    addresses: dict[str, dict[str, Any]] = field(default_factory=dict)
    routes: list[dict[str, Any]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeNetlink:
        monkeypatch.setattr("agent.network._iproute", lambda: lambda: _Session(self))
        return self

    def name(self, index: int) -> str:
        return next(n for n, i in self.links.items() if i == index)


class _Session:
    def __init__(self, net: FakeNetlink) -> None:
        self.net = net

    def __enter__(self) -> _Session:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def link_lookup(self, ifname: str) -> list[int]:
        return [self.net.links[ifname]] if ifname in self.net.links else []

    def link(self, command: str, *, index: int, state: str) -> None:
        assert command == "set" and state == "up", (command, state)
        self.net.up.add(self.net.name(index))

    def addr(self, command: str, *, index: int, **kw: Any) -> None:
        assert command == "replace", command
        self.net.addresses[self.net.name(index)] = kw

    def route(self, command: str, **kw: Any) -> None:
        assert command == "replace", command
        self.net.routes.append({**kw, "oif": self.net.name(kw["oif"])})


Lease = Callable[[Nic, float, str | None], Coroutine[Any, Any, NetConfig]]


@dataclass
class FakeDhcp:
    """Stands for the DHCP exchange: answers with a lease built for the NIC
    asked about; records who asked."""

    address: str = "10.0.2.15"
    prefixlen: int = 24
    gateway: str | None = "10.0.2.2"
    dns: tuple[str, ...] = ("10.0.2.3",)
    domain: str | None = None
    options: dict[int | str, Any] = field(default_factory=dict)
    asked: list[tuple[str, str | None]] = field(default_factory=list)

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeDhcp:
        async def lease(nic: Nic, timeout: float, hostname: str | None) -> NetConfig:
            self.asked.append((nic.name, hostname))
            return NetConfig(nic, "dhcp", self.address, self.prefixlen, self.gateway,
                             self.dns, self.domain, server_id=self.gateway,
                             options=dict(self.options))

        monkeypatch.setattr(network, "_dhcp", lease)
        return self


def refuse_dhcp(monkeypatch: pytest.MonkeyPatch) -> None:
    async def no(nic: Nic, timeout: float, hostname: str | None) -> NetConfig:
        raise AssertionError("DHCP was used")

    monkeypatch.setattr(network, "_dhcp", no)
