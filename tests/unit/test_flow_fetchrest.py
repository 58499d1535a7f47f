"""The tail of the install (agent.flow._configure_while_fetching): the rest
of the image arrives while the system is configured, and what must wait
does.  The phases' own work is replaced by recorders; the ordering, the
phase runner and the failure reporting run for real.  And the rsync runs
of fetch and fetch-rest, by their argv: the bulk without -S, the sparse
files in a run of their own with it."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from agent import flow, restpull
from agent.disks import Disk, NoProbe
from agent.phases import InstallFailed, Steps
from agent.planner import make_plan
from sysclone.errors import SyscloneError
from tests.conftest import FakeCommands, FakeResult
from tests.unit.agentfakes import sample
from tests.unit.test_flow import Recorder


class Tail:
    """Recorders for the four steps, each holding a line in `log`."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, regenerate: bool = False,
                 rest_fails: bool = False) -> None:
        self.log: list[str] = []
        self.lock = threading.Lock()
        # The rest takes until the bootloader has got as far as it may
        # without it (grub.cfg; its boot code when the initrd is built
        # here), or 2 s: one that waited shows up in the order, not a hang.
        self.release = threading.Event()
        release_at = "boot-code" if regenerate else "grub.cfg"

        def note(what: str) -> None:
            with self.lock:
                self.log.append(what)
            if what == release_at:
                self.release.set()

        def pull_rest(s: Any, plan: Any, root: Path, start: int, **kw: Any) -> None:
            with s.steps.phase("fetch-rest"):
                note("rest:start")
                self.release.wait(2)
                if rest_fails:
                    raise SyscloneError("rsync: connection reset")
                note("rest:done")

        def configure_system(s: Any, plan: Any, net: Any, root: Path, netcfg: Any) -> None:
            with s.steps.phase("configure"):
                note("configure")

        def initrd(s: Any, plan: Any, server: Any, root: Path, whole_image: Any) -> None:
            with s.steps.phase("initrd"):
                note("initrd:decided")
                if regenerate:
                    whole_image()
                    note("initrd:regenerated")

        def install_bootloader(s: Any, plan: Any, root: Path, initrd_ready: Any) -> None:
            with s.steps.phase("bootloader"):
                note("boot-code")
                initrd_ready()
                note("grub.cfg")

        for name, fn in (("pull_rest", pull_rest), ("configure_system", configure_system),
                         ("initrd", initrd), ("install_bootloader", install_bootloader)):
            monkeypatch.setattr(flow, name, fn)

    def run(self, fetched: bool = False, breaks: frozenset[str] = frozenset()) -> Recorder:
        """`fetched`: the rest came before (with overrides, as install() does)."""
        rep = Recorder([])
        steps = Steps(rep, breaks=breaks, shell=lambda phase: self.log.append(f"shell:{phase}"))
        s = flow.Session([], None, rep, steps)  # type: ignore[arg-type]
        rest = flow.rest_of_image(s, None, Path("/nowhere"), 0, beside=False)  # type: ignore
        if fetched:
            self.release.set()
            rest.finish()
            self.log.clear()
            rep.log.clear()
        flow._configure_while_fetching(s, None, None, None, Path("/nowhere"),  # type: ignore
                                       rest, None)
        return rep


def test_the_bootloader_does_not_wait_for_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = Tail(monkeypatch)
    rep = tail.run()
    # The initrd is kept and grub.cfg written while the rest still comes.
    assert tail.log.index("grub.cfg") < tail.log.index("rest:done")
    assert tail.log.index("initrd:decided") < tail.log.index("grub.cfg")
    assert sorted(rep.phases("done")) == ["bootloader", "configure", "fetch-rest", "host-keys",
                                          "initrd"]


def test_an_initrd_built_here_waits_for_the_modules(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = Tail(monkeypatch, regenerate=True)
    tail.run()
    assert tail.log.index("rest:done") < tail.log.index("initrd:regenerated") \
        < tail.log.index("grub.cfg")
    assert tail.log.index("boot-code") < tail.log.index("rest:done")  # meanwhile


def test_the_rest_failing_fails_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = Tail(monkeypatch, regenerate=True, rest_fails=True)
    with pytest.raises(InstallFailed) as e:
        tail.run()
    assert "connection reset" in e.value.message  # fetch-rest's own failure is raised
    assert "initrd:regenerated" not in tail.log  # never from a partial image


def test_nothing_to_fetch_when_it_came_before(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = Tail(monkeypatch, regenerate=True)
    rep = tail.run(fetched=True)  # with overrides: fetched whole before them
    assert "rest:start" not in tail.log
    assert "fetch-rest" not in rep.phases()
    assert tail.log[-1] == "grub.cfg"


def test_a_break_runs_them_one_after_the_other(monkeypatch: pytest.MonkeyPatch) -> None:
    tail = Tail(monkeypatch, regenerate=True)
    tail.run(breaks=frozenset({"initrd"}))
    assert tail.log == ["rest:start", "rest:done", "configure", "shell:initrd",
                        "initrd:decided", "initrd:regenerated", "boot-code", "grub.cfg"]


def test_new_host_keys_beside_the_rest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                       fake_commands: FakeCommands) -> None:
    root = tmp_path / "root"
    (root / "etc/ssh").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/ssh-keygen").touch()
    (root / "etc/ssh/ssh_host_ed25519_key").write_text("the golden client's\n")
    fake_commands.add(["chroot", str(root), "ssh-keygen", "-A"])
    tail = Tail(monkeypatch)
    rep = Recorder([])
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    rest = flow.rest_of_image(s, None, root, 0, beside=False)  # type: ignore[arg-type]
    flow._configure_while_fetching(s, None, None, None, root, rest, None)  # type: ignore
    assert ["chroot", str(root), "ssh-keygen", "-A"] in fake_commands.calls
    assert not (root / "etc/ssh/ssh_host_ed25519_key").exists()  # the old key is gone
    assert s.written == ["/etc/ssh/ssh_host_ed25519_key"]
    assert "host-keys" in rep.phases("done") and "grub.cfg" in tail.log


# -- fetch and fetch-rest: which rsync runs, with -S or without ------------------------------

URL = "rsync://10.0.0.2:873/deb12/"
DEFERRED = ["usr/share/doc", "usr/lib/firmware"]


def fetch_all(fake_commands: FakeCommands, tmp_path: Path, sparse: object
              ) -> tuple[list[list[str]], Recorder]:
    """The fetch phase, then fetch-rest, as install() runs them, for an
    image whose instructions say `sparse` (absent when None)."""
    img: dict[str, object] = {"name": "deb12", "deferred": DEFERRED}
    if sparse is not None:
        img["sparse"] = sparse
    plan = make_plan(instructions={"image": img}, server="10.0.0.2", hostname="n1",
                     targets=[Disk("vda", 20 << 30)], fw="bios", ram_bytes=1 << 30,
                     have_tool=lambda t: True, probe=NoProbe())
    fake_commands.add(["rsync"], FakeResult(stdout=sample("rsync-stats.txt")))
    rep = Recorder([])
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    flow.pull_image(s, plan, tmp_path, 0)
    flow.pull_rest(s, plan, tmp_path, 0)
    assert rep.phases("done") == ["fetch", "fetch-rest"]
    return [[a.replace(f"{tmp_path}/", "/sysroot/") for a in argv]
            for argv in fake_commands.calls], rep


def test_the_bulk_without_holes_then_the_sparse_files_with(fake_commands: FakeCommands,
                                                            tmp_path: Path) -> None:
    runs, rep = fetch_all(fake_commands, tmp_path,
                          ["usr/share/doc/qemu/test.img", "var/log/lastlog"])
    assert runs == [
        ["rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64",
         "--stats", "--inplace", "--exclude=/usr/share/doc/",
         "--exclude=/usr/lib/firmware/", "--exclude=/usr/share/doc/qemu/test.img",
         "--exclude=/var/log/lastlog", URL, "/sysroot/"],
        # Within the fetch phase, before anything reads /var/log; the one in
        # a deferred directory comes here too, and not again.
        ["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
         "--inplace", "--relative",
         f"{URL}./usr/share/doc/qemu/test.img", "::deb12/./var/log/lastlog", "/sysroot/"],
        ["rsync", "-aHAX", "--numeric-ids", "--checksum-choice=xxh64", "--stats",
         "--inplace", "--relative",
         "--exclude=/usr/share/doc/qemu/test.img", f"{URL}./usr/share/doc/",
         "::deb12/./usr/lib/firmware/", "/sysroot/"]]
    # rsync's --stats count of both runs (the sample's, twice).
    assert any(line.startswith("6 MiB in ") and "(2 sparse files apart), 2 directories to "
               "follow" in line for line in rep.lines), rep.lines


def test_an_image_without_sparse_files_has_no_run_for_them(fake_commands: FakeCommands,
                                                           tmp_path: Path) -> None:
    runs, rep = fetch_all(fake_commands, tmp_path, [])
    assert [r[:2] for r in runs] == [["rsync", "-aHAX"], ["rsync", "-aHAX"]]
    assert any("(no sparse files)" in line for line in rep.lines)


@pytest.mark.parametrize("sparse", [None, "all"])  # an older server; one that could not say
def test_holes_everywhere_when_the_server_does_not_say_which(
        fake_commands: FakeCommands, tmp_path: Path, sparse: object) -> None:
    runs, rep = fetch_all(fake_commands, tmp_path, sparse)
    assert runs == [
        ["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64",
         "--stats", "--inplace", "--exclude=/usr/share/doc/",
         "--exclude=/usr/lib/firmware/", URL, "/sysroot/"],
        ["rsync", "-aHAXS", "--numeric-ids", "--checksum-choice=xxh64",
         "--stats", "--inplace", "--relative", f"{URL}./usr/share/doc/",
         "::deb12/./usr/lib/firmware/", "/sysroot/"]]
    assert any("(every file checked for holes)" in line for line in rep.lines)


# -- fetch-rest beside fetch -------------------------------------------------------------------


def beside_plan() -> Any:
    img: dict[str, object] = {"name": "deb12", "deferred": DEFERRED, "sparse": []}
    return make_plan(instructions={"image": img}, server="10.0.0.2", hostname="n1",
                     targets=[Disk("vda", 20 << 30)], fw="bios", ram_bytes=1 << 30,
                     have_tool=lambda t: True, probe=NoProbe())


@pytest.mark.parametrize(("deferred", "breaks", "ram", "beside"), [
    (True, False, 512 << 20, True),
    (True, False, restpull.BESIDE_MIN_RAM, True),
    (True, False, restpull.BESIDE_MIN_RAM - 1, False),  # a small machine: one rsync at a time
    (True, True, 512 << 20, False),  # a breakpoint: one phase at a time
    (False, False, 512 << 20, False),  # nothing deferred
])
def test_when_the_rest_comes_beside_the_bulk(deferred: bool, breaks: bool, ram: int,
                                              beside: bool) -> None:
    assert restpull.beside_bulk(deferred, breaks, ram) is beside


class FakeRsync:
    """The rsync process a pull would run: ends when asked, or terminated."""

    def __init__(self) -> None:
        self.ended = threading.Event()
        self.terminated = False

    def poll(self) -> int | None:
        return 0 if self.ended.is_set() else None

    def terminate(self) -> None:
        self.terminated = True
        self.ended.set()


def fake_pulls(monkeypatch: pytest.MonkeyPatch, log: list[str], rest_fails: bool = False
               ) -> tuple[FakeRsync, FakeRsync]:
    """pull_except (the bulk) and pull_only (the rest) as fake rsync runs
    that log their start and end; each ends when its FakeRsync does."""
    bulk, rest = FakeRsync(), FakeRsync()

    def fake(proc: FakeRsync, name: str, fails: bool) -> Any:
        def pull(url: str, root: Path, *a: Any, started: Any = None, **kw: Any) -> Any:
            log.append(f"{name}:start")
            if started:
                started(proc)
            assert proc.ended.wait(5), f"{name} was never let end"
            log.append(f"{name}:end")
            if proc.terminated or fails:
                raise flow.FetchError(f"rsync {name}: exit code 20")
            return flow.FetchResult(1 << 20, 0.1)
        return pull

    monkeypatch.setattr(flow, "pull_except", fake(bulk, "bulk", False))
    monkeypatch.setattr(flow, "pull_only", fake(rest, "rest", rest_fails))
    monkeypatch.setattr(flow, "used_bytes", lambda mounts: 0)
    return bulk, rest


def test_the_rest_comes_beside_the_bulk(monkeypatch: pytest.MonkeyPatch,
                                        tmp_path: Path) -> None:
    log: list[str] = []
    bulk, rest_rsync = fake_pulls(monkeypatch, log)
    rep = Recorder([])
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    plan = beside_plan()
    rest = flow.rest_of_image(s, plan, tmp_path, 0, beside=True)
    rest.begin()
    # The bulk ends only once the rest has started: were they one after
    # the other, this would wait forever (the fake's 5 s, then fail).
    threading.Thread(target=_when, args=(log, "rest:start", bulk.ended.set)).start()
    flow.pull_image(s, plan, tmp_path, 0, rest)
    assert log.index("rest:start") < log.index("bulk:end")
    assert any(line.endswith("2 directories beside it") for line in rep.lines), rep.lines
    rest_rsync.ended.set()
    rest.finish()
    assert rest.done and rest.arrived()
    assert sorted(rep.phases("done")) == ["fetch", "fetch-rest"]
    rest.stop()  # after the end: nothing to stop
    assert not rest_rsync.terminated


def _when(log: list[str], line: str, then: Any, timeout: float = 5) -> None:
    import time
    deadline = time.monotonic() + timeout
    while line not in log and time.monotonic() < deadline:
        time.sleep(0.01)
    then()


def test_a_failed_bulk_stops_the_rest_before_unmounting(monkeypatch: pytest.MonkeyPatch,
                                                        tmp_path: Path) -> None:
    """The bulk fails while the rest comes: its rsync is ended, and the
    rest is reported stopped -- the one failure reported is the bulk's."""
    log: list[str] = []
    _, rest_rsync = fake_pulls(monkeypatch, log)
    monkeypatch.setattr(flow, "pull_except", _failing_bulk(log))
    rep = Recorder([])
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    plan = beside_plan()
    rest = flow.rest_of_image(s, plan, tmp_path, 0, beside=True)
    rest.begin()
    _when(log, "rest:start", lambda: None)
    with pytest.raises(InstallFailed) as e:
        flow.pull_image(s, plan, tmp_path, 0, rest)
    assert "connection refused" in e.value.message
    rest.stop()  # what install()'s ExitStack does before the unmounts
    assert rest_rsync.terminated and rest.done and not rest.arrived()
    failed = [ev[2] for ev in rep.log if ev[:2] == ("event", "failed")]
    assert [f["phase"] for f in failed] == ["fetch"]
    assert rep.phases("stopped") == ["fetch-rest"]
    assert "[fetch-rest] stopped: the install failed elsewhere" in rep.lines


def _failing_bulk(log: list[str]) -> Any:
    def pull(*a: Any, **kw: Any) -> Any:
        log.append("bulk:failed")
        raise flow.FetchError("rsync: connection refused")
    return pull


def test_a_failed_rest_beside_the_bulk_ends_the_install_before_configuring(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    log: list[str] = []
    bulk, rest_rsync = fake_pulls(monkeypatch, log, rest_fails=True)
    rep = Recorder([])
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    plan = beside_plan()
    rest = flow.rest_of_image(s, plan, tmp_path, 0, beside=True)
    rest.begin()
    rest_rsync.ended.set()  # the rest fails first ...
    assert not rest.arrived()
    bulk.ended.set()  # ... then the bulk comes
    flow.pull_image(s, plan, tmp_path, 0, rest)
    with pytest.raises(InstallFailed) as e:
        rest.check()  # install() asks right after the bulk
    assert "rsync rest: exit code 20" in e.value.message
    assert [ev[2]["phase"] for ev in rep.log if ev[:2] == ("event", "failed")] == ["fetch-rest"]
