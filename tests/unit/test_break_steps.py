"""si.break: every accepted step name stops somewhere real.

SystemImager 4.9's twenty break steps and sysclone's phase names are
accepted; each maps onto a phase the flow really enters (or, for
parse-localcfg, the point before local.cfg is read); anything else is
refused with the valid names."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from agent.params import SI_BREAK_STEPS, parse_cmdline, resolve
from agent.phases import BY_NAME, PARAMS_STEP, PHASES, Steps, break_names, canonical
from agent.report import Reporter
from sysclone.errors import ConfigError

# The install flow, and its start (the hardware phase runs there).
FLOWS = [Path(__file__).resolve().parents[2] / "agent" / name for name in ("flow.py", "session.py")]


def test_every_systemimager_step_is_accepted() -> None:
    assert set(SI_BREAK_STEPS) <= break_names()
    resolved = resolve([parse_cmdline(" ".join(f"si.break={s}" for s in SI_BREAK_STEPS))],
                       break_steps=break_names())
    assert resolved.params.breaks == SI_BREAK_STEPS


@pytest.mark.parametrize("name", sorted(break_names()))
def test_every_accepted_name_maps_onto_a_phase_or_the_parameters(name: str) -> None:
    target = canonical(name)
    assert target in BY_NAME or target == PARAMS_STEP


@pytest.mark.parametrize(("si", "phase"), [
    ("parse-localcfg", PARAMS_STEP),  # before local.cfg: run_install stops for it
    ("se-linux", "configure"),  # where the relabel is prepared
    ("terminate-transfer", "finish"),  # after the transfer, with umount-client
    ("umount-client", "finish"),
    ("prepare-disks", "partition"),
])
def test_the_less_obvious_mappings(si: str, phase: str) -> None:
    assert canonical(si) == phase


@pytest.mark.parametrize("phase", [p.name for p in PHASES])
def test_the_flow_enters_every_phase(phase: str) -> None:
    """A phase the flow never entered would make its break names dead."""
    source = "".join(f.read_text() for f in FLOWS)
    assert re.search(rf'phase\("{phase}"\)|"{phase}": lambda', source), phase


@pytest.mark.parametrize("name", sorted(break_names() - {PARAMS_STEP}))
def test_a_break_runs_the_shell_before_its_phase(name: str) -> None:
    shells: list[str] = []
    steps = Steps(Reporter(console=io.StringIO()), breaks=frozenset({canonical(name)}),
                  shell=shells.append)
    with steps.phase(canonical(name)):
        assert shells == [canonical(name)]


def test_an_unknown_step_is_refused_with_the_valid_names() -> None:
    with pytest.raises(ConfigError) as e:
        resolve([parse_cmdline("si.break=selinux")], break_steps=break_names())
    assert e.value.message == ("si.break: 'selinux' is not a step of the install "
                               "(kernel command line)")
    assert e.value.hint == "did you mean 'se-linux'?"
    with pytest.raises(ConfigError) as e:
        resolve([parse_cmdline("si.break=reticulate")], break_steps=break_names())
    assert e.value.hint is not None and e.value.hint.startswith("steps: parse-localcfg, ")
    assert "se-linux" in e.value.hint and "bootloader" in e.value.hint


def test_passed_steps() -> None:
    steps = Steps(Reporter(console=io.StringIO()))
    assert steps.passed(PARAMS_STEP)
    assert not steps.passed("network")
    with steps.phase("network"):
        assert steps.passed("network") and steps.passed("ping")  # its SystemImager name
        assert not steps.passed("monitor")
    assert steps.passed("network-infos")
