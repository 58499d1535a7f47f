"""Bad input and bad luck: each a clear one-line error, and the image store
exactly as it was (its whole listing hashed before and after).  A wrong
rsync secret is in test_capture_transfer.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imageserver.store import ImageStore
from sysclone.cli import main
from sysclone.paths import StateRoot
from tests.integration.capturekit import (
    REPO,
    capture_process,
    fingerprint,
    free_port,
    golden_client,
    sh,
    sshd,
)

pytestmark = pytest.mark.usefixtures("root_only")


def error(state: StateRoot, capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run a command that must fail; its one line of error."""
    rc = main(["--root", str(state.root), "--cache", str(state.cache_dir), *argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("==> ")]
    assert rc == 1, err
    assert len(lines) == 1 and lines[0].startswith("sysclone: error: "), err
    return lines[0]


@pytest.fixture
def stored(tmp_path: Path, state: StateRoot, capsys: pytest.CaptureFixture[str]) -> Path:
    """A store with one image in it, and a source to capture again."""
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("golden\n")
    (src / "data").write_bytes(os.urandom(1 << 16))
    assert main(["--root", str(state.root), "image", "capture", "web", "--from", str(src)]) == 0
    capsys.readouterr()
    return src


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "-rf", "@1", "web@2", "", "a b"])
def test_bad_image_names(name, state, stored, capsys):
    before = fingerprint(state.images)
    # After "--": a name starting with "-" reaches sysclone, not argparse.
    line = error(state, capsys, "image", "capture", "--from", str(stored), "--", name)
    assert line.startswith(f"sysclone: error: image name {name!r} is not valid")
    assert fingerprint(state.images) == before


def test_unreachable_host(state, stored, capsys):
    before = fingerprint(state.images)
    line = error(state, capsys, "image", "capture", "web", "--from",
                 f"ssh://root@127.0.0.1:{free_port()}", "--ssh-option", "ConnectTimeout=5")
    assert "the golden client refused the connection; nothing was stored" in line
    assert fingerprint(state.images) == before


def test_ssh_login_refused(tmp_path, state, stored, capsys):
    with golden_client(tmp_path / "g") as g, sshd(g, tmp_path / "keys") as s:
        before = fingerprint(state.images)
        line = error(state, capsys, "image", "capture", "web", "--from",
                     f"ssh://root@127.0.0.1:{s.port}", "--ssh-key", str(s.other_key),
                     "--ssh-option", "StrictHostKeyChecking=no",
                     "--ssh-option", "UserKnownHostsFile=/dev/null")
        assert "SSH refused the login" in line and "--ssh-key" in line
        assert fingerprint(state.images) == before


@pytest.mark.parametrize(("rules", "says"), [
    ("- /ok\n-nospace\n", ":2: '-nospace' does not parse"),
    ("merge /etc/other\n", ":1: 'merge /etc/other': only include and exclude rules"),
    ("- /var/[log\n", ":1: pattern '/var/[log' has a '[' without its ']'"),
    ("+ \n", ":1: empty pattern"),
])
def test_exclude_file_that_does_not_parse(rules, says, tmp_path, state, stored, capsys):
    bad = tmp_path / "bad.exclude"
    bad.write_text(rules)
    before = fingerprint(state.images)
    line = error(state, capsys, "image", "capture", "web", "--from", str(stored),
                 "--exclude-from", str(bad))
    assert f"{bad}{says}" in line
    assert fingerprint(state.images) == before


def test_store_filesystem_too_small(tmp_path, state, capsys):
    """The images directory on a 24 MiB ext4: a first image fits, a second
    does not; the failed one leaves no trace."""
    img = tmp_path / "small.img"
    with img.open("wb") as f:
        f.truncate(24 << 20)
    sh("mkfs.ext4", "-q", img)
    state.images.mkdir(parents=True)
    sh("mount", "-o", "loop", img, state.images)
    try:
        small = tmp_path / "small"
        small.mkdir()
        (small / "f").write_bytes(os.urandom(1 << 20))
        assert main(["--root", str(state.root), "image", "capture", "small", "--from",
                     str(small)]) == 0
        big = tmp_path / "big"
        big.mkdir()
        for i in range(40):
            (big / f"f{i}").write_bytes(os.urandom(1 << 20))
        capsys.readouterr()
        before = fingerprint(state.images)
        line = error(state, capsys, "image", "capture", "big", "--from", str(big))
        assert "the image store's filesystem is full; nothing was stored" in line
        assert fingerprint(state.images) == before
        assert ImageStore(state).names() == ["small"]
    finally:
        sh("umount", state.images)


def _processes_in(root: Path, pattern: str) -> list[int]:
    """The processes running chrooted in `root` whose command line holds
    `pattern` (never one of this machine's own)."""
    found = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.readlink(d / "root") != str(root):
                continue
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if pattern in cmd:
            found.append(int(d.name))
    return found


def test_a_connection_lost_mid_capture_leaves_the_store_as_it_was(tmp_path, state, stored):
    """The golden client goes away while its tree is copied (its rsync and
    SSH session killed, as by a crash or a cable pulled): one line saying
    so, the store exactly as before, the next capture starts cleanly."""
    with golden_client(tmp_path / "g") as g, sshd(g, tmp_path / "keys") as s:
        for i in range(200):
            (g.data / f"big{i:03}").write_bytes(os.urandom(1 << 20))
        before = fingerprint(state.images)
        staging = state.images / ".versions/web"
        proc = subprocess.Popen(
            [sys.executable, "-m", "sysclone.cli", "--root", str(state.root), "image",
             "capture", "web", *s.source_args()],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(staging.glob(".new-*/tree/data/big*")):
            time.sleep(0.01)
        assert list(staging.glob(".new-*/tree/data/big*")), "the copy never began"
        victims = _processes_in(g.root, "rsync --server --sender")
        assert victims
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        _out, err = proc.communicate(timeout=120)
        lines = [line for line in err.splitlines() if not line.startswith("==> ")]
        assert proc.returncode == 1, err
        assert len(lines) == 1, err
        assert "the connection to the golden client failed or was lost" in lines[0]
        assert "nothing was stored" in lines[0]
        assert fingerprint(state.images) == before
        assert main(["--root", str(state.root), "image", "capture", "web",
                     *s.source_args()]) == 0
        assert ImageStore(state).versions.numbers("web") == [1, 2]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_capture_leaves_no_trace(sig, tmp_path, state, stored, capsys):
    big = tmp_path / "big"
    big.mkdir()
    for i in range(300):
        (big / f"f{i:03}").write_bytes(os.urandom(1 << 20))
    before = fingerprint(state.images)
    staging = state.images / ".versions/web"
    proc = capture_process(state.root, "web", big)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # interrupt once the copy has begun
        news = list(staging.glob(".new-*/tree/f*"))
        if news:
            break
        time.sleep(0.01)
    assert news, "the capture never started copying"
    proc.send_signal(sig)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "capture of web interrupted: nothing was stored, the image store is unchanged" in err
    assert [line for line in err.splitlines() if not line.startswith("==> ")] == [
        "sysclone: capture of web interrupted: nothing was stored, the image store is unchanged"]
    assert fingerprint(state.images) == before
    # The next capture starts cleanly.
    assert main(["--root", str(state.root), "image", "capture", "web", "--from", str(big)]) == 0
    assert ImageStore(state).versions.numbers("web") == [1, 2]


def test_a_capture_of_nothing_is_refused(tmp_path, state, stored, capsys):
    """An --exclude-from that leaves everything out used to be stored and
    made current, silently."""
    before = fingerprint(state.images)
    everything = tmp_path / "everything"
    everything.write_text("- *\n")
    line = error(state, capsys, "image", "capture", "web", "--from", str(stored),
                 "--exclude-from", str(everything))
    assert "nothing was captured" in line and "--exclude-from" in line
    assert fingerprint(state.images) == before


def test_the_state_root_as_source_leaves_the_store_out(state, stored, capsys):
    """`image capture self --from $SYSCLONE_ROOT` used to capture the store,
    its own staging directory included."""
    (state.root / "notes.txt").write_text("the admin's own file\n")
    assert main(["--root", str(state.root), "--cache", str(state.cache_dir), "image",
                 "capture", "self", "--from", str(state.root)]) == 0
    tree = ImageStore(state).path("self")
    assert (tree / "notes.txt").read_text() == "the admin's own file\n"
    assert (tree / "images").is_dir() and not any((tree / "images").iterdir())
    assert not (tree / "run").exists() or not any((tree / "run").iterdir())


def test_the_image_store_as_source_is_refused(state, stored, capsys):
    before = fingerprint(state.images)
    line = error(state, capsys, "image", "capture", "self", "--from", str(state.images))
    assert "sysclone's own image store" in line
    assert fingerprint(state.images) == before
