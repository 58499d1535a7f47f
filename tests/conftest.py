"""Shared test fixtures.

Unit tests must never run a real command: `sysclone.run._popen` is replaced
by a fake that raises unless a test registers the argv it expects (see
`fake_commands`).  Integration and e2e tests are marked and opt out.
"""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPAT = (REPO.parent / "shared" / "compat" / "systemimager").resolve()
DATA = Path(__file__).resolve().parent / "unit" / "data"


@dataclass
class FakeResult:
    stdout: str = ""
    stderr: str = ""
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
                return _FakeProc(args, r)
        raise AssertionError(f"unit test tried to run a real command: {args}")


class _FakeProc:
    def __init__(self, args: list[str], r: FakeResult) -> None:
        self.args = args
        self.returncode = r.returncode
        self._r = r
        self.stdout = io.StringIO(r.stdout)
        self.stderr = io.StringIO(r.stderr)

    def communicate(self, input: str | None = None, timeout: float | None = None):
        return self._r.stdout, self._r.stderr

    def poll(self) -> int:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return self.returncode

    def kill(self) -> None:
        pass


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
    if not COMPAT.is_dir():
        pytest.skip(f"compatibility corpus not found at {COMPAT}")
    return COMPAT


def needs_root() -> pytest.MarkDecorator:
    return pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
