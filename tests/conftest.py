"""Shared test fixtures and hooks.

Unit tests must never run a real command: `sysclone.run._popen` is replaced
by a fake that raises unless a test registers the argv it expects (see
`fake_commands`).  Integration and e2e tests are marked and opt out.

Under CI=true a skipped test fails the run: on CI a skip hides a test that
did not run.  Tests that read the SystemImager compatibility corpus
(`compat`, found only beside this checkout in ../shared) are deselected, not
skipped, when it is absent: the project's own fixtures (tests/unit/data/si)
cover the same features, and the corpus is an extra check where it exists.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

# pytester runs an inner pytest in this process: the hooks below are tested
# that way (tests/unit/test_ci_skips.py).
pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parent.parent
# The compatibility corpus beside this checkout; SYSCLONE_COMPAT points
# elsewhere (a path that does not exist shows what a bare clone runs).
COMPAT = Path(os.environ.get("SYSCLONE_COMPAT")
              or REPO.parent / "shared" / "compat" / "systemimager").resolve()
DATA = Path(__file__).resolve().parent / "unit" / "data"


@dataclass
class FakeResult:
    stdout: str | bytes = ""  # given to a command run with text=False as UTF-8
    stderr: str | bytes = ""
    returncode: int = 0


@dataclass
class FakeCommands:
    """Answers commands by argv prefix; anything unregistered fails the test."""

    rules: list[tuple[list[str], FakeResult | Callable[[list[str]], FakeResult]]] = field(
        default_factory=list
    )
    calls: list[list[str]] = field(default_factory=list)

    def add(self, prefix: list[str], result: FakeResult | Callable[[list[str]], FakeResult]
            | str = "") -> None:
        if isinstance(result, str):
            result = FakeResult(stdout=result)
        self.rules.append((prefix, result))

    def popen(self, args: list[str], **kwargs: Any) -> Any:
        self.calls.append(args)
        for prefix, result in reversed(self.rules):
            if args[: len(prefix)] == prefix:
                r = result(args) if callable(result) else result
                if kwargs.get("text", True) is False:  # as a real pipe gives it
                    r = replace(r, stdout=_raw(r.stdout), stderr=_raw(r.stderr))
                return _FakeProc(args, r)
        raise AssertionError(f"unit test tried to run a real command: {args}")


def rsync_listing(missing: tuple[str, ...] = ()) -> Callable[[list[str]], FakeResult]:
    """A fake `rsync --list-only --relative` of an image's paths (as
    agent.fetch.image_paths asks, each after a /./): every one is there but
    `missing`, which rsync reports with exit code 23."""
    def answer(argv: list[str]) -> FakeResult:
        asked = [a.split("/./", 1)[1] for a in argv if "/./" in a]
        out = "".join(f"-rw-r--r--  5 2024/01/01 00:00:00 {p}\n" for p in asked
                      if p not in missing)
        err = "".join(f'rsync: [sender] link_stat "{p}" (in deb12) failed: No such file or '
                      "directory (2)\n" for p in asked if p in missing)
        return FakeResult(stdout=out, stderr=err, returncode=23 if err else 0)
    return answer


def _raw(out: str | bytes) -> bytes:
    return out.encode("utf-8", "surrogateescape") if isinstance(out, str) else out


class _FakeProc:
    def __init__(self, args: list[str], r: FakeResult) -> None:
        self.args = args
        self.returncode = r.returncode
        self._r = r
        self.stdout = io.StringIO(r.stdout) if isinstance(r.stdout, str) \
            else io.BytesIO(r.stdout)
        self.stderr = io.StringIO(r.stderr) if isinstance(r.stderr, str) \
            else io.BytesIO(r.stderr)

    def communicate(self, input: str | None = None, timeout: float | None = None):
        return self._r.stdout, self._r.stderr

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def terminate(self) -> None:
        pass

    def kill(self) -> None:
        pass


class _FakeMountCalls:
    """libc's mount(2) and umount2(2) for unit tests: each call goes into
    FakeCommands.calls as ["mount(2)", source, target, type, flags, data]
    or ["umount2(2)", target, flags], and succeeds."""

    def __init__(self, calls: list[list[str]]) -> None:
        self.calls = calls

    def mount(self, source: bytes, target: bytes, fstype: bytes | None, flags: Any,
              data: bytes | None) -> int:
        self.calls.append(["mount(2)", source.decode(), target.decode(),
                           (fstype or b"").decode(), hex(flags.value), (data or b"").decode()])
        return 0

    def umount2(self, target: bytes, flags: int) -> int:
        self.calls.append(["umount2(2)", target.decode(), str(flags)])
        return 0


class FakeDaemon:
    """Stands for a daemon process (rsync --daemon) started with
    sysclone.run.daemon: it runs until signalled."""

    def __init__(self) -> None:
        self.returncode: int | None = None
        self.stderr = None

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.returncode = -sig

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.returncode = -9


def _is_unit(request: pytest.FixtureRequest) -> bool:
    marks = {m.name for m in request.node.iter_markers()}
    return not marks & {"integration", "e2e", "lint"}


@pytest.fixture(autouse=True)
def _no_real_commands(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch):
    if not _is_unit(request):
        yield None
        return
    fake = FakeCommands()
    monkeypatch.setattr("sysclone.run._popen", fake.popen)
    # The chroot's mounts are kernel calls (agent.chroot): recorded, never made.
    monkeypatch.setattr("agent.chroot._libc", lambda: _FakeMountCalls(fake.calls))
    # Belt and braces: a module calling subprocess directly is caught too.
    def _refuse(*a: Any, **k: Any) -> Any:
        raise AssertionError(f"unit test called subprocess directly: {a}")
    monkeypatch.setattr(subprocess, "Popen", _refuse)
    yield fake


@pytest.fixture
def fake_commands(_no_real_commands: FakeCommands | None) -> FakeCommands:
    assert _no_real_commands is not None, "fake_commands is for unit tests"
    return _no_real_commands


@pytest.fixture
def compat() -> Path:
    if not COMPAT.is_dir():  # deselected below; this is for a test run by its id
        pytest.skip(f"compatibility corpus not found at {COMPAT}")
    return COMPAT


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without the corpus, its tests are deselected (reported as such), so
    that they neither run nor count as skipped."""
    if COMPAT.is_dir():
        return
    corpus = [i for i in items if "compat" in getattr(i, "fixturenames", ())]
    if corpus:
        config.hook.pytest_deselected(items=corpus)
        items[:] = [i for i in items if i not in corpus]


def ci_strict(environ: dict[str, str] | os._Environ[str] = os.environ) -> bool:
    """CI=true (as GitHub, GitLab and most CI systems set it)."""
    return environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skipped_reports(config: pytest.Config) -> list[pytest.TestReport | pytest.CollectReport]:
    """Every skip the terminal reporter saw (expected failures are not skips)."""
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is None:
        return []
    return [r for r in terminal.stats.get("skipped", []) if not hasattr(r, "wasxfail")]


def skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, skipped tests fail the run, each listed with its reason."""
    if not ci_strict():
        return
    skipped = skipped_reports(session.config)
    if not skipped:
        return
    terminal = session.config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.section("skipped tests fail the run under CI=true", sep="=", red=True)
        for r in skipped:
            terminal.line(f"SKIPPED {r.nodeid}: {skip_reason(r)}")
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
