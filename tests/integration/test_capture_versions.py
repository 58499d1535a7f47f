"""Versions for real: two captures of a slightly changed tree make two
versions that share what did not change; the first stays exported by the
rsync daemon and intact; rollback, prune, diff; verify catches a flipped
byte, a changed mode, a changed xattr and a file that appeared."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.names import ImageRef
from imageserver.rsyncd import Rsyncd, RsyncdConfig
from imageserver.store import ImageStore
from sysclone.cli import main
from sysclone.paths import StateRoot
from tests.integration.capturekit import (
    PULL_EXACT,
    flip_a_byte,
    free_port,
    itemized,
    make_versioned_tree,
    sh,
)

pytestmark = pytest.mark.usefixtures("root_only")
MiB = 1 << 20


def cli(state: StateRoot, capsys: pytest.CaptureFixture[str], *argv: str
        ) -> tuple[int, str, str]:
    rc = main(["--root", str(state.root), "--cache", str(state.cache_dir), *argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def du(path: Path) -> int:
    """Allocated bytes, each inode once (du(1), not sysclone's own count)."""
    return int(sh("du", "-s", "-B1", path).split()[0])


def pull(port: int, module: str, dest: Path) -> Path:
    shutil.rmtree(dest, ignore_errors=True)
    sh("rsync", *PULL_EXACT, f"rsync://127.0.0.1:{port}/{module}/", f"{dest}/")
    return dest


def test_versions_share_files_stay_exported_roll_back_and_prune(tmp_path, state, capsys):
    src = tmp_path / "src"
    make_versioned_tree(src)
    v1_copy = tmp_path / "v1-source"
    sh("cp", "-a", src, v1_copy)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    one = du(state.images / ".versions")
    # A 1 MiB change, a new file, a new mode.
    (src / "blobs/b03").write_bytes(os.urandom(MiB))
    (src / "added").write_text("new in version 2\n")
    os.chmod(src / "plain", 0o600)
    rc, _, err = cli(state, capsys, "image", "capture", "web", "--from", str(src))
    assert rc == 0, err
    two = du(state.images / ".versions")
    assert one > 24 * MiB
    assert two - one < 2 * MiB, (one, two)  # about the changed data, not a second copy

    rc, out, _ = cli(state, capsys, "image", "versions", "web")
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["1", "2"]
    assert "*" in out.splitlines()[2]
    # image list: two versions, their size with shared files counted once
    # (a second copy would be twice the first), the source captured from.
    rc, out, _ = cli(state, capsys, "image", "list")
    head, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    col = dict(zip(head, row, strict=False))
    assert (col["NAME"], col["VERSION"], col["VERSIONS"], col["ORIGIN"]) == \
        ("web", "2", "2", "capture")
    assert col["SOURCE"] == str(src)
    size_mib = int(row[head.index("SIZE")].replace(",", ""))
    assert 0.9 * one / MiB <= size_mib <= two / MiB + 1, (size_mib, one, two)
    rc, out, _ = cli(state, capsys, "image", "diff", "web@1", "web@2")
    assert rc == 1
    assert "changed  /blobs/b03  (content, mtime)" in out
    assert "changed  /plain  (mode)" in out
    assert "added    /added" in out

    store = ImageStore(state)
    rsyncd = Rsyncd(state, RsyncdConfig(port=free_port()))
    rsyncd.start()
    try:
        port = rsyncd.cfg.port
        # Version 1 is still exported, whole, next to the current one.
        assert itemized(v1_copy, pull(port, "web@1", tmp_path / "got1")) == []
        assert itemized(src, pull(port, "web", tmp_path / "got")) == []
        assert cli(state, capsys, "image", "verify", "web@1")[0] == 0
        # Rollback: the image's own module serves version 1 at once.
        assert cli(state, capsys, "image", "rollback", "web", "1")[0] == 0
        assert itemized(v1_copy, pull(port, "web", tmp_path / "got")) == []
        got = resolve(state, ClientQuery("n1", None, "web"), ServerPolicy(rsync_port=port))
        assert (got["image"]["version"], got["image"]["module"]) == (1, "web@1")
        # A new capture while 1 is current makes 3, from the client as it is now.
        assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
        assert store.versions.current("web") == 3
        rsyncd.refresh()
        assert itemized(src, pull(port, "web@3", tmp_path / "got3")) == []
    finally:
        rsyncd.stop()

    before = du(state.images / ".versions")
    assert cli(state, capsys, "image", "rollback", "web", "2")[0] == 0
    rc, _, err = cli(state, capsys, "image", "prune", "web", "--keep", "1")
    assert rc == 0 and "removed version(s) 1" in err  # 3 is newest, 2 is current
    assert store.versions.numbers("web") == [2, 3]
    assert du(state.images / ".versions") < before
    rc, _, err = cli(state, capsys, "image", "rollback", "web", "1")
    assert rc == 1 and "has no version 1" in err


def test_verify_names_every_difference(tmp_path, state, capsys):
    src = tmp_path / "src"
    make_versioned_tree(src)
    assert cli(state, capsys, "image", "capture", "web", "--from", str(src))[0] == 0
    assert cli(state, capsys, "image", "verify", "web")[0] == 0
    tree = ImageStore(state).tree(ImageRef("web"))
    # A flipped byte (its mtime put back: size and time would not tell), a
    # changed mode, a changed xattr, a file that appeared.
    flip_a_byte(tree / "blobs/b05")
    os.chmod(tree / "plain", 0o666)
    os.setxattr(tree / "xattr", "user.comment", b"tampered")
    (tree / "blobs/appeared").write_text("not stored by sysclone\n")
    rc, out, err = cli(state, capsys, "image", "verify", "web")
    assert rc == 1
    assert out.splitlines() == [
        "changed  /blobs  (mtime)",  # a file appeared in it
        "added    /blobs/appeared",
        "changed  /blobs/b05  (content)",
        "changed  /plain  (mode)",
        "changed  /xattr  (xattrs)",
    ]
    assert "web@1: 5 difference(s) from what was stored" in err
