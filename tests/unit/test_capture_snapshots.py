"""Versions as btrfs snapshots, as far as can be seen without btrfs: which
commands the store runs and when, how rsync is told to update a snapshot,
and when a file's hash is trusted from the version it was snapshotted from.
The real thing is in tests/integration/test_capture_filesystems.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from imageserver import snapshots
from imageserver.manifest import Entry
from imageserver.seal import NewVersion, _reuse, seal
from imageserver.sources import parse_source
from imageserver.transfer import endpoint, pull_argv, unshare_hard_links
from imageserver.versions import Versions
from sysclone.paths import StateRoot
from tests.conftest import FakeCommands, FakeResult


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "cache")


@pytest.fixture
def btrfs(monkeypatch: pytest.MonkeyPatch, fake_commands: FakeCommands) -> FakeCommands:
    """The store on "btrfs": subvolumes are directories, snapshots copies."""
    monkeypatch.setattr(snapshots, "fs_magic", lambda path: snapshots.BTRFS_MAGIC)
    monkeypatch.setattr(snapshots, "is_subvolume", lambda path: Path(path).is_dir())
    monkeypatch.setattr(snapshots, "_mounted", lambda path: False)

    def create(argv: list[str]) -> FakeResult:
        Path(argv[-1]).mkdir()
        return FakeResult()

    def snapshot(argv: list[str]) -> FakeResult:
        shutil.copytree(argv[-2], argv[-1], symlinks=True)
        return FakeResult()

    fake_commands.add(["btrfs", "subvolume", "create"], create)
    fake_commands.add(["btrfs", "subvolume", "snapshot"], snapshot)
    fake_commands.add(["btrfs", "property", "set"])
    fake_commands.add(["mount"])
    return fake_commands


def test_pull_into_a_snapshot_deletes_what_the_client_no_longer_has(tmp_path):
    src = parse_source("root@golden")
    argv = pull_argv(endpoint(src), tmp_path / "tree", tmp_path / "excludes", update=True)
    assert "--delete" in argv and "--delete-excluded" in argv  # equal to a fresh capture
    assert "--inplace" in argv and not any(a.startswith("--link-dest") for a in argv)
    plain = pull_argv(endpoint(src), tmp_path / "tree", tmp_path / "excludes", [tmp_path / "old"])
    assert "--delete" not in plain and f"--link-dest={tmp_path / 'old'}" in plain
    # xfs's second copy of each ACL never travels
    assert "--filter=-x trusted.SGI_ACL_*" in argv and "--filter=-x trusted.SGI_ACL_*" in plain


def test_versions_on_btrfs_are_snapshots_filled_without_atime_and_frozen(state, btrfs):
    v = Versions(state)
    for text in ("one\n", "two\n"):
        with v.lock("web"), v.stage("web", from_parent=True) as s:
            (s.tree / "hostname").write_text(text)
            seal(v, s, NewVersion("test"))
    calls = [c for c in btrfs.calls if c[0] in ("btrfs", "mount")]
    vdir = state.images / ".versions/web"
    staged = [Path(c[-1]) for c in calls if c[:3] == ["btrfs", "subvolume", "create"]]
    assert len(staged) == 1 and staged[0].name == "tree"  # version 1: a new subvolume
    snap = next(c for c in calls if c[:3] == ["btrfs", "subvolume", "snapshot"])
    assert snap[-2] == str(vdir / "1/tree")  # version 2: a snapshot of version 1
    tree2 = snap[-1]
    i = calls.index(snap)
    assert calls[i + 1:i + 3] == [["mount", "--bind", tree2, tree2],
                                  ["mount", "-o", "remount,bind,noatime", tree2]]
    frozen = [c[-3] for c in calls if c[:3] == ["btrfs", "property", "set"]]
    assert [Path(f).parent.name.startswith(".new-") for f in frozen] == [True, True]
    assert [v.info("web", n).storage for n in (1, 2)] == ["btrfs-snapshot"] * 2
    assert (vdir / "2/tree/hostname").read_text() == "two\n"


def test_a_failed_snapshot_version_leaves_nothing(state, btrfs):
    v = Versions(state)
    with v.lock("web"), v.stage("web") as s:
        (s.tree / "hostname").write_text("one\n")
        seal(v, s, NewVersion("test"))
    before = sorted(p.name for p in (state.images / ".versions/web").iterdir())
    with pytest.raises(RuntimeError), v.lock("web"), v.stage("web", from_parent=True) as s:
        raise RuntimeError("rsync died")
    assert sorted(p.name for p in (state.images / ".versions/web").iterdir()) == before
    assert not any(c[:3] == ["btrfs", "property", "set"] and ".new-" in c[-3]
                   for c in btrfs.calls[-3:])


def _stat(st: os.stat_result, **changes: int) -> os.stat_result:
    fields = {k: getattr(st, k) for k in ("st_dev", "st_ino", "st_nlink", "st_size",
                                          "st_mtime_ns", "st_ctime_ns")}
    return cast(os.stat_result, SimpleNamespace(**{**fields, **changes}))


def test_a_hash_is_trusted_only_from_an_untouched_snapshot_inode(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "f").write_text("data\n")
    st = os.lstat(base / "f")
    entries = {"/f": Entry("/f", "f", 0o644, 0, 0, st.st_mtime_ns, 5, sha256="abc")}
    snap = _reuse(base, entries, snapshot=True)
    other_subvolume = st.st_dev + 1
    assert snap("/f", _stat(st, st_dev=other_subvolume)) == "abc"
    # rewritten (a new inode), or changed in place (ctime), or resized
    assert snap("/f", _stat(st, st_dev=other_subvolume, st_ino=st.st_ino + 1)) is None
    assert snap("/f", _stat(st, st_dev=other_subvolume, st_ctime_ns=st.st_ctime_ns + 1)) is None
    assert snap("/f", _stat(st, st_dev=other_subvolume, st_size=6)) is None
    # Not a snapshot of it: the same inode number elsewhere means nothing.
    assert _reuse(base, entries)("/f", _stat(st, st_dev=other_subvolume, st_nlink=2)) is None
    assert _reuse(base, entries)("/f", _stat(st, st_nlink=2)) == "abc"  # a hard link


def test_hard_link_groups_keep_their_first_path_before_an_in_place_update(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "a").write_text("shared\n")
    os.link(tmp_path / "a", tmp_path / "d/b")
    os.link(tmp_path / "a", tmp_path / "z")
    (tmp_path / "single").write_text("alone\n")
    assert unshare_hard_links(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "d", "single"]
    assert os.lstat(tmp_path / "a").st_nlink == 1
