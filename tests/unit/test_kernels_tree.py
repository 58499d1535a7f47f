"""KernelTree: kernel.json round trip, loading errors, listing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kernels.tree import (
    KernelPackage,
    KernelSource,
    KernelTree,
    find,
    list_kernels,
    load,
    newest,
    newest_of_flavor,
)
from sysclone.errors import ConfigError

KVER = "6.1.0-50-cloud-amd64"


def make_tree(root: Path, flavor: str = "cloud-amd64", kver: str = KVER) -> KernelTree:
    path = root / f"{flavor}-{kver}"
    (path / "lib" / "modules" / kver).mkdir(parents=True)
    (path / "vmlinuz").write_bytes(b"bzImage")
    tree = KernelTree(
        path=path,
        flavor=flavor,
        kver=kver,
        arch="amd64",
        package=KernelPackage(f"linux-image-{kver}", "6.1.176-1", "a" * 64,
                              "pool/main/l/x.deb", f"linux-image-{flavor}"),
        source=KernelSource("http://deb.debian.org/debian", "bookworm", "bookworm"),
    )
    tree.write()
    return tree


def test_round_trip_and_paths(tmp_path):
    tree = make_tree(tmp_path)
    assert load(tree.path) == tree
    assert load(tree.path / "kernel.json") == tree
    assert tree.vmlinuz == tree.path / "vmlinuz"
    assert tree.modules_dir == tree.path / "lib" / "modules" / KVER
    assert tree.config is None and tree.system_map is None
    (tree.path / "config").write_text("CONFIG_X=y\n")
    assert tree.config == tree.path / "config"


def test_tree_can_be_moved(tmp_path):
    tree = make_tree(tmp_path / "a")
    moved = tmp_path / "b"
    tree.path.rename(moved)
    assert load(moved).vmlinuz == moved / "vmlinuz"


def test_kernel_json_is_stable_and_relative(tmp_path):
    data = json.loads((make_tree(tmp_path).path / "kernel.json").read_text())
    assert data == {
        "format": 2,
        "origin": "debian",
        "flavor": "cloud-amd64",
        "kver": KVER,
        "arch": "amd64",
        "vmlinuz": "vmlinuz",
        "modules_dir": f"lib/modules/{KVER}",
        "package": {"name": f"linux-image-{KVER}", "version": "6.1.176-1", "sha256": "a" * 64,
                    "filename": "pool/main/l/x.deb", "metapackage": "linux-image-cloud-amd64"},
        "source": {"mirror": "http://deb.debian.org/debian", "suite": "bookworm",
                   "codename": "bookworm"},
        "image": "", "host": "", "modules": 0, "firmware": 0, "firmware_packages": [],
    }


def test_format_1_trees_still_load(tmp_path):
    tree = make_tree(tmp_path)
    file = tree.path / "kernel.json"
    data = json.loads(file.read_text())
    for key in ("origin", "image", "host", "modules", "firmware", "firmware_packages"):
        del data[key]
    file.write_text(json.dumps({**data, "format": 1}))
    assert load(tree.path) == tree


def test_an_image_kernel_has_no_package(tmp_path):
    path = tmp_path / "golden"
    path.mkdir()
    tree = KernelTree(path=path, kver="6.1.0-9-amd64", arch="amd64", origin="image",
                      image="web@3", modules=4000, firmware=12)
    tree.write()
    assert load(path) == tree
    assert tree.describe_source() == "image web@3" and tree.name == "golden"


def test_newest_is_debian_version_order():
    assert newest(["6.1.0-9-amd64", "6.1.0-10-amd64", "6.1.0-2-amd64"]) == "6.1.0-10-amd64"
    assert newest(["5.10.0-28-amd64", "6.1.0-9-amd64"]) == "6.1.0-9-amd64"
    # Not a Debian version at all: ordered below the real ones, no error.
    assert newest(["my_kernel!", "6.1.0-1-amd64"]) == "6.1.0-1-amd64"


def test_newest_of_flavor_and_find(tmp_path):
    root = tmp_path / "kernels"
    old = make_tree(root, "amd64", "6.1.0-9-amd64")
    new = make_tree(root, "amd64", "6.1.0-10-amd64")
    make_tree(root, "cloud-amd64", "6.1.0-11-cloud-amd64")
    assert newest_of_flavor(root, "amd64") == new != old
    assert newest_of_flavor(root, "rt-amd64") is None
    assert find(root, new.name) == new
    assert find(root, str(old.path)) == old
    with pytest.raises(ConfigError, match="no kernel named 'nope'") as e:
        find(root, "nope")
    assert "amd64-6.1.0-10-amd64" in (e.value.hint or "")


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("kver"), "expected a non-empty string for 'kver'"),
    (lambda d: d.update(format=3), "format 1 or 2"),
    (lambda d: d.update(package="x"), "a 'package' object"),
    (lambda d: d.update(package=None), "a 'package' object"),
    (lambda d: d.update(origin="ftp"), "unknown origin"),
    (lambda d: d["source"].pop("mirror"), "'mirror'"),
    (lambda d: d.update(kver="../../etc"), "is not a kernel version"),
])
def test_load_errors_name_the_file(tmp_path, edit, message):
    tree = make_tree(tmp_path)
    file = tree.path / "kernel.json"
    data = json.loads(file.read_text())
    edit(data)
    file.write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=message) as e:
        load(tree.path)
    assert e.value.message.startswith(str(file))


def test_load_missing_and_garbage(tmp_path):
    with pytest.raises(ConfigError, match="not a kernel tree"):
        load(tmp_path)
    (tmp_path / "kernel.json").write_text("{")
    with pytest.raises(ConfigError, match="cannot read it"):
        load(tmp_path)


def test_list_kernels_skips_unfinished_and_broken_trees(tmp_path, caplog):
    root = tmp_path / "kernels"
    b = make_tree(root, "cloud-amd64", "6.1.0-50-cloud-amd64")
    a = make_tree(root, "amd64", "6.1.0-50-amd64")
    (root / ".fetch-cloud-amd64-x").mkdir()
    (root / "notes").mkdir()
    broken = root / "rt-amd64-1"
    broken.mkdir()
    (broken / "kernel.json").write_text("[]")
    assert list_kernels(root) == [a, b]
    assert "skipping" in caplog.text and "rt-amd64-1" in caplog.text
    assert list_kernels(tmp_path / "none") == []
