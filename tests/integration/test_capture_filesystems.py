"""Versions on the filesystems an image store lives on: a loop-mounted
btrfs (each version a subvolume: a snapshot of the previous one, read-only
once stored), xfs and ext4 (hard links).  Every check is made with tools
other than sysclone's own: rsync's itemized checksum dry run, the
filesystem's own usage figures, btrfs(8)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from imageserver.names import ImageRef
from imageserver.rsyncd import Rsyncd, RsyncdConfig
from imageserver.seal import NewVersion, seal
from imageserver.store import ImageStore
from imageserver.versions import Versions
from sysclone.cli import main
from sysclone.paths import StateRoot
from tests.integration.capturekit import (
    PULL_EXACT,
    capture_process,
    fingerprint,
    flip_a_byte,
    free_port,
    itemized,
    make_versioned_tree,
    sh,
)

pytestmark = pytest.mark.usefixtures("root_only")
MiB = 1 << 20
MKFS = {"btrfs": ["mkfs.btrfs", "-q"], "xfs": ["mkfs.xfs", "-q"], "ext4": ["mkfs.ext4", "-q"]}
STORAGE = {"btrfs": "btrfs-snapshot", "xfs": "hardlink", "ext4": "hardlink"}
# xfs shows root each ACL a second time, as trusted.SGI_ACL_*: a tree in an
# xfs store is compared without those (the pulled copies below have none).
NO_XFS_ACL = "--filter=-x trusted.SGI_ACL_*"


@pytest.fixture(params=["btrfs", "xfs", "ext4"])
def fs(request: pytest.FixtureRequest, tmp_path: Path, state: StateRoot) -> Iterator[str]:
    """The store's images directory on a 1 GiB loop-mounted filesystem."""
    backing = tmp_path / f"{request.param}.img"
    with backing.open("wb") as f:
        f.truncate(1 << 30)
    sh(*MKFS[request.param], backing)
    state.images.mkdir(parents=True)
    sh("mount", "-o", "loop", backing, state.images)
    try:
        yield str(request.param)
    finally:
        if subprocess.run(["umount", state.images], capture_output=True).returncode != 0:
            sh("umount", "-l", state.images, check=False)


def cli(state: StateRoot, capsys: pytest.CaptureFixture[str], *argv: str
        ) -> tuple[int, str, str]:
    rc = main(["--root", str(state.root), "--cache", str(state.cache_dir), *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def used(path: Path, fs: str) -> int:
    """Bytes the filesystem holds as used, by its own account."""
    if fs == "btrfs":
        sh("btrfs", "filesystem", "sync", path)
        out = sh("btrfs", "filesystem", "usage", "-b", path)
        return int(next(line.split()[1] for line in out.splitlines()
                        if line.strip().startswith("Used:")))
    sh("sync", "-f", path)
    return int(sh("df", "-B1", "--output=used", path).splitlines()[1])


def is_readonly_subvolume(tree: Path) -> bool:
    sh("btrfs", "subvolume", "show", tree)  # fails unless it is one
    return sh("btrfs", "property", "get", "-ts", tree, "ro").strip() == "ro=true"


def subvolume_ids(top: Path) -> list[tuple[str, str]]:
    """(id, path) of each subvolume (generations move when one is snapshotted)."""
    return [(line.split()[1], line.split(" path ", 1)[1])
            for line in sh("btrfs", "subvolume", "list", top).splitlines()]


def test_versions_on_each_filesystem(fs, tmp_path, state, capsys):
    src = tmp_path / "src"
    make_versioned_tree(src)
    (src / "goes-away").write_text("only in version 1\n")
    (src / "excluded-later").write_text("left out of version 2 by --exclude\n")
    (src / "linked-a").write_bytes(b"a" * 9000)
    os.link(src / "linked-a", src / "linked-b")
    with (src / "sparse").open("wb") as f:  # data, then a hole
        f.write(os.urandom(256 * 1024))
        f.truncate(4 * MiB)
    v1_copy = tmp_path / "v1-source"
    sh("cp", "-a", src, v1_copy)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    one = used(state.images, fs)
    # 1 MiB of new content, a new file, a deleted one, a new mode, a new
    # xattr value, and a path the second capture excludes.
    (src / "blobs/b03").write_bytes(os.urandom(MiB))
    (src / "added").write_text("new in version 2\n")
    (src / "goes-away").unlink()
    os.chmod(src / "plain", 0o600)
    os.setxattr(src / "xattr", "user.comment", b"changed on the client")
    # The hard-link group split on the client, both halves changed (an
    # in-place update must not write one's content through to the other).
    (src / "linked-b").unlink()
    (src / "linked-b").write_bytes(b"b" * 9000)
    with (src / "linked-a").open("r+b") as f:
        f.write(b"A" * 9000)
    with (src / "sparse").open("r+b") as f:  # the data becomes a hole, the hole data
        f.truncate(0)
        f.truncate(4 * MiB)
        f.seek(2 * MiB)
        f.write(os.urandom(256 * 1024))
    rc, _, err = cli(state, capsys, "image", "capture", "web", "--from", str(src),
                     "--exclude", "/excluded-later")
    assert rc == 0, err
    two = used(state.images, fs)
    assert 0 < two - one < 3 * MiB, (one, two)  # the changed data, not a second copy

    store = ImageStore(state)
    t1, t2 = store.tree(ImageRef("web", 1)), store.tree(ImageRef("web", 2))
    assert itemized(v1_copy, t1, NO_XFS_ACL) == []
    assert itemized(src, t2, NO_XFS_ACL, "--exclude=/excluded-later") == []
    assert not (t2 / "excluded-later").exists() and not (t2 / "goes-away").exists()
    assert cli(state, capsys, "image", "verify", "web@1")[0] == 0
    assert cli(state, capsys, "image", "verify", "web@2")[0] == 0
    rc, out, _ = cli(state, capsys, "image", "versions", "web")
    assert out.splitlines()[0].split()[-1] == "STORAGE"
    assert [line.split()[-1] for line in out.splitlines()[1:]] == [STORAGE[fs]] * 2
    rc, out, _ = cli(state, capsys, "image", "list")
    assert out.splitlines()[1].split()[-1] == STORAGE[fs]
    if fs == "btrfs":
        assert is_readonly_subvolume(t1) and is_readonly_subvolume(t2)
        with pytest.raises(OSError):
            (t1 / "plain").write_text("a stored version never changes")

    rsyncd = Rsyncd(state, RsyncdConfig(port=free_port()))
    rsyncd.start()
    try:
        got = tmp_path / "got"
        # Times to the nanosecond (PULL_EXACT), as the comparison reads them.
        sh("rsync", *PULL_EXACT, f"rsync://127.0.0.1:{rsyncd.cfg.port}/web@1/", f"{got}/")
        assert itemized(v1_copy, got) == []
        assert cli(state, capsys, "image", "rollback", "web", "1")[0] == 0
        sh("rsync", *PULL_EXACT, "--delete", f"rsync://127.0.0.1:{rsyncd.cfg.port}/web/",
           f"{got}/")
        assert itemized(v1_copy, got) == []
    finally:
        rsyncd.stop()

    # Copy and rename keep the version whole; a third capture (from version
    # 1, the current one) stores the client as it is now.
    assert cli(state, capsys, "image", "copy", "web@2", "other")[0] == 0
    assert cli(state, capsys, "image", "rename", "other", "third")[0] == 0
    assert itemized(src, store.tree(ImageRef("third")), NO_XFS_ACL,
                    "--exclude=/excluded-later") == []
    assert cli(state, capsys, "image", "verify", "third")[0] == 0
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    assert itemized(src, store.tree(ImageRef("web", 3)), NO_XFS_ACL) == []
    assert cli(state, capsys, "image", "verify", "web@3")[0] == 0

    before = used(state.images, fs)
    assert cli(state, capsys, "image", "rollback", "web", "2")[0] == 0
    rc, _, err = cli(state, capsys, "image", "prune", "web", "--keep", "1")
    assert rc == 0 and "removed version(s) 1" in err
    assert store.versions.numbers("web") == [2, 3]
    assert used(state.images, fs) < before
    assert cli(state, capsys, "image", "verify", "web@2")[0] == 0
    if fs == "btrfs":
        subvolumes = sh("btrfs", "subvolume", "list", "-o", state.images)
        assert ".versions/web/1/" not in subvolumes and ".versions/web/2/tree" in subvolumes
    assert cli(state, capsys, "image", "delete", "third")[0] == 0
    assert cli(state, capsys, "image", "delete", "web")[0] == 0
    if fs == "btrfs":
        assert sh("btrfs", "subvolume", "list", "-o", state.images).strip() == ""


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_interrupted_capture_on_a_snapshot_leaves_no_trace(fs, tmp_path, state, capsys):
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("golden\n")
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    (src / "incoming").mkdir()
    for i in range(300):
        (src / f"incoming/f{i:03}").write_bytes(os.urandom(MiB))
    before = fingerprint(state.images)
    subvolumes = subvolume_ids(state.images)
    proc = capture_process(state.root, "web", src)
    deadline = time.monotonic() + 30
    news: list[Path] = []
    while time.monotonic() < deadline and not news:  # once the snapshot is being filled
        news = list((state.images / ".versions/web").glob(".new-*/tree/incoming/*"))
        time.sleep(0.01)
    assert news, "the capture never started copying"
    proc.send_signal(signal.SIGINT)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "nothing was stored, the image store is unchanged" in err
    assert fingerprint(state.images) == before
    assert subvolume_ids(state.images) == subvolumes
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    assert ImageStore(state).versions.numbers("web") == [1, 2]
    # (/etc/machine-id is stored empty: each clone makes its own)
    assert itemized(src, ImageStore(state).tree(ImageRef("web")),
                    "--exclude=/etc/machine-id") == []


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_verify_catches_a_snapshot_made_writable_and_edited(fs, tmp_path, state, capsys):
    src = tmp_path / "src"
    make_versioned_tree(src)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    tree = ImageStore(state).tree(ImageRef("web"))
    sh("btrfs", "property", "set", "-ts", tree, "ro", "false")
    rc, out, err = cli(state, capsys, "image", "verify", "web")
    assert rc == 1 and "writable now" in out, (out, err)
    # A flipped byte, its mtime put back: only the content hash can tell.
    flip_a_byte(tree / "blobs/b05")
    sh("btrfs", "property", "set", "-ts", tree, "ro", "true")  # and the flag put back
    rc, out, _ = cli(state, capsys, "image", "verify", "web")
    assert rc == 1
    assert out.splitlines() == ["changed  /blobs/b05  (content)"]


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_a_tree_made_another_way_shares_data_by_reflinks(fs, state):
    """A bootstrap or any tree not snapshotted from its parent: identical
    files take the parent's extents (btrfs filesystem du says shared)."""
    v = Versions(state)
    blobs = {f"usr/b{i}": os.urandom(MiB) for i in range(8)}

    def version(files: dict[str, bytes]) -> int:
        with v.lock("web"), v.stage("web") as s:
            for rel, data in files.items():
                (s.tree / rel).parent.mkdir(parents=True, exist_ok=True)
                (s.tree / rel).write_bytes(data)
                os.utime(s.tree / rel, ns=(10**18, 10**18))
            return seal(v, s, NewVersion("test", dedupe=True)).version

    assert version(blobs) == 1
    assert version({**blobs, "usr/b0": os.urandom(MiB)}) == 2
    sh("btrfs", "filesystem", "sync", v.vdir("web"))
    out = sh("btrfs", "filesystem", "du", "-s", "--raw", v.vdir("web")).splitlines()[1]
    total, exclusive, shared = (int(x) for x in out.split()[:3])
    assert total >= 16 * MiB and shared >= 7 * MiB and exclusive + shared < 10 * MiB, out
    assert v.info("web", 2).storage == "btrfs-snapshot"
    assert main(["--root", str(state.root), "image", "verify", "web@2"]) == 0


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_capturing_an_unchanged_client_again_costs_only_its_records(fs, tmp_path, state, capsys):
    """The snapshot is filled without atime updates: reading its symlinks
    and directories must not rewrite their (shared) inodes."""
    src = tmp_path / "src"
    for d in range(100):
        (src / f"d{d:02}").mkdir(parents=True)
        for i in range(30):
            (src / f"d{d:02}/l{i:02}").symlink_to(f"target-{d}-{i}")
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    # Version 1 captured two days ago, as far as atimes go: relatime then
    # updates the atime of anything read.
    tree = state.images / ".versions/web/1/tree"
    sh("btrfs", "property", "set", "-ts", tree, "ro", "false")
    sh("find", tree, "-exec", "touch", "-h", "-a", "-d", "2 days ago", "{}", "+")
    sh("btrfs", "property", "set", "-ts", tree, "ro", "true")
    before = used(state.images, fs)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    records = sum(p.lstat().st_blocks * 512
                  for p in (state.images / ".versions/web/2").iterdir() if p.name != "tree")
    grown = used(state.images, fs) - before
    assert grown < records + 256 * 1024, (grown, records)


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_chroot_makes_a_snapshot_version(fs, tmp_path, state, capsys):
    from tests.integration.test_capture_chroot import tiny_system

    def mounts_below() -> list[str]:
        return [t for t in sh("findmnt", "-rn", "-o", "TARGET").splitlines()
                if t.startswith(f"{state.images}/")]

    assert cli(state, capsys, "image", "capture", "tiny", "--from",
               str(tiny_system(tmp_path / "t")))[0] == 0
    rc, _, err = cli(state, capsys, "image", "chroot", "tiny", "--", "/bin/sh", "-c",
                     "test -r /proc/self/status && echo installed > /etc/motd")
    assert rc == 0 and "version 2: 2 path(s) changed" in err, err
    store = ImageStore(state)
    t1, t2 = store.tree(ImageRef("tiny", 1)), store.tree(ImageRef("tiny", 2))
    assert (t2 / "etc/motd").read_text() == "installed\n" and not (t1 / "etc/motd").exists()
    assert is_readonly_subvolume(t2) and mounts_below() == []
    assert cli(state, capsys, "image", "verify", "tiny@1")[0] == 0
    assert cli(state, capsys, "image", "verify", "tiny@2")[0] == 0
    subvolumes = subvolume_ids(state.images)
    rc, _, err = cli(state, capsys, "image", "chroot", "tiny", "--", "/bin/sh", "-c",
                     "echo half-done > /etc/motd; exit 3")
    assert rc == 1 and "nothing was stored" in err
    assert subvolume_ids(state.images) == subvolumes and mounts_below() == []
    assert not list((state.images / ".versions/tiny").glob(".new-*"))


@pytest.mark.parametrize("fs", ["btrfs"], indirect=True)
def test_hardlink_versions_on_btrfs_are_carried_on_as_snapshots(fs, tmp_path, state, capsys,
                                                                 monkeypatch):
    """A store that was on btrfs before snapshots (plain version trees): the
    next version is a subvolume filled by a reflinked copy of the last one,
    and both keep verifying."""
    from imageserver import snapshots

    src = tmp_path / "src"
    make_versioned_tree(src)
    with monkeypatch.context() as m:
        m.setattr(snapshots, "mode_for", lambda path: snapshots.HARDLINK)
        assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    (src / "blobs/b07").write_bytes(os.urandom(MiB))
    before = used(state.images, fs)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    assert used(state.images, fs) - before < 8 * MiB  # data shared, metadata copied once
    store = ImageStore(state)
    assert [store.versions.info("web", n).storage for n in (1, 2)] == [
        "hardlink", "btrfs-snapshot"]
    assert is_readonly_subvolume(store.tree(ImageRef("web", 2)))
    assert itemized(src, store.tree(ImageRef("web", 2))) == []
    assert cli(state, capsys, "image", "verify", "web@1")[0] == 0
    assert cli(state, capsys, "image", "verify", "web@2")[0] == 0
    rc, out, _ = cli(state, capsys, "image", "list")
    assert rc == 0 and out.splitlines()[1].split()[-1] == "btrfs-snapshot"
    assert cli(state, capsys, "image", "prune", "web", "--keep", "1")[0] == 0
    assert store.versions.numbers("web") == [2]


def test_a_full_btrfs_store_leaves_no_half_made_snapshot(tmp_path, state, capsys):
    backing = tmp_path / "small.img"
    with backing.open("wb") as f:
        f.truncate(160 * MiB)
    sh("mkfs.btrfs", "-q", backing)
    state.images.mkdir(parents=True)
    sh("mount", "-o", "loop", backing, state.images)
    try:
        src = tmp_path / "src"
        src.mkdir()
        (src / "f").write_bytes(os.urandom(MiB))
        assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
        for i in range(200):
            (src / f"g{i:03}").write_bytes(os.urandom(MiB))
        before = fingerprint(state.images)
        subvolumes = subvolume_ids(state.images)
        rc, _, err = cli(state, capsys, "image", "capture", "web", "--from", str(src))
        assert rc == 1 and "the image store's filesystem is full; nothing was stored" in err, err
        assert fingerprint(state.images) == before
        assert subvolume_ids(state.images) == subvolumes
        assert ImageStore(state).versions.numbers("web") == [1]
    finally:
        sh("umount", state.images)
