"""Kernels for real: Debian's generic kernel through apt (private
configuration, Debian's keyring) with Debian's firmware, from an empty
state root; a kernel package as a file; apt refusing an archive it cannot
verify; the host's Debian mirror as apt reports it.

Needs network to the mirror in /etc/apt's sources, apt, dpkg-deb, depmod
and modinfo.  Set SYSCLONE_CACHE to share the ~95 MB of downloads.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from kernels.apt import Archive, ArchiveError
from kernels.aptsources import find_debian_mirror
from kernels.moduledb import ModuleDB
from kernels.standard import add_package, fetch_standard
from kernels.tree import list_kernels, load
from sysclone.paths import StateRoot

pytestmark = pytest.mark.integration


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    cache = os.environ.get("SYSCLONE_CACHE")
    return StateRoot(tmp_path / "root", Path(cache) if cache else tmp_path / "cache")


def test_the_host_mirror_as_apt_sees_it() -> None:
    m = find_debian_mirror(arch="amd64")
    assert m.uri.startswith(("http://", "https://")) and "-" not in m.suite


def test_fetch_the_generic_kernel_with_firmware(state: StateRoot) -> None:
    mirror = find_debian_mirror(arch="amd64")
    seen: list[tuple[int, int]] = []
    tree = fetch_standard(state, "amd64", suite="bookworm", mirror=mirror.uri,
                          progress=lambda done, total: seen.append((done, total)))

    assert tree.path == state.kernels / f"amd64-{tree.kver}"
    assert tree.kver.endswith("-amd64") and not tree.kver.endswith("cloud-amd64")
    assert tree.vmlinuz.stat().st_size > 5_000_000
    assert tree.config is not None and "CONFIG_SQUASHFS" in tree.config.read_text()
    db = ModuleDB.load(tree.modules_dir)
    # What the cloud kernel lacks, the generic one has.
    for m in ("ahci", "e1000", "e1000e", "igb", "ixgbe", "megaraid_sas", "mpt3sas", "nvme",
              "virtio_blk", "virtio_net", "8139too", "tg3"):
        assert db.get(m) is not None, m
    # Firmware of Debian's packages that the modules declare, and nothing else.
    assert (tree.firmware_dir / "tigon/tg3.bin").is_file()
    assert (tree.firmware_dir / "rtl_nic/rtl8168d-1.fw").is_file()
    declared = {f for m in db.modules.values() for f in m.firmware}
    carried = {str(p.relative_to(tree.firmware_dir)) for p in tree.firmware_dir.rglob("*")
               if p.is_file()}
    assert carried and carried <= declared
    assert tree.firmware == len(carried) and tree.modules == len(db.loadable)

    data = json.loads((tree.path / "kernel.json").read_text())
    assert data["package"]["metapackage"] == "linux-image-amd64"
    assert data["source"] == {"mirror": mirror.uri, "suite": "bookworm", "codename": "bookworm"}
    assert any(p.startswith("firmware-misc-nonfree ") for p in data["firmware_packages"])
    assert seen and seen[-1][0] == seen[-1][1] > 0
    assert (state.cache_dir / "debs" / f"{tree.package.sha256}.deb").is_file()

    # A second fetch finds the tree and downloads nothing.
    again = fetch_standard(state, "amd64", suite="bookworm", mirror=mirror.uri)
    assert again == tree == load(tree.path)
    assert list_kernels(state.kernels) == [tree]

    # The same package as a file, under a name of its own.
    deb = state.cache_dir / "debs" / f"{tree.package.sha256}.deb"
    named = add_package(state, str(deb), "from-file", mirror=mirror.uri, suite="bookworm",
                        firmware=False)
    assert (named.origin, named.kver, named.firmware) == ("deb", tree.kver, 0)


def test_apt_refuses_an_archive_it_cannot_verify(state: StateRoot, tmp_path: Path) -> None:
    mirror = find_debian_mirror(arch="amd64")
    # A keyring without Debian's archive keys: the InRelease signature fails.
    wrong = Path("/usr/share/keyrings/debian-archive-removed-keys.gpg")
    if not wrong.is_file():
        pytest.skip("debian-archive-keyring's removed-keys ring is not installed")
    archive = Archive(mirror.uri, "bookworm", "amd64", tmp_path / "cache", keyring=wrong)
    with pytest.raises(ArchiveError, match=r"NO_PUBKEY|not signed|signature"):
        archive.update()
