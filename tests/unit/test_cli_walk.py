"""No `sysclone` command ends in a traceback on a user's mistake.

Every subcommand of the parser (walked, so new ones are covered without
touching this file) runs on an empty state root, with no tool installed
(every command fails as not found) and no network (every connection is
refused): it must succeed, or end with exactly one `sysclone: error: ...`
line.  Downloads fail on the refused connection, servers and VMs on the
missing tools, before anything starts."""

from __future__ import annotations

import argparse
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sysclone.cli import build_parser, main


def leaves(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
           ) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                if sub.get_default("fn"):
                    yield (*prefix, name), sub
                yield from leaves(sub, (*prefix, name))


def argv_for(path: tuple[str, ...], sub: argparse.ArgumentParser, positional: str) -> list[str]:
    """The command with a value for each required positional argument."""
    argv = list(path)
    for a in sub._actions:
        if not a.option_strings and a.nargs not in ("*", "?", argparse.REMAINDER):
            argv.append(positional)
    return argv


COMMANDS = [(" ".join(p), sub) for p, sub in leaves(build_parser())]


@pytest.fixture
def nothing_installed_no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[list[str]]]:
    tried: list[list[str]] = []

    def not_installed(args: list[str], **kw: Any) -> Any:
        tried.append(args)
        raise FileNotFoundError(2, "No such file or directory", args[0])

    def refused(*a: Any, **k: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused (no network in unit tests)")

    monkeypatch.setattr("sysclone.run._popen", not_installed)
    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)  # download retries
    old_term = signal.getsignal(signal.SIGTERM)  # serve installs its own
    yield tried
    signal.signal(signal.SIGTERM, old_term)


def test_the_walk_finds_every_command() -> None:
    assert {name for name, _ in COMMANDS} >= {"image bootstrap", "pxe build", "serve", "demo",
                                              "kernel fetch", "bootenv build", "params"}


@pytest.mark.parametrize("positional", ["x", "../x"])
@pytest.mark.parametrize(("name", "sub"), COMMANDS, ids=[n for n, _ in COMMANDS])
def test_no_traceback_on_an_empty_root(name: str, sub: argparse.ArgumentParser, positional: str,
                                       tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       nothing_installed_no_network: list[list[str]]) -> None:
    argv = argv_for(tuple(name.split()), sub, positional)
    rc = main(["--root", str(tmp_path / "root"), "--cache", str(tmp_path / "cache"), *argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.out + cap.err
    if rc == 0:
        assert "sysclone: error:" not in cap.err
        return
    errors = [line for line in cap.err.splitlines() if line.startswith("sysclone: error: ")]
    assert len(errors) == 1, cap.err
    assert cap.err.splitlines()[-1] == errors[0]
    assert len(errors[0]) > len("sysclone: error: ") + 10
