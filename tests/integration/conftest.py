"""Fixtures for tests that need root: loop devices, namespaces, daemons."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sysclone.paths import StateRoot


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture
def root_only() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    cache = os.environ.get("SYSCLONE_CACHE")
    return StateRoot.from_options(tmp_path / "state", cache or tmp_path / "cache")


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


@pytest.fixture
def loopdev(tmp_path: Path, root_only: None) -> Iterator[tuple[str, Path]]:
    """A 2 GiB sparse file on a loop device with partition scanning."""
    backing = tmp_path / "disk.img"
    with backing.open("wb") as f:
        f.truncate(2 << 30)
    dev = sh("losetup", "--find", "--show", "--partscan", str(backing)).strip()
    try:
        yield dev, backing
    finally:
        for line in sh("findmnt", "-rn", "-o", "TARGET,SOURCE", check=False).splitlines():
            target, _, source = line.partition(" ")
            if source.startswith(dev):
                sh("umount", "-l", target, check=False)
        for _ in range(10):
            if subprocess.run(["losetup", "-d", dev], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
