"""Pulling the image: rsync's real --info=progress2 output (captured), and
pull() driving a fake rsync through the command fakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import fetch
from agent.fetch import RSYNC_FLAGS, FetchError, Progress, pull, rsync_url
from tests.conftest import FakeCommands, FakeResult
from tests.unit.agentfakes import FakeClock, sample

MB = 1024 * 1024  # rsync's MB/s is 1024 kB/s (--bwlimit=4000 shows as 3.91MB/s)
URL = "rsync://10.0.0.2:873/rocky9/"


def progress_of(name: str) -> list[tuple[int, int, int]]:
    out = []
    for line in sample(name).splitlines(keepends=True):
        p = Progress.parse(line)
        if p:
            out.append((p.bytes, p.percent, round(p.rate)))
    return out


def test_parse_captured_progress_with_bwlimit() -> None:
    assert progress_of("rsync-progress2-local.txt") == [
        (32_768, 0, 0), (3_000_000, 19, round(4.48 * MB)), (4_343_488, 28, round(3.91 * MB)),
        (6_000_000, 39, round(4.15 * MB)), (8_654_208, 57, round(3.91 * MB)),
        (9_000_000, 59, round(4.06 * MB)), (12_000_000, 79, round(4.02 * MB)),
        (12_001_000, 80, round(4.02 * MB)), (12_001_000, 80, round(4.02 * MB)),
        (12_001_000, 80, round(4.02 * MB))]


def test_parse_captured_progress_of_a_big_transfer() -> None:
    got = progress_of("rsync-progress2-big.txt")
    assert got[0] == (32_768, 0, 0)
    assert got[3] == (1_127_051_392, 72, round(537.67 * MB))
    assert got[-1] == (1_550_000_000, 100, round(541.85 * MB))
    assert len(got) == 6


@pytest.mark.parametrize(("line", "expected"), [
    ("  7,516,192,768  41%    1.21GB/s    0:00:11 (xfr#8123, ir-chk=1024/40960)\n",
     Progress(7_516_192_768, 41, 1.21 * 1024**3)),
    ("            512   0%  500.00kB/s    0:00:00\n", Progress(512, 0, 500 * 1024.0)),
    ("              0   0%    0.00kB/s    0:00:00  ", Progress(0, 0, 0.0)),
])
def test_parse_units(line: str, expected: Progress) -> None:
    assert Progress.parse(line) == expected


@pytest.mark.parametrize("line", [
    "", "\n", "sending incremental file list\n",
    "rsync: [Receiver] failed to connect to 127.0.0.1 (127.0.0.1): Connection refused (111)\n",
    "@ERROR: Unknown module 'nosuch'\n",
    "rsync error: error in socket IO (code 10) at clientserver.c(165) [Receiver=3.5.0]\n",
    "etc/hostname\n",
])
def test_parse_other_lines(line: str) -> None:
    assert Progress.parse(line) is None


def test_rsync_url() -> None:
    assert rsync_url("10.0.0.2", 873, "rocky9") == URL
    assert rsync_url("fd00::2", 8873, "rocky9") == "rsync://[fd00::2]:8873/rocky9/"


# -- pull() ----------------------------------------------------------------------------------

@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """Half a second passes between two looks at the clock."""
    c = FakeClock(tick=0.5)
    monkeypatch.setattr(fetch, "time", c)
    return c


def test_pull_runs_rsync_and_reports_progress(fake_commands: FakeCommands, clock: FakeClock,
                                              tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-progress2-daemon.txt")))
    seen: list[Progress] = []
    res = pull(URL, tmp_path, on_progress=seen.append)
    assert fake_commands.calls == [["rsync", "-aHAXS", "--numeric-ids", "--info=progress2",
                                    URL, f"{tmp_path}/"]]
    # At most one report a second (every other line here), then the last one.
    assert [p.bytes for p in seen] == [0, 6_000_000, 12_000_000, 12_001_000, 12_001_000]
    assert seen[-1] == Progress(12_001_000, 80, 357.66 * MB)
    assert res.bytes == 12_001_000
    assert res.seconds == 0.5 * 9  # one tick per progress line, one for the end


def test_pull_every_update_with_interval_zero(fake_commands: FakeCommands, clock: FakeClock,
                                              tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-progress2-local.txt")))
    seen: list[int] = []
    pull(URL, tmp_path, on_progress=lambda p: seen.append(p.percent), interval=0,
         extra=("--exclude=/proc/*", "--bwlimit=4000"))
    assert seen == [0, 19, 28, 39, 57, 59, 79, 80, 80, 80, 80]
    assert fake_commands.calls[0][4:] == ["--exclude=/proc/*", "--bwlimit=4000", URL,
                                          f"{tmp_path}/"]


def test_pull_without_progress_lines(fake_commands: FakeCommands, tmp_path: Path) -> None:
    fake_commands.add(["rsync"], "")
    res = pull(URL, tmp_path)
    assert res.bytes == 0


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
        pull(URL, tmp_path, on_progress=reported.append)
    assert e.value.message == f"rsync from {URL} failed: {detail}"
    assert e.value.fields["returncode"] == rc
    assert e.value.to_dict()["returncode"] == rc
    assert reported == []


def test_pull_failure_mid_transfer_keeps_the_last_three_lines(fake_commands: FakeCommands,
                                                              tmp_path: Path) -> None:
    out = (sample("rsync-progress2-local.txt").rsplit("\n", 4)[0] + "\n"
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


def test_pull_failure_without_output(fake_commands: FakeCommands, tmp_path: Path) -> None:
    fake_commands.add(["rsync"], FakeResult(returncode=23))
    with pytest.raises(FetchError, match=r"failed: exit code 23$"):
        pull(URL, tmp_path)


def test_rsync_keeps_what_an_image_needs() -> None:
    # Hard links, ACLs, xattrs (file capabilities, SELinux labels), sparse
    # files, and numeric ids (the boot environment has no passwd to map names).
    assert RSYNC_FLAGS == ("-aHAXS", "--numeric-ids", "--info=progress2")
