"""The image's initrds listed on the image server (imageserver.initrdlisting)
and used by the agent's initrd phase in place of reading them itself --
only for the very file it fetched."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from agent import flow
from agent.configure import initrd as initrdlib
from agent.configure.initrdpolicy import storage_needs, wanted_in_initrd
from agent.initramfs import Listing, read_listing
from agent.server import ServerError
from imageserver.initrdlisting import answer, list_tree
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from tests.unit.test_flow_configure import plan, session
from tests.unit.test_initrd_policy import KVER, debian_like, no_commands

HOST_ONLY = "MODULES=dep\nCOMPRESS=gzip\n"
MODS = ("ext4", "virtio_blk", "virtio_pci")


def kernel_tree(root: Path, initrd: bytes, kver: str = KVER) -> Path:
    for p in ("usr/sbin/update-initramfs", f"lib/modules/{kver}/modules.dep",
              f"boot/vmlinuz-{kver}"):
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).touch()
    (root / f"boot/initrd.img-{kver}").write_bytes(initrd)
    os.utime(root / f"boot/initrd.img-{kver}", (1_700_000_000, 1_700_000_000))
    return root


def test_listing_survives_json() -> None:
    li = Listing({"conf/initramfs.conf": 0o100644, "usr": 0o40755},
                 {"conf/initramfs.conf": b"MODULES=most\n\xff"}, ["none", "gzip"])
    assert Listing.from_dict(li.to_dict()) == li
    with pytest.raises((KeyError, ValueError)):
        Listing.from_dict({"files": {}, "contents": {"x": "zz"}, "segments": []})


def test_the_server_lists_every_kernels_initrd_it_can_read(tmp_path: Path) -> None:
    tree = kernel_tree(tmp_path / "image", debian_like(mods=MODS))
    # A second kernel whose initrd is not an initramfs: left to the client.
    kernel_tree(tree, b"garbage", kver="6.1.0-99-amd64")
    got = list_tree(tree)
    assert list(got) == [f"boot/initrd.img-{KVER}"]
    entry = got[f"boot/initrd.img-{KVER}"]
    assert (entry["size"], entry["mtime"]) == (len(debian_like(mods=MODS)), 1_700_000_000)
    assert Listing.from_dict(entry["listing"]) == read_listing(
        tree / f"boot/initrd.img-{KVER}", no_commands, wanted_in_initrd)


def test_the_answer_names_a_stored_image_or_refuses(tmp_path: Path) -> None:
    state = StateRoot(tmp_path / "root", tmp_path / "cache")
    kernel_tree(state.images / "deb12", debian_like(mods=MODS))
    ImageStore(state).record("deb12", origin="bootstrap")
    got = answer(state, {"module": "deb12"})
    assert got["module"] == "deb12" and list(got["initrds"]) == [f"boot/initrd.img-{KVER}"]
    with pytest.raises(ConfigError, match="no module= given"):
        answer(state, {})
    with pytest.raises(ConfigError):
        answer(state, {"module": "../etc"})


class ListingServer:
    def __init__(self, initrds: dict[str, Any] | None) -> None:
        self.initrds = initrds
        self.asked: list[dict[str, Any]] = []

    def get(self, path: str, query: dict[str, str], **kw: Any) -> dict[str, Any]:
        self.asked.append({"path": path, **query})
        if self.initrds is None:
            raise ServerError("image server 10.0.0.2:8181 is unreachable: refused")
        return {"initrds": self.initrds}

    def post(self, path: str, body: dict[str, Any], **kw: Any) -> bytes:
        raise ServerError("no initrd builds here")


def run_initrd_phase(root: Path, server: ListingServer, monkeypatch: pytest.MonkeyPatch
                     ) -> tuple[dict[str, Any], list[str]]:
    monkeypatch.setattr(flow, "_storage_needs", lambda plan: storage_needs(
        "ext4", ["virtio_blk"], set(), set(), set()))
    read_here: list[str] = []
    real = initrdlib.list_initrd

    def list_initrd(root: Path, path: Path) -> Listing:
        read_here.append(path.name)
        return real(root, path)

    monkeypatch.setattr(initrdlib, "list_initrd", list_initrd)
    monkeypatch.setattr(initrdlib.InitramfsTools, "regenerate", lambda *a: None)
    s, rep = session()
    flow.initrd(s, plan(), SimpleNamespace(get=server.get, post=server.post), root)
    ev = next(e[2] for e in rep.log if e[:2] == ("event", "initrd"))
    return ev, read_here


def test_the_servers_listing_of_the_same_file_decides(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    image = kernel_tree(tmp_path / "image", debian_like(mods=MODS))
    root = tmp_path / "sysroot"
    shutil.copytree(image, root)  # as rsync -a fetched it: same size and mtime
    server = ListingServer(list_tree(image))
    ev, read_here = run_initrd_phase(root, server, monkeypatch)
    assert server.asked == [{"path": "/v1/initrd-listing", "module": "web@3"}]
    assert read_here == []
    assert ev["action"] == "keep"


def test_a_different_file_is_read_on_the_client(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The server listed a generic initrd; the client's (an override put
    another there) is host-only: the client reads its own and regenerates."""
    image = kernel_tree(tmp_path / "image", debian_like(mods=MODS))
    root = kernel_tree(tmp_path / "sysroot", debian_like(mods=MODS, conf=HOST_ONLY))
    ev, read_here = run_initrd_phase(root, ListingServer(list_tree(image)), monkeypatch)
    assert read_here == [f"initrd.img-{KVER}"]
    assert ev["action"] == "regenerate"
    assert "MODULES=dep" in " ".join(ev["reasons"])


def test_same_size_other_mtime_is_read_on_the_client(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    image = kernel_tree(tmp_path / "image", debian_like(mods=MODS))
    root = tmp_path / "sysroot"
    shutil.copytree(image, root)
    os.utime(root / f"boot/initrd.img-{KVER}", (1_700_000_001, 1_700_000_001))
    _, read_here = run_initrd_phase(root, ListingServer(list_tree(image)), monkeypatch)
    assert read_here == [f"initrd.img-{KVER}"]


@pytest.mark.parametrize("initrds", [None, {f"boot/initrd.img-{KVER}": {"size": 1}},
                                     {f"boot/initrd.img-{KVER}": "nonsense"}])
def test_no_usable_listing_means_reading_it_here(tmp_path: Path, initrds: Any,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    root = kernel_tree(tmp_path / "sysroot", debian_like(mods=MODS))
    if initrds is not None:
        size = (root / f"boot/initrd.img-{KVER}").stat().st_size
        initrds = {k: ({**v, "size": size, "mtime": 1_700_000_000} if isinstance(v, dict)
                       else v) for k, v in initrds.items()}
    ev, read_here = run_initrd_phase(root, ListingServer(initrds), monkeypatch)
    assert read_here == [f"initrd.img-{KVER}"]
    assert ev["action"] == "keep"
