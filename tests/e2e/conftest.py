"""End-to-end fixtures: a golden image, a boot environment and a running
image server, shared by the whole session (they take minutes to make)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bootenv.standard import build_bootenv
from ci.qemu import Vm
from imageserver.bootstrap import BootstrapSpec, bootstrap_image
from imageserver.serve import Running, ServeConfig, free_port, serving
from imageserver.store import ImageStore
from kernels.aptsources import find_debian_mirror
from sysclone.demo import install_append, pxe_vm
from sysclone.paths import StateRoot
from sysclone.ui import Ui

IMAGE = "golden"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def e2e_state(tmp_path_factory: pytest.TempPathFactory) -> StateRoot:
    if os.geteuid() != 0:
        pytest.skip("needs root (debootstrap, loop devices)")
    root = tmp_path_factory.mktemp("e2e-state")
    cache = os.environ.get("SYSCLONE_CACHE") or str(root / "cache")
    return StateRoot.from_options(root, cache)


@pytest.fixture(scope="session")
def golden(e2e_state: StateRoot) -> Path:
    """The golden image, debootstrapped (or unpacked from the cache)."""
    if not ImageStore(e2e_state).exists(IMAGE):
        bootstrap_image(e2e_state, IMAGE, BootstrapSpec(mirror=find_debian_mirror().uri))
    return ImageStore(e2e_state).path(IMAGE)


@pytest.fixture(scope="session")
def bootenv(e2e_state: StateRoot) -> Path:
    result = build_bootenv(e2e_state, Ui(quiet=True))
    return result.kernel.parent


@dataclass
class Installer:
    """A running image server plus a way to PXE-boot VMs against it."""

    state: StateRoot
    bootenv: Path
    server: Running
    events: list[dict[str, Any]] = field(default_factory=list)

    @contextmanager
    def boot(self, name: str, disk: Path, append: str, memory: int = 512) -> Iterator[Vm]:
        spec = pxe_vm(self.state, name, self.bootenv, disk, append, memory_mib=memory)
        with Vm(spec) as vm:
            yield vm

    def append(self, hostname: str, image: str = IMAGE, *, http_port: int | None = None,
               extra: str = "") -> str:
        cfg = self.server.config
        return install_append(hostname, image, http_port or cfg.http_port, cfg.rsync_port,
                              "poweroff", extra)

    def events_of(self, hostname: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("hostname") == hostname]


@pytest.fixture(scope="session")
def installer(e2e_state: StateRoot, golden: Path, bootenv: Path) -> Iterator[Installer]:
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port())
    with serving(e2e_state, cfg) as srv:
        inst = Installer(e2e_state, bootenv, srv)
        srv.monitor.subscribe(inst.events.append)
        yield inst
