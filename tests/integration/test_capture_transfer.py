"""Captures for real -- from a local directory, over SSH on loopback, and from
a `client prepare` export with its secret -- each checked against the source
by tools that are not sysclone: rsync's itemized checksum dry run, getfattr,
getfacl, find and stat."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from imageserver.prepare import SCRIPT
from imageserver.prepare.golden import FACTS
from imageserver.store import ImageStore
from sysclone.cli import main
from sysclone.paths import StateRoot
from tests.conftest import DATA
from tests.integration.capturekit import (
    PY39,
    Golden,
    device_numbers,
    fingerprint,
    free_port,
    getfacl_dump,
    getfattr_dump,
    golden_client,
    itemized,
    make_awkward_tree,
    sshd,
    stat_dump,
    wait_port,
)

pytestmark = pytest.mark.usefixtures("root_only")


def cli(state: StateRoot, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    rc = main(["--root", str(state.root), "--cache", str(state.cache_dir), *argv])
    return rc, capsys.readouterr().err


def error_line(err: str) -> str:
    """The one line of error (after the step's own header line)."""
    lines = [line for line in err.splitlines() if not line.startswith("==> ")]
    assert len(lines) == 1, err
    assert lines[0].startswith("sysclone: error: "), err
    return lines[0]


def same_tree(src: Path, image: Path) -> None:
    """Nothing lost, by four independent tools."""
    assert itemized(src, image) == []
    assert getfattr_dump(src) == getfattr_dump(image)
    assert getfacl_dump(src) == getfacl_dump(image)
    assert stat_dump(src) == stat_dump(image)


def awkward_details(src: Path, image: Path) -> None:
    """What the dumps above show only indirectly."""
    assert os.lstat(image / "sparse").st_blocks * 512 < 1 << 20  # still sparse
    assert device_numbers(image / "null-dev") == device_numbers(src / "null-dev") \
        == "character special file 1:3"
    assert device_numbers(image / "loop-dev") == "block special file 7:c8"
    a, b, c = (os.lstat(image / p) for p in ("hl/a", "hl/b", "hard-elsewhere"))
    assert a.st_ino == b.st_ino == c.st_ino
    assert os.getxattr(image / "ping", "security.capability") == \
        os.getxattr(src / "ping", "security.capability")
    assert os.lstat(image / "ns/file").st_mtime_ns == 1_234_567_890_123_456_789
    assert os.path.exists(os.fsencode(image) + b"/latin1-\xe9t\xe9-\xff\xfe")
    assert os.path.exists(os.fsencode(image) + b"/new\nline")


def test_capture_from_a_local_directory_keeps_everything(tmp_path, state, capsys):
    src = tmp_path / "src"
    make_awkward_tree(src)
    rc, err = cli(state, capsys, "image", "capture", "awk", "--from", str(src))
    assert rc == 0, err
    image = ImageStore(state).path("awk")
    same_tree(src, image)
    awkward_details(src, image)
    rc, err = cli(state, capsys, "image", "verify", "awk")
    assert rc == 0, err
    assert "all" in err and "paths match the manifest" in err


def test_a_local_capture_records_the_layout_given(tmp_path, state, capsys):
    """--layout FILE is kept with the version as layout.xml, the layout the
    installs of that image get (the lookup finds it there)."""
    from agent.storage.sixml import load_layout, to_xml

    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc/hostname").write_text("old\n")
    given = DATA / "si/disks-layout-uefi.xml"
    rc, err = cli(state, capsys, "image", "capture", "web", "--from", str(src),
                  "--layout", str(given))
    assert rc == 0, err
    kept = ImageStore(state).versions.version_dir("web", 1) / "layout.xml"
    assert to_xml(load_layout(kept)) == to_xml(load_layout(given))
    assert "layout.xml" in ImageStore(state).describe("web")["records"]


def test_no_default_excludes_keeps_what_they_leave_out(tmp_path, state, capsys):
    src = tmp_path / "src"
    (src / "var/tmp").mkdir(parents=True)
    (src / "var/tmp/scratch").write_text("x\n")
    assert cli(state, capsys, "image", "capture", "a", "--from", str(src))[0] == 0
    assert cli(state, capsys, "image", "capture", "b", "--from", str(src),
               "--no-default-excludes")[0] == 0
    store = ImageStore(state)
    assert not (store.path("a") / "var/tmp/scratch").exists()
    assert (store.path("b") / "var/tmp/scratch").read_text() == "x\n"
    assert not [r for r in store.describe("b")["excludes"] if "/var/tmp" in r]
    assert [r for r in store.describe("a")["excludes"] if "/var/tmp" in r]


def check_golden_capture(g: Golden, image: Path) -> None:
    same_tree(g.data, image / "data")
    awkward_details(g.data, image / "data")
    # /boot is a filesystem of its own: the capture crossed into it.
    assert itemized(g.boot, image / "boot") == []
    # Bind mounts (/usr, /etc), pseudo filesystems and tmpfs are mount
    # points in the image, empty; default excludes keep /var/tmp empty.
    for d in ("usr", "proc", "sys", "dev", "run", "tmp", "var/tmp"):
        assert (image / d).is_dir() and not any((image / d).iterdir()), d
    assert [p.name for p in (image / "etc").iterdir()] == ["machine-id"]  # stored empty
    assert (image / "etc/machine-id").read_bytes() == b""
    assert (image / "var/lib/state").read_text() == "kept\n"
    assert (image / "bin").is_symlink()


def test_capture_over_ssh_from_a_golden_client(tmp_path, state, capsys):
    with golden_client(tmp_path) as g, sshd(g, tmp_path / "keys") as s:
        rc, err = cli(state, capsys, "image", "capture", "golden", *s.source_args("url"))
        assert rc == 0, err
        store = ImageStore(state)
        check_golden_capture(g, store.path("golden"))
        shown = store.describe("golden")
        assert shown["source"] == f"root@127.0.0.1:{s.port}"
        assert {"facts.json", "manifest.jsonl.gz", "excludes"} <= set(shown["records"])
        assert any(r.startswith("- /tmp/\\*\\*") or r == "- /tmp/**" for r in shown["excludes"])
        # Every fact is kept: those read before the pull and those read beside it.
        facts = json.loads((store.versions.version_dir("golden", 1) / "facts.json").read_text())
        assert set(facts) == {name for name, _ in FACTS}
        assert facts["uname"]["rc"] == 0 and facts["uname"]["out"].startswith("Linux")
        # The other way to give the port, and a second version sharing files.
        (g.data / "plain").write_text("changed on the golden client\n")
        rc, err = cli(state, capsys, "image", "capture", "golden", *s.source_args("option"))
        assert rc == 0, err
        assert "version 2" in err
        assert itemized(g.data, store.path("golden") / "data") == []
        v1 = store.versions.version_dir("golden", 1) / "tree/data"
        v2 = store.path("golden") / "data"
        assert os.lstat(v1 / "sparse").st_ino == os.lstat(v2 / "sparse").st_ino
        assert os.lstat(v1 / "plain").st_ino != os.lstat(v2 / "plain").st_ino


def prepare_cmd(g: Golden, port: int, server: str = "127.0.0.1", timeout: int = 120
                ) -> list[str]:
    """`client prepare` as a golden client without sysclone runs it: the one
    served file, on Python 3.9 when this machine has it."""
    prep = g.root / "run/prep"
    prep.mkdir(exist_ok=True)
    shutil.copy(SCRIPT, prep / "prepare.py")
    (prep / "secret").write_text("s3cret-s3cret-s3cret-42\n")
    python = f"{PY39}/bin/python3.9" if PY39.is_dir() else "/usr/bin/python3"
    return ["chroot", str(g.root), python, "/run/prep/prepare.py", "prepare",
            "--server", server, "--port", str(port), "--secret-file", "/run/prep/secret",
            "--timeout", str(timeout)]


def test_capture_from_client_prepare_with_its_secret(tmp_path, state, capsys):
    secret = tmp_path / "secret"
    secret.write_text("s3cret-s3cret-s3cret-42\n")
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-secret-at-all\n")
    with golden_client(tmp_path) as g:
        # A wrong secret is refused, the store stays as it was, the export waits on.
        port = free_port()
        prep = subprocess.Popen(prepare_cmd(g, port), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            wait_port(port)
            before = fingerprint(state.images)
            rc, err = cli(state, capsys, "image", "capture", "golden", "--from",
                          f"rsync://127.0.0.1:{port}/sysclone", "--secret-file", str(wrong))
            assert rc == 1
            assert "the golden client refused the secret; nothing was stored" in error_line(err)
            assert fingerprint(state.images) == before
            assert prep.poll() is None
            # The right one: captured, and the export stops by itself.
            rc, err = cli(state, capsys, "image", "capture", "golden", "--from",
                          f"rsync://127.0.0.1:{port}/sysclone", "--secret-file", str(secret))
            assert rc == 0, err
            out, _ = prep.communicate(timeout=20)
            assert prep.returncode == 0, out
            assert "captured by 127.0.0.1; export stopped" in out
        finally:
            if prep.poll() is None:
                prep.kill()
        check_golden_capture(g, ImageStore(state).path("golden"))
        facts = json.loads((ImageStore(state).versions.version_dir("golden", 1)
                            / "facts.json").read_text())
        assert json.loads(facts["findmnt"]["out"])["filesystems"]
        # Another server's address: this one is not allowed in.
        port = free_port()
        prep = subprocess.Popen(prepare_cmd(g, port, server="127.0.0.2"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_port(port)
            rc, err = cli(state, capsys, "image", "capture", "other", "--from",
                          f"rsync://127.0.0.1:{port}/sysclone", "--secret-file", str(secret))
            assert rc == 1
            assert "does not export to this server" in error_line(err)
            prep.terminate()
            out, _ = prep.communicate(timeout=20)
            assert "export stopped" in out
        finally:
            if prep.poll() is None:
                prep.kill()
        time.sleep(0.2)
        with pytest.raises(AssertionError, match="nothing listens"):
            wait_port(port, timeout=0.5)  # the daemon went with it
