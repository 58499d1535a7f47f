"""A capture over SSH asks the client which files are sparse
(imageserver.sparsescan) and pulls them in a run of their own with -S."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from imageserver import capture as capture_mod
from imageserver.sources import parse_source
from imageserver.sparsefiles import FileFacts, classify
from imageserver.sparsescan import (
    parse,
    pruned_mounts,
    scan_command,
    scanned_mounts,
    ssh_sparse_files,
)
from imageserver.transfer import SparseSplit, endpoint, pull_argv
from tests.conftest import FakeResult


def findmnt(*mounts: tuple[str, str, str, str]) -> str:
    return json.dumps({"filesystems": [
        {"target": t, "source": src, "fstype": fs, "fsroot": "/", "maj:min": mm}
        for t, src, fs, mm in mounts]})


MOUNTS = findmnt(("/", "/dev/sda2", "ext4", "8:2"), ("/proc", "proc", "proc", "0:20"),
                 ("/run", "tmpfs", "tmpfs", "0:24"), ("/boot", "/dev/sda1", "ext4", "8:1"),
                 ("/run/media/usb", "/dev/sdb1", "ext4", "8:17"),
                 ("/srv/my data", "/dev/sdc1", "xfs", "8:33"),
                 ("/mnt/nfs", "nas:/x", "nfs4", "0:50"))


def test_the_scan_covers_the_filesystems_the_capture_crosses_into() -> None:
    # Not /proc, /run (tmpfs) nor what is mounted below it, nor NFS.
    assert scanned_mounts(MOUNTS, pruned_mounts(MOUNTS)) == ["/", "/boot", "/srv/my data"]
    assert scanned_mounts("", []) == ["/"]
    # What the capture skips, find does not enter: -xdev alone would go
    # below a bind mount of a directory of the same filesystem.
    assert pruned_mounts(MOUNTS) == ["/proc", "/run", "/mnt/nfs"]
    cmd = scan_command(scanned_mounts(MOUNTS, pruned_mounts(MOUNTS)), pruned_mounts(MOUNTS))
    assert cmd == ("LC_ALL=C find / /boot '/srv/my data' -xdev \\( -path /proc -o -path /run "
                   "-o -path /mnt/nfs \\) -prune -o -type f -size +4095c "
                   "-printf '%D %i %n %s %b %p\\0'")
    assert scan_command(["/"], ["/a b*"]) == ("LC_ALL=C find / -xdev \\( -path '/a b\\*' \\) "
                                              "-prune -o -type f -size +4095c "
                                              "-printf '%D %i %n %s %b %p\\0'")


def rec(dev: int, ino: int, nlink: int, size: int, blocks: int, path: bytes) -> bytes:
    return b"%d %d %d %d %d %s\0" % (dev, ino, nlink, size, blocks, path)


def test_find_records_parse_into_the_same_decision_as_a_local_walk() -> None:
    out = (rec(2050, 11, 1, 1 << 20, 8, b"/var/log/lastlog")  # 1 MiB, 4 KiB allocated
           + rec(2050, 12, 1, 8192, 16, b"/etc/big file")  # dense, a space in its name
           + rec(2049, 13, 1, 65536, 0, b"/boot/empty.img"))
    files = list(parse(out))
    assert files[1] == FileFacts("etc/big file", 8192, 16, 1, (2050, 12))
    assert classify(files).paths == ("boot/empty.img", "var/log/lastlog")
    # Two names of one sparse inode cannot be split over two runs.
    linked = rec(2050, 11, 2, 1 << 20, 8, b"/var/log/wtmp") \
        + rec(2050, 11, 2, 1 << 20, 8, b"/var/log/wtmp.1")
    assert "another name" in (classify(parse(linked)).fallback or "")
    # A name rsync could read as a pattern, or not UTF-8: every file with -S.
    odd = rec(2050, 14, 1, 1 << 20, 0, b"/tmp/a*b") + rec(2050, 15, 1, 1 << 20, 0, b"/x\xff")
    assert "cannot be passed safely" in (classify(parse(odd)).fallback or "")


def test_ssh_scan_runs_find_over_the_connection_and_falls_back_when_it_fails(
        fake_commands) -> None:
    src = parse_source("root@golden")
    fake_commands.add(["ssh"], FakeResult(stdout=rec(1, 2, 1, 1 << 20, 0, b"/var/img")))
    assert ssh_sparse_files(src, MOUNTS).paths == ("var/img",)
    assert fake_commands.calls[-1][-2:] == ["golden", scan_command(
        ["/", "/boot", "/srv/my data"], ["/proc", "/run", "/mnt/nfs"])]
    fake_commands.add(["ssh"], FakeResult(stderr=b"sh: 1: find: not found\n", returncode=127))
    got = ssh_sparse_files(src, MOUNTS)
    assert got.paths == () and got.fallback == \
        "find on the client failed (127): sh: 1: find: not found"
    fake_commands.add(["ssh"], FakeResult(stdout=b"garbage\0"))
    assert "not understood" in (ssh_sparse_files(src, MOUNTS).fallback or "")


def test_split_pull_argv(tmp_path: Path) -> None:
    ep = endpoint(parse_source("root@golden"))
    bulk = pull_argv(ep, tmp_path / "t", tmp_path / "ex", sparse=SparseSplit(tmp_path / "l",
                                                                                holes=False))
    assert "--sparse" not in bulk and f"--exclude-from={tmp_path / 'l'}" in bulk
    holes = pull_argv(ep, tmp_path / "t", tmp_path / "ex", sparse=SparseSplit(tmp_path / "f",
                                                                                 holes=True))
    assert "--sparse" in holes and f"--files-from={tmp_path / 'f'}" in holes
    assert "--ignore-missing-args" in holes  # deleted since the scan: no error
    # The capture's excludes apply to both runs (rsync filters --files-from names too).
    assert f"--filter=merge {tmp_path / 'ex'}" in bulk and f"--filter=merge {tmp_path / 'ex'}" \
        in holes


class NoMoreFacts:
    """The facts read beside the pull: none here."""

    def result(self) -> dict[str, object]:
        return {}


@pytest.mark.parametrize(("scan", "runs"), [
    (rec(1, 2, 1, 1 << 20, 0, b"/var/img"), 2),  # one sparse file: the bulk, then it
    (b"", 1),  # none: one run, without -S
    (rec(1, 2, 1, 1 << 20, 0, b"/x\xff"), 1),  # a fallback: one run, -S for all
])
def test_capture_pulls_in_one_or_two_runs(scan: bytes, runs: int, tmp_path: Path,
                                          fake_commands, monkeypatch) -> None:
    from sysclone.paths import StateRoot

    monkeypatch.setattr(capture_mod, "read_facts", lambda src, pw, before_pull: {
        "findmnt": {"rc": 0, "out": MOUNTS, "err": ""}})
    monkeypatch.setattr(capture_mod, "RestOfFacts", lambda src, have: NoMoreFacts())
    lists: list[tuple[str, str]] = []

    def rsync(argv: list[str]) -> FakeResult:
        listed = [a.split("=", 1) for a in argv if a.startswith(("--files-from=",
                                                                   "--exclude-from="))]
        lists.extend((opt, Path(f).read_text()) for opt, f in listed)
        (Path(argv[-1]) / "etc").mkdir(exist_ok=True)  # a capture of nothing is refused
        (Path(argv[-1]) / "etc/hostname").write_text("golden\n")
        return FakeResult(stdout="")

    fake_commands.add(["ssh"], FakeResult(stdout=scan))
    fake_commands.add(["rsync"], rsync)
    state = StateRoot.from_options(tmp_path / "state")
    opts = capture_mod.CaptureOptions("golden", parse_source("root@golden"))
    capture_mod.capture(state, opts)
    pulls = [c for c in fake_commands.calls if c[0] == "rsync"]
    assert len(pulls) == runs
    if runs == 2:
        assert "--sparse" not in pulls[0] and "--sparse" in pulls[1]
        assert lists == [("--exclude-from", "/var/img\n"), ("--files-from", "var/img\n")]
    else:
        assert ("--sparse" in pulls[0]) == bool(scan)
