"""Which files an install fetches with rsync -S: found by the server in the
image tree (imageserver.sparsefiles), checked by the agent where they
enter (agent.planner), and sent in the install instructions.  The trees
are real: sparse files made by truncate in tmp_path."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from agent.disks import Disk, NoProbe
from agent.plan import SPARSE_MAX
from agent.planner import make_plan
from imageserver import sparsefiles
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.sparsefiles import SparseFiles, sparse_files
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

MiB = 1 << 20


def holes(path: Path, size: int = 8 * MiB, data: bytes = b"end") -> Path:
    """A sparse file: `data` at the end of `size` bytes of hole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.truncate(size - len(data))
        f.seek(size - len(data))
        f.write(data)
    return path


def image(root: Path) -> Path:
    """lastlog and a disk image with holes; a file of written zeros (dense:
    it has every block), an empty file, a small file with no block of its
    own, and a link to a sparse file."""
    holes(root / "var/log/lastlog", 292 * 1024)
    holes(root / "srv/vm/disk.raw", 64 * MiB)
    (root / "var/lib").mkdir(parents=True)
    (root / "var/lib/zeros").write_bytes(b"\0" * MiB)
    (root / "var/lib/empty").touch()
    with (root / "var/lib/tiny").open("wb") as f:
        f.truncate(100)
    os.symlink("../log/lastlog", root / "var/lib/lastlog-link")
    (root / "etc").mkdir()
    (root / "etc/hostname").write_text("golden\n")
    return root


def test_the_sparse_files_and_nothing_else(tmp_path: Path) -> None:
    tree = image(tmp_path / "img")
    assert sparse_files(tree) == SparseFiles(("srv/vm/disk.raw", "var/log/lastlog"))
    assert sparse_files(tree).instructions() == ["srv/vm/disk.raw", "var/log/lastlog"]


def test_an_image_without_any(tmp_path: Path) -> None:
    (tmp_path / "img/etc").mkdir(parents=True)
    (tmp_path / "img/etc/zeros").write_bytes(b"\0" * 65536)
    assert sparse_files(tmp_path / "img") == SparseFiles(())
    assert sparse_files(tmp_path / "img").instructions() == []


def test_a_hard_linked_sparse_file_keeps_holes_everywhere(tmp_path: Path) -> None:
    # Its two names must come in one run to stay one file: the bulk.
    tree = image(tmp_path / "img")
    os.link(tree / "srv/vm/disk.raw", tree / "srv/disk-again.raw")
    got = sparse_files(tree)
    assert got.paths == () and got.instructions() == "all"
    assert got.fallback is not None and "another name" in got.fallback
    assert "/srv/disk-again.raw" in got.fallback and "/srv/vm/disk.raw" in got.fallback


def test_links_from_other_versions_in_the_store_do_not_count(tmp_path: Path) -> None:
    tree = image(tmp_path / "v2")
    (tmp_path / "v1").mkdir()
    os.link(tree / "var/log/lastlog", tmp_path / "v1/lastlog")
    assert sparse_files(tree).paths == ("srv/vm/disk.raw", "var/log/lastlog")


@pytest.mark.parametrize("name", ["bad\nname", "with space", "disk[1].img", "-rf", "café",
                                  os.fsdecode(b"latin1-\xe9")])
def test_a_name_that_cannot_be_passed_keeps_holes_everywhere(tmp_path: Path, name: str) -> None:
    tree = image(tmp_path / "img")
    holes(tree / "srv" / name)
    got = sparse_files(tree)
    assert got.instructions() == "all"
    assert got.fallback == f"a sparse file's name cannot be passed safely: {'srv/' + name!r}"


def test_a_dense_file_with_an_odd_name_is_no_concern(tmp_path: Path) -> None:
    tree = image(tmp_path / "img")
    (tree / "srv/odd\nname").write_bytes(b"\0" * 65536)
    assert sparse_files(tree).paths == ("srv/vm/disk.raw", "var/log/lastlog")


def test_too_many_keep_holes_everywhere(tmp_path: Path) -> None:
    tree = image(tmp_path / "img")
    for i in range(3):
        holes(tree / f"srv/many/{i}", 64 * 1024)
    assert len(sparse_files(tree, limit=5).paths) == 5
    got = sparse_files(tree, limit=4)
    assert got.instructions() == "all" and got.fallback == "more than 4 sparse files"
    assert sparsefiles.sparse_files.__defaults__ == (SPARSE_MAX,)  # the agent's own cap


def test_a_stored_version_is_walked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tree = image(tmp_path / "v1")
    walks: list[Path] = []
    real = sparsefiles.sparse_files
    monkeypatch.setattr(sparsefiles, "sparse_files", lambda t: walks.append(t) or real(t))
    first = sparsefiles.sparse_of_version(tree)
    assert first.paths == ("srv/vm/disk.raw", "var/log/lastlog")
    assert sparsefiles.sparse_of_version(tree) == first and len(walks) == 1
    # The same path made anew (an image deleted and bootstrapped again).
    shutil.rmtree(tree)
    (tree / "etc").mkdir(parents=True)
    os.utime(tree, ns=(1, 1))
    assert sparsefiles.sparse_of_version(tree) == SparseFiles(()) and len(walks) == 2


def test_the_instructions_carry_them(tmp_path: Path) -> None:
    state = StateRoot.from_options(tmp_path / "state", tmp_path / "cache")
    image(state.images / "deb")
    ImageStore(state).record("deb", origin="test")
    instr = resolve(state, ClientQuery("node1", None, "deb"), ServerPolicy(rsync_port=873))
    assert instr["image"]["sparse"] == ["srv/vm/disk.raw", "var/log/lastlog"]
    os.link(state.images / "deb/var/log/lastlog", state.images / "deb/var/log/lastlog.1")
    instr = resolve(state, ClientQuery("node1", None, "deb"), ServerPolicy(rsync_port=873))
    assert instr["image"]["sparse"] == "all"
    # ... and the agent takes what the server offers.
    assert _plan(["srv/vm/disk.raw", "var/log/lastlog"]).image.sparse == (
        "srv/vm/disk.raw", "var/log/lastlog")


# -- the agent: image.sparse where it enters ---------------------------------------------------

def _plan(sparse: object, *, omit: bool = False) -> object:
    img: dict[str, object] = {"name": "demo"}
    if not omit:
        img["sparse"] = sparse
    return make_plan(instructions={"image": img}, server="10.0.0.2", hostname="n1",
                     targets=[Disk("vda", 20 << 30)], fw="bios", ram_bytes=1 << 30,
                     have_tool=lambda t: True, probe=NoProbe())


def test_the_agent_keeps_holes_everywhere_unless_told_which() -> None:
    assert _plan(None, omit=True).image.sparse is None  # type: ignore[attr-defined]  # older
    assert _plan(None).image.sparse is None  # type: ignore[attr-defined]
    assert _plan("all").image.sparse is None  # type: ignore[attr-defined]
    assert _plan([]).image.sparse == ()  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", ["/var/log/lastlog", "var/../etc/shadow", "var/log/a b",
                                 "var/log/*", "-rf", "var/log/\nx", "", 7, None])
def test_the_agent_refuses_a_path_that_could_escape(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        _plan(["var/log/lastlog", bad])
    assert e.value.message == (f"the server's instructions: image.sparse entry {bad!r} is not "
                               "a relative file path inside the image")


@pytest.mark.parametrize("bad", ["var/log/lastlog", "some", {"files": []}, 3,
                                 ["x"] * (SPARSE_MAX + 1)])
def test_the_agent_refuses_what_is_no_list(bad: object) -> None:
    with pytest.raises(ConfigError) as e:
        _plan(bad)
    assert e.value.message == ("the server's instructions: image.sparse is neither a list of "
                               f"at most {SPARSE_MAX} paths nor 'all'")
