"""bench.install's bare transfer baseline runs the agent's own rsync command
lines (else the transfer ratio would compare different work): the same
argv as the fetch phase's runs, from the same instructions, written where
the baseline's /init reads them."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest

from agent import fetch
from bench import install
from bench.baseline import SCRIPT_INIT
from imageserver.store import ImageStore
from sysclone.paths import StateRoot

URL = "rsync://10.0.2.2:8873/demo@2/"


def test_the_bulk_without_holes_then_the_sparse_files() -> None:
    sparse = ("var/log/faillog", "var/log/lastlog")
    assert install.agent_rsyncs(URL, sparse) == [
        # The agent's fetch run, but for the deferred directories it leaves
        # for later: here they come in the same transfer.
        fetch.all_but((), sparse).argv(URL, "/sysroot"),
        ["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
         "--inplace", "--relative",
         f"{URL}./var/log/faillog", "::demo@2/./var/log/lastlog", "/sysroot/"]]
    assert install.agent_rsyncs(URL, sparse)[0] == [
        "rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64",
        "--stats", "--inplace", "--exclude=/var/log/faillog",
        "--exclude=/var/log/lastlog", URL, "/sysroot/"]


def test_one_run_with_holes_when_the_server_names_none() -> None:
    assert install.agent_rsyncs(URL, None) == [
        ["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64",
         "--stats", "--inplace", URL, "/sysroot/"]]
    assert install.agent_rsyncs(URL, ()) == [
        ["rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats", "--inplace",
         URL, "/sysroot/"]]


def test_the_command_lines_reach_the_script_whole(tmp_path: Path) -> None:
    argvs = install.agent_rsyncs(URL, ("var/log/lastlog",))
    disk = install.rsyncs_disk(tmp_path / "rsyncs.img", argvs)
    data = disk.read_bytes()
    assert len(data) % 512 == 0
    lines = data.rstrip(b"\0").decode().splitlines()
    assert [shlex.split(line.removesuffix(" >/dev/null || fail rsync")) for line in lines] \
        == argvs
    # The mode reads them from the second disk, and runs them between its clocks.
    mode = SCRIPT_INIT.split("rsync-agent-flags)", 1)[1].split(";;", 1)[0]
    assert "/dev/vdb" in mode and ". /tmp/rsyncs.sh" in mode
    assert mode.index("read r0") < mode.index(". /tmp/rsyncs.sh") < mode.index("read r1")


def test_from_what_the_server_tells_the_agent(tmp_path: Path) -> None:
    state = StateRoot.from_options(tmp_path / "state", tmp_path / "cache")
    tree = state.images / "demo"
    (tree / "var/log").mkdir(parents=True)
    with (tree / "var/log/lastlog").open("wb") as f:
        f.truncate(1 << 20)
    ImageStore(state).record("demo", origin="test")
    url = "rsync://10.0.2.2:8873/demo/"
    assert install._agent_rsyncs(state, "demo", 8873) == install.agent_rsyncs(
        url, ("var/log/lastlog",))
    os.link(tree / "var/log/lastlog", tree / "var/log/lastlog.1")  # "all": -S everywhere
    assert install._agent_rsyncs(state, "demo", 8873) == install.agent_rsyncs(url, None)


def _phase(name: str, status: str, ts: float) -> dict[str, object]:
    return {"kind": "phase", "phase": name, "status": status, "ts": ts}


def test_the_transfer_is_timed_from_the_first_fetch_to_the_last() -> None:
    progress = {"kind": "progress", "phase": "fetch", "ts": 99.0}
    # Side by side: the rest starts with the bulk and ends after it.
    beside = [_phase("fetch", "start", 10.0), _phase("fetch-rest", "start", 10.1), progress,
              _phase("fetch", "done", 15.0), _phase("bootloader", "start", 15.1),
              _phase("fetch-rest", "done", 16.5), _phase("bootloader", "done", 19.0)]
    assert install.fetch_span(beside) == pytest.approx(6.5)
    # One after the other, with the configuration between them.
    after = [_phase("fetch", "start", 10.0), _phase("fetch", "done", 15.0),
             _phase("fetch-rest", "start", 15.2), _phase("fetch-rest", "done", 19.0)]
    assert install.fetch_span(after) == pytest.approx(9.0)
    assert install.fetch_span(after[:2]) == pytest.approx(5.0)  # nothing deferred


def test_a_transfer_that_never_ended_is_no_figure() -> None:
    with pytest.raises(RuntimeError, match="did not all end"):
        install.fetch_span([_phase("fetch", "start", 10.0), _phase("fetch", "done", 15.0),
                            _phase("fetch-rest", "start", 10.1)])
    with pytest.raises(RuntimeError):
        install.fetch_span([])
