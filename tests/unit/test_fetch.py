"""Pulling the image: rsync's real --stats output (captured), progress
measured on the target while a fake rsync runs, and rsync's own words when
it fails."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest

from agent import fetch
from agent.fetch import RSYNC_FLAGS, SPARSE_FLAGS, FetchError, Progress, pull, rsync_url
from sysclone.errors import SyscloneError
from tests.conftest import FakeCommands, FakeResult
from tests.unit.agentfakes import sample

MB = 1024 * 1024  # rsync's MB/s is 1024 kB/s (--bwlimit=4000 shows as 3.91MB/s)
URL = "rsync://10.0.0.2:873/rocky9/"


def test_stats_give_the_bytes_transferred() -> None:
    assert fetch.transferred(sample("rsync-stats.txt")) == 3_001_000
    assert fetch.transferred("nothing here") is None


def test_used_bytes_of_real_and_missing_mountpoints(tmp_path: Path) -> None:
    assert fetch.used_bytes([tmp_path]) > 0
    assert fetch.used_bytes([tmp_path / "gone"]) == 0


def test_rsync_url() -> None:
    assert rsync_url("10.0.0.2", 873, "rocky9") == URL
    assert rsync_url("fd00::2", 8873, "rocky9") == "rsync://[fd00::2]:8873/rocky9/"


# -- pull() ----------------------------------------------------------------------------------

class GrowingDisk:
    """Bytes in use on the target: grows by 1 MB each time it is looked at."""

    def __init__(self) -> None:
        self.used = 10 * MB

    def __call__(self) -> int:
        self.used += MB
        return self.used


def test_pull_runs_rsync_and_reports_measured_progress(fake_commands: FakeCommands,
                                                       tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-stats.txt")))
    seen: list[Progress] = []
    res = pull(URL, tmp_path, on_progress=seen.append, measure=GrowingDisk(), interval=3600)
    # The whole module, as overrides come: never in place (an override's
    # file may land on a hard link of another file of the image).
    assert fake_commands.calls == [["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64",
                                    "--stats",
                                    URL, f"{tmp_path}/"]]
    # The watcher never woke (interval): one final report of what was measured.
    assert [p.bytes for p in seen] == [MB]
    assert res.bytes == 3_001_000  # rsync's own count, from --stats


def test_pull_hands_its_rsync_to_whoever_may_stop_it(fake_commands: FakeCommands,
                                                     tmp_path: Path) -> None:
    """`started` gets the running rsync (agent.restpull.RestOfImage.stop ends
    it when the install fails elsewhere)."""
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-stats.txt")))
    procs: list[Any] = []
    pull(URL, tmp_path, measure=GrowingDisk(), started=procs.append)
    assert [p.args[:2] for p in procs] == [["rsync", "-aHAXS"]]


def test_pull_reports_while_rsync_runs(fake_commands: FakeCommands, tmp_path: Path) -> None:
    import threading

    release = threading.Event()
    seen: list[Progress] = []

    def slow_rsync(argv: list[str]) -> FakeResult:
        release.wait(5)
        return FakeResult(stdout=sample("rsync-stats.txt"))

    def report(p: Progress) -> None:
        seen.append(p)
        if len(seen) >= 3:
            release.set()

    fake_commands.add(["rsync"], slow_rsync)
    pull(URL, tmp_path, on_progress=report, measure=GrowingDisk(), interval=0.01)
    assert len(seen) >= 4  # three while "rsync" ran, one at the end
    assert all(b.bytes > a.bytes for a, b in itertools.pairwise(seen))
    assert all(p.rate > 0 for p in seen[:3])


def test_pull_without_stats_falls_back_to_what_was_measured(fake_commands: FakeCommands,
                                                            tmp_path: Path) -> None:
    fake_commands.add(["rsync"], "")
    res = pull(URL, tmp_path, measure=GrowingDisk())
    assert res.bytes == MB


@pytest.mark.parametrize(("name", "rc", "detail"), [
    ("rsync-refused.txt", 10,
     "rsync: [Receiver] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused (111); "
     "rsync error: error in socket IO (code 10) at clientserver.c(165) [Receiver=3.5.0]"),
    ("rsync-unknown-module.txt", 5,
     "@ERROR: Unknown module 'nosuch'; rsync error: error starting client-server protocol "
     "(code 5) at main.c(1954) [Receiver=3.5.0]"),
])
def test_pull_failure_carries_rsyncs_words(fake_commands: FakeCommands, tmp_path: Path,
                                           name: str, rc: int, detail: str) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=sample(name), returncode=rc))
    reported: list[Progress] = []
    with pytest.raises(FetchError) as e:
        pull(URL, tmp_path, on_progress=reported.append, interval=3600)
    assert e.value.message == f"rsync from {URL} failed: {detail}"
    assert e.value.fields["returncode"] == rc
    assert e.value.to_dict()["returncode"] == rc
    assert reported == []


def test_pull_failure_mid_transfer_keeps_the_last_three_lines(fake_commands: FakeCommands,
                                                              tmp_path: Path) -> None:
    out = (sample("rsync-stats.txt")
           + "rsync: [receiver] write failed on \"/sysroot/usr/lib/libLLVM.so.17\": "
             "No space left on device (28)\n"
           + "rsync error: error in file IO (code 11) at receiver.c(380) [receiver=3.5.0]\n"
           + "rsync: [generator] write error: Broken pipe (32)\n"
           + "rsync error: error in file IO (code 11) at io.c(1700) [generator=3.5.0]\n")
    fake_commands.add(["rsync"], FakeResult(stdout=out, returncode=11))
    with pytest.raises(FetchError) as e:
        pull(URL, tmp_path)
    assert e.value.message == (
        f"rsync from {URL} failed: "
        "rsync error: error in file IO (code 11) at receiver.c(380) [receiver=3.5.0]; "
        "rsync: [generator] write error: Broken pipe (32); "
        "rsync error: error in file IO (code 11) at io.c(1700) [generator=3.5.0]")


@pytest.mark.parametrize("said", [
    "unknown checksum name: xxh64\n"  # rsync 3.1.1 to 3.1.3
    "rsync error: requested action not supported (code 4) at checksum.c(90) [server=3.1.3]\n",
    "rsync: on remote machine: --checksum-choice=xxh64: unknown option\n"  # older
    "rsync error: syntax or usage error (code 1) at main.c(1580) [server=3.0.9]\n",
])
def test_a_daemon_without_xxh64_is_named(fake_commands: FakeCommands, tmp_path: Path,
                                         said: str) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=said, returncode=4))
    with pytest.raises(FetchError) as e:
        pull(URL, tmp_path)
    assert e.value.hint == "the image server's rsync must be 3.2 or later (xxh64)"
    assert "xxh64" in e.value.message


def test_pull_failure_without_output(fake_commands: FakeCommands, tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(returncode=23))
    with pytest.raises(FetchError, match=r"failed: exit code 23$"):
        pull(URL, tmp_path)


def test_rsync_keeps_what_an_image_needs() -> None:
    # Hard links, ACLs, xattrs (file capabilities, SELinux labels), numeric
    # ids (the boot environment has no passwd to map names); sparse files
    # (-S) in their own run, or everywhere when nobody said which; each file
    # verified with xxh64 (cheap under emulation, unlike xxh128).
    assert RSYNC_FLAGS == ("-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats")
    assert SPARSE_FLAGS == ("-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats")


# -- the runs' command lines ------------------------------------------------------------------

DEFERRED = ("usr/share/doc", "usr/lib/firmware")
SPARSE = ("var/log/lastlog", "usr/share/doc/big/holes.img", "var/lib/vm.raw")


def test_the_bulk_comes_without_holes_but_the_sparse_files() -> None:
    assert fetch.all_but(DEFERRED, SPARSE).argv(URL, "/sysroot") == [
        "rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats", "--inplace",
        "--exclude=/usr/share/doc/", "--exclude=/usr/lib/firmware/",
        "--exclude=/var/log/lastlog", "--exclude=/usr/share/doc/big/holes.img",
        "--exclude=/var/lib/vm.raw", URL, "/sysroot/"]
    # An image with no sparse file at all: nothing to exclude, no -S.
    assert fetch.all_but((), ()).argv(URL, "/sysroot") == [
        "rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats", "--inplace", URL,
        "/sysroot/"]


def test_not_knowing_which_are_sparse_keeps_holes_everywhere() -> None:
    # An older server, or one that said "all": as before.
    assert fetch.all_but(DEFERRED, None).argv(URL, "/sysroot") == [
        "rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats", "--inplace",
        "--exclude=/usr/share/doc/", "--exclude=/usr/lib/firmware/", URL, "/sysroot/"]
    assert fetch.only(URL, DEFERRED, None).argv(URL, "/sysroot") == [
        "rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
        "--inplace", "--relative",
        "rsync://10.0.0.2:873/rocky9/./usr/share/doc/", "::rocky9/./usr/lib/firmware/",
        "/sysroot/"]


def test_the_rest_leaves_out_the_sparse_files_in_it() -> None:
    # They came with the sparse run already: never twice.
    assert fetch.only(URL, DEFERRED, SPARSE).argv(URL, "/sysroot") == [
        "rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
        "--inplace", "--relative",
        "--exclude=/usr/share/doc/big/holes.img",
        "rsync://10.0.0.2:873/rocky9/./usr/share/doc/", "::rocky9/./usr/lib/firmware/",
        "/sysroot/"]
    # A name that only starts like a deferred directory is not in it.
    assert "--exclude=/usr/share/docs/x" not in fetch.only(URL, DEFERRED, ["usr/share/docs/x"]
                                                           ).options


def test_the_sparse_files_come_with_holes_each_in_its_place() -> None:
    assert fetch.sparse_only(URL, SPARSE).argv(URL, "/sysroot") == [
        "rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
        "--inplace", "--relative",
        "rsync://10.0.0.2:873/rocky9/./var/log/lastlog",
        "::rocky9/./usr/share/doc/big/holes.img", "::rocky9/./var/lib/vm.raw", "/sysroot/"]


@pytest.mark.parametrize(("path", "pattern"), [
    ("var/log/lastlog", "var/log/lastlog"),
    # Without a wildcard rsync takes a backslash as it is.
    ("a\\b", "a\\b"),
    ("disk[1].img", "disk\\[1].img"),
    ("x*y?z\\", "x\\*y\\?z\\\\"),
])
def test_an_exclude_matches_only_its_own_name(path: str, pattern: str) -> None:
    assert fetch.filter_literal(path) == pattern


def test_pull_sparse_runs_its_own_command_line(fake_commands: FakeCommands,
                                               tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-stats.txt")))
    fetch.pull_sparse(URL, tmp_path, ["var/log/lastlog"], measure=GrowingDisk())
    fetch.pull_except(URL, tmp_path, ["usr/share/doc"], ["var/log/lastlog"],
                      measure=GrowingDisk())
    fetch.pull_only(URL, tmp_path, ["usr/share/doc"], ["var/log/lastlog"],
                    measure=GrowingDisk())
    assert fake_commands.calls == [
        ["rsync", *SPARSE_FLAGS, "--inplace", "--relative",
         "rsync://10.0.0.2:873/rocky9/./var/log/lastlog", f"{tmp_path}/"],
        ["rsync", *RSYNC_FLAGS, "--inplace", "--exclude=/usr/share/doc/",
         "--exclude=/var/log/lastlog", URL, f"{tmp_path}/"],
        ["rsync", *RSYNC_FLAGS, "--inplace", "--relative",
         "rsync://10.0.0.2:873/rocky9/./usr/share/doc/", f"{tmp_path}/"]]


# -- image_paths: which paths an image has, in one listing ------------------------------------

def test_image_paths_lists_them_all_at_once(fake_commands: FakeCommands) -> None:
    # What rsync 3.2 prints for --list-only --relative (a symlink with its
    # target), and exit code 23 for the one that is not there.
    fake_commands.add(["rsync"], FakeResult(
        stdout="-rw-r--r--              2 2026/11/30 01:41:19 etc/hostname\n"
               "lrwxrwxrwx              5 2026/11/30 01:41:27 usr/sbin/lvm -> lvm.static\n",
        stderr='rsync: [sender] link_stat "sbin/mdadm" (in deb12) failed: No such file or '
               "directory (2)\nrsync error: some files/attrs were not transferred (code 23)\n",
        returncode=23))
    got = fetch.image_paths("rsync://10.0.2.2:873/deb12/", ["etc/hostname", "sbin/mdadm",
                                                            "usr/sbin/lvm"])
    assert got == {"etc/hostname", "usr/sbin/lvm"}
    assert fake_commands.calls == [[
        "rsync", "--list-only", "--no-motd", "--relative", "--no-implied-dirs",
        "rsync://10.0.2.2:873/deb12/./etc/hostname", "::deb12/./sbin/mdadm",
        "::deb12/./usr/sbin/lvm"]]


def test_image_paths_of_an_image_that_cannot_be_read(fake_commands: FakeCommands) -> None:
    fake_commands.add(["rsync"], FakeResult(stderr="@ERROR: Unknown module 'nosuch'\n"
                                                   "rsync error: error starting client-server "
                                                   "protocol (code 5)\n", returncode=5))
    with pytest.raises(SyscloneError, match=r"^@ERROR: Unknown module 'nosuch'$"):
        fetch.image_paths("rsync://[fd00::2]:873/nosuch", ["etc/hostname"])
    with pytest.raises(ValueError):
        fetch.image_paths("http://10.0.2.2/deb12/", ["etc/hostname"])
