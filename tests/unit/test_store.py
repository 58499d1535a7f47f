"""imageserver.store: image names, the per-image metadata and usage."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imageserver.store import ImageInfo, ImageStore, ImageUsage, check_name, measure
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot

KIB = 1024


def blob(p: Path, size: int) -> Path:
    """A file of `size` incompressible bytes (so all of it is allocated)."""
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(os.urandom(size))
    return p


def near(actual: int, expected: int, slack: int = 64 * KIB) -> bool:
    """Allocated sizes round up to blocks; allow for that, not more."""
    return expected <= actual <= expected + slack


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "cache")


@pytest.fixture
def store(state: StateRoot) -> ImageStore:
    state.images.mkdir(parents=True)
    return ImageStore(state)


def make_image(store: ImageStore, name: str) -> Path:
    tree = store.path(name)
    blob(tree / "etc/hostname", 10)
    blob(tree / "usr/bin/tool", 200 * KIB)
    (tree / "tmp").mkdir(parents=True)
    return tree


@pytest.mark.parametrize("name", ["debian12", "a", "web-2024.01", "rhel_9+extras", "A" * 64])
def test_valid_names(name):
    assert check_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "-dash", "a/b", "../etc",
                                  "a b", "é", "A" * 65, "name\n"])
def test_invalid_names(name):
    with pytest.raises(ConfigError, match="is not valid") as e:
        check_name(name)
    assert e.value.hint and "at most 64" in e.value.hint


def test_measure_counts_allocated_bytes_by_directory(tmp_path):
    tree = tmp_path / "img"
    blob(tree / "usr/bin/a", 300 * KIB)
    blob(tree / "usr/lib/x/y/deep", 100 * KIB)
    blob(tree / "var/lib/db", 50 * KIB)
    (tree / "bin").parent.mkdir(parents=True, exist_ok=True)
    (tree / "bin").symlink_to("usr/bin")
    u = measure(tree)
    assert u.files == 4  # three files and a symlink
    assert u.by_dir["/"] == u.bytes
    assert near(u.by_dir["/usr"], 400 * KIB)
    assert near(u.by_dir["/usr/bin"], 300 * KIB)
    assert near(u.by_dir["/usr/lib"], 100 * KIB)
    assert near(u.by_dir["/usr/lib/x"], 100 * KIB)
    assert near(u.by_dir["/var/lib"], 50 * KIB)
    # depth 3 at most: /usr/lib/x is the deepest key
    assert "/usr/lib/x/y" not in u.by_dir
    assert max(k.count("/") for k in u.by_dir) == 3
    assert near(u.bytes, 450 * KIB, slack=128 * KIB)
    assert list(u.by_dir) == sorted(u.by_dir)


def test_measure_depth_is_a_parameter(tmp_path):
    blob(tmp_path / "img/usr/lib/x/f", 10 * KIB)
    assert set(measure(tmp_path / "img", depth=1).by_dir) == {"/", "/usr"}
    assert set(measure(tmp_path / "img", depth=0).by_dir) == {"/"}


def test_measure_keeps_dot_directories_names(tmp_path):
    """/.snapshots (snapper) must not be reported as /snapshots."""
    blob(tmp_path / "img/.snapshots/1/f", 100 * KIB)
    blob(tmp_path / "img/..odd/f", 10 * KIB)
    u = measure(tmp_path / "img")
    assert near(u.by_dir["/.snapshots"], 100 * KIB)
    assert near(u.by_dir["/.snapshots/1"], 100 * KIB)
    assert "/..odd" in u.by_dir
    assert "/snapshots" not in u.by_dir and "/odd" not in u.by_dir


def test_measure_counts_hard_links_once(tmp_path):
    tree = tmp_path / "img"
    f = blob(tree / "usr/bin/python3.11", 500 * KIB)
    before = measure(tree)
    os.link(f, tree / "usr/bin/python3")
    after = measure(tree)
    assert after.bytes == before.bytes
    assert after.files == before.files + 1


def test_measure_sparse_file_is_not_its_length(tmp_path):
    tree = tmp_path / "img"
    tree.mkdir()
    with (tree / "sparse").open("wb") as f:
        f.truncate(1 << 30)
    assert measure(tree).bytes < 1 << 20


def test_measure_transfer_size_is_what_rsync_counts(tmp_path):
    """File lengths (sparse ones in full), hard links once, no directories."""
    tree = tmp_path / "img"
    f = blob(tree / "usr/bin/tool", 300 * KIB + 7)
    os.link(f, tree / "usr/bin/tool2")
    (tree / "var/lib").mkdir(parents=True)
    with (tree / "var/lib/sparse").open("wb") as sp:
        sp.truncate(1 << 30)
    (tree / "link").symlink_to("usr/bin/tool")
    assert measure(tree).transfer == 300 * KIB + 7 + (1 << 30)


def test_image_info_json_round_trip():
    info = ImageInfo("deb", 1700000000.5, "bootstrap", {"suite": "bookworm"},
                     ImageUsage(1234, 5, {"/": 1234, "/usr": 1000}))
    assert ImageInfo.from_json(info.to_json()) == info
    d = json.loads(info.to_json())
    assert d["usage"]["by_dir"] == {"/": 1234, "/usr": 1000}
    bare = ImageInfo("x", 1.0, "capture")
    assert ImageInfo.from_json(bare.to_json()) == bare


def test_store_paths_and_names(store, state):
    assert store.top == state.images
    assert store.path("deb") == state.images / "deb"
    make_image(store, "zeta")
    make_image(store, "alpha")
    (state.images / "alpha.json").write_text("{}")  # metadata, not an image
    (state.images / ".alpha.json.tmp").write_text("{}")
    (state.images / ".partial").mkdir()  # not a valid name: not listed
    (state.images / "evil\n").mkdir()  # would break rsyncd.conf
    assert store.names() == ["alpha", "zeta"]
    assert store.exists("alpha") and not store.exists("beta")
    with pytest.raises(ConfigError):
        store.path("../escape")


def test_names_when_store_does_not_exist(tmp_path):
    assert ImageStore(StateRoot(tmp_path / "nothing", tmp_path / "c")).names() == []


def test_record_and_info(store, state):
    make_image(store, "deb")
    rec = store.record("deb", origin="bootstrap", details={"suite": "bookworm"})
    meta = state.images / "deb.json"
    assert meta.is_file()
    assert not list(state.images.glob(".*.tmp"))
    assert rec.usage is not None and rec.usage.files == 2
    assert near(rec.usage.by_dir["/usr"], 200 * KIB)
    got = store.info("deb")
    assert got == rec
    assert got.details == {"suite": "bookworm"}


def test_info_without_metadata_measures_the_image(store, state):
    make_image(store, "captured")
    info = store.info("captured")
    assert info.origin == "unknown"
    assert info.usage is not None and info.usage.files == 2
    # Reading writes nothing into the store (it used to record NAME.json).
    assert not (state.images / "captured.json").exists()
    assert sorted(p.name for p in state.images.iterdir()) == ["captured"]


def test_info_unknown_image_lists_the_known_ones(store):
    make_image(store, "deb")
    make_image(store, "rhel")
    with pytest.raises(ConfigError, match="unknown image 'nope'") as e:
        store.info("nope")
    assert e.value.hint == "known images: deb, rhel"


def test_info_unknown_image_in_empty_store(store):
    with pytest.raises(ConfigError) as e:
        store.info("nope")
    assert e.value.hint == "known images: none"


def test_info_bad_name(store):
    with pytest.raises(ConfigError, match="image name 'a/b' is not valid"):
        store.info("a/b")


def test_delete(store, state):
    make_image(store, "deb")
    store.record("deb", origin="bootstrap")
    store.delete("deb")
    assert not (state.images / "deb").exists()
    assert not (state.images / "deb.json").exists()
    assert store.names() == []
    with pytest.raises(SyscloneError, match="unknown image 'deb'"):
        store.delete("deb")
