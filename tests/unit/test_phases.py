"""The phase runner: events for start/done/failed/skipped, timings, si.break
stopping before a phase, and errors turned into InstallFailed."""

from __future__ import annotations

import io
from typing import Any

import pytest

from agent import phases
from agent.phases import (
    ALIASES,
    PHASES,
    InstallFailed,
    Steps,
    break_names,
    canonical,
)
from agent.report import Reporter
from sysclone.errors import ConfigError
from tests.unit.agentfakes import FakeClock


class Recorder(Reporter):
    """A Reporter that also keeps what happened, in order."""

    def __init__(self, log: list[Any]) -> None:
        super().__init__(console=io.StringIO())
        self.log = log

    def event(self, kind: str, **data: Any) -> None:
        super().event(kind, **data)
        self.log.append(("event", kind, data))

    def say(self, text: str) -> None:
        super().say(text)
        self.log.append(("say", text))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    c = FakeClock()
    monkeypatch.setattr(phases, "time", c)
    return c


def events(log: list[Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(e[1], e[2]) for e in log if e[0] == "event"]


def test_phase_reports_start_and_done_with_its_time(clock: FakeClock) -> None:
    log: list[Any] = []
    steps = Steps(Recorder(log))
    with steps.phase("partition"):
        assert steps.current == "partition"
        clock.now += 2.345
    assert steps.current is None
    assert events(log) == [
        ("phase", {"phase": "partition", "status": "start", "title": "partition the disks"}),
        ("phase", {"phase": "partition", "status": "done", "seconds": 2.35}),
    ]
    assert ("say", "[partition] partition the disks") in log
    assert steps.timings == [("partition", pytest.approx(2.345))]


def test_timings_accumulate_in_order(clock: FakeClock) -> None:
    steps = Steps(Recorder([]))
    for name, dt in (("hardware", 1.0), ("network", 3.0), ("monitor", 0.5)):
        with steps.phase(name):
            clock.now += dt
    assert steps.timings == [("hardware", 1.0), ("network", 3.0), ("monitor", 0.5)]


def test_events_carry_the_clients_identity() -> None:
    rep = Reporter(console=io.StringIO())
    rep.client.update({"mac": "02:fc:00:00:00:01", "hostname": "node07"})
    with Steps(rep).phase("format"):
        pass
    ev = rep._pending[0]
    assert (ev["kind"], ev["mac"], ev["hostname"], ev["phase"]) == \
        ("phase", "02:fc:00:00:00:01", "node07", "format")


def test_break_runs_the_shell_before_the_phase(clock: FakeClock) -> None:
    log: list[Any] = []
    steps = Steps(Recorder(log), breaks=frozenset({"partition"}),
                  shell=lambda name: log.append(("shell", name)))
    with steps.phase("plan"):
        pass
    with steps.phase("partition"):
        log.append(("body", "partition"))
    kinds = [e[0] if e[0] != "event" else f"{e[1]}:{e[2]['phase']}:{e[2]['status']}"
             for e in log if e[0] != "say"]
    assert kinds == ["phase:plan:start", "phase:plan:done", "shell", "phase:partition:start",
                     "body", "phase:partition:done"]
    assert ("say", "breakpoint before partition: exit the shell to continue") in log
    assert ("shell", "partition") in log


def test_break_without_a_shell_does_nothing() -> None:
    log: list[Any] = []
    with Steps(Recorder(log), breaks=frozenset({"fetch"})).phase("fetch"):
        pass
    assert len(events(log)) == 2


def test_sysclone_error_becomes_install_failed(clock: FakeClock) -> None:
    log: list[Any] = []
    steps = Steps(Recorder(log))
    cause = ConfigError("disk /dev/vda is too small", hint="use a bigger disk", disk="/dev/vda")
    with pytest.raises(InstallFailed) as e, steps.phase("plan"):
        raise cause
    assert e.value.message == "disk /dev/vda is too small"
    assert e.value.hint == "use a bigger disk"
    assert e.value.fields == {"phase": "plan"}
    assert e.value.__cause__ is cause
    assert events(log)[1:] == [("failed", {
        "phase": "plan", "message": "disk /dev/vda is too small",
        "detail": {"error": "ConfigError", "message": "disk /dev/vda is too small",
                   "hint": "use a bigger disk", "disk": "/dev/vda"}})]
    assert steps.timings == []
    assert steps.current == "plan"  # where it stopped


def test_a_crash_is_reported_with_its_type() -> None:
    log: list[Any] = []
    params: dict[str, str] = {}
    with pytest.raises(InstallFailed) as e, Steps(Recorder(log)).phase("configure"):
        params["hostname"]
    assert e.value.message == "KeyError: 'hostname'"
    assert e.value.fields == {"phase": "configure"}
    assert isinstance(e.value.__cause__, KeyError)
    assert events(log)[-1] == ("failed", {"phase": "configure",
                                          "message": "KeyError: 'hostname'",
                                          "detail": {"error": "KeyError"}})


def test_skipped() -> None:
    log: list[Any] = []
    Steps(Recorder(log)).skipped("overrides", "no overrides for this client")
    assert log == [("say", "[overrides] skipped: no overrides for this client"),
                   ("event", "phase", {"phase": "overrides", "status": "skipped",
                                       "reason": "no overrides for this client"})]


def test_unknown_phase_is_a_bug() -> None:
    with pytest.raises(KeyError), Steps(Recorder([])).phase("reticulate"):
        pass


def test_break_names_include_systemimager_steps() -> None:
    names = break_names()
    assert {p.name for p in PHASES} <= names
    for si, ours in (("prepare-disks", "partition"), ("download-image", "fetch"),
                     ("extract-image", "fetch"), ("boot-loader", "bootloader"),
                     ("install-overrides", "overrides"), ("download-scripts", "instructions"),
                     ("network-infos", "network"), ("finished", "finish")):
        assert si in names
        assert canonical(si) == ours
    assert canonical("fetch") == "fetch"
    assert "no-such-step" not in names


def test_phase_names_and_aliases_do_not_collide() -> None:
    names = [p.name for p in PHASES]
    assert len(names) == len(set(names))
    # An alias that is also a phase name (monitor) must mean that phase.
    assert all(ALIASES[a] == a for a in set(ALIASES) & set(names))
    assert names == ["hardware", "network", "monitor", "instructions", "plan",
                     "pre-install", "partition", "assemble", "format", "mount", "fetch",
                     "overrides", "fetch-rest",
                     "configure", "initrd", "host-keys", "bootloader", "post-install", "finish"]


def test_done_events_say_how_much_memory_is_left(clock: FakeClock, tmp_path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:         116416 kB\nMemFree:           9020 kB\n"
                       "MemAvailable:      41276 kB\n")
    log: list[Any] = []
    with Steps(Recorder(log), meminfo=meminfo).phase("fetch"):
        pass
    assert events(log)[-1] == ("phase", {"phase": "fetch", "status": "done", "seconds": 0.0,
                                          "mem_available_kib": 41276})
    assert phases.mem_available_kib(tmp_path / "missing") is None
