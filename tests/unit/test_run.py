"""sysclone.run (the one place commands run), sysclone.errors and
sysclone.paths."""

from __future__ import annotations

import io
import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest

from sysclone import run as runmod
from sysclone.errors import CommandError, ConfigError, SyscloneError
from sysclone.paths import DEFAULT_ROOT, StateRoot
from sysclone.run import base_env, daemon, interactive, output, run, spawn, which
from tests.conftest import FakeResult


@pytest.fixture
def popen_calls(fake_commands, monkeypatch) -> list[tuple[list[str], dict[str, Any]]]:
    """The fake commands, plus what run() asked Popen for (stdin, env, cwd...)."""
    seen: list[tuple[list[str], dict[str, Any]]] = []

    def recording(args: list[str], **kw: Any) -> Any:
        seen.append((args, kw))
        return fake_commands.popen(args, **kw)

    monkeypatch.setattr(runmod, "_popen", recording)
    return seen


# ------------------------------------------------------------ base_env ---

def test_base_env_is_trimmed_and_predictable(monkeypatch):
    monkeypatch.setenv("LANGUAGE", "de_DE")
    monkeypatch.setenv("LC_MESSAGES", "fr_FR.UTF-8")
    monkeypatch.setenv("GREP_OPTIONS", "--color")
    monkeypatch.setenv("PATH", "/home/me/bin:/usr/bin")
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert base_env() == {"PATH": runmod.DEFAULT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
                          "HOME": "/root", "TERM": "xterm", "SOURCE_DATE_EPOCH": "1700000000"}


def test_base_env_extra_wins(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    env = base_env({"DEBIAN_FRONTEND": "noninteractive", "HOME": "/tmp/h"})
    assert env["DEBIAN_FRONTEND"] == "noninteractive"
    assert env["HOME"] == "/tmp/h"
    assert "TERM" not in env


# ----------------------------------------------------------------- run ---

def test_run_returns_output_and_passes_a_clean_environment(popen_calls, fake_commands):
    fake_commands.add(["lsblk", "-J"], FakeResult(stdout='{"blockdevices": []}\n', stderr="w"))
    r = run(["lsblk", "-J"], cwd=Path("/tmp"))
    assert r.returncode == 0
    assert r.stdout == '{"blockdevices": []}\n'
    assert r.stderr == "w"
    assert r.args == ["lsblk", "-J"]
    args, kw = popen_calls[0]
    assert args == ["lsblk", "-J"]
    assert kw["stdin"] == subprocess.DEVNULL  # stdin closed
    assert kw["stdout"] == kw["stderr"] == subprocess.PIPE
    assert kw["env"]["LC_ALL"] == "C.UTF-8" and kw["env"]["PATH"] == runmod.DEFAULT_PATH
    assert kw["cwd"] == Path("/tmp")


def test_run_converts_paths_and_chroots_with_target(popen_calls, fake_commands):
    fake_commands.add(["chroot", "/mnt/target", "update-initramfs", "-u"], "")
    run(["update-initramfs", "-u"], target=Path("/mnt/target"))
    fake_commands.add(["mkfs.ext4"], "")
    run(["mkfs.ext4", Path("/dev/vda1")])
    assert [a for a, _ in popen_calls] == [["chroot", "/mnt/target", "update-initramfs", "-u"],
                                           ["mkfs.ext4", "/dev/vda1"]]


def test_run_input_opens_stdin(popen_calls, fake_commands):
    fake_commands.add(["sfdisk", "/dev/vda"], "ok")
    run(["sfdisk", "/dev/vda"], input="label: gpt\n")
    assert popen_calls[0][1]["stdin"] == subprocess.PIPE


def test_run_without_capture_lets_output_through(popen_calls, fake_commands):
    fake_commands.add(["rsync"], "")
    run(["rsync", "-a", "src/", "dst/"], capture=False)
    assert popen_calls[0][1]["stdout"] is None and popen_calls[0][1]["stderr"] is None
    buf = io.BytesIO()
    run(["rsync", "x"], stdout=buf)
    assert popen_calls[1][1]["stdout"] is buf


def test_run_empty_command():
    with pytest.raises(ValueError, match="empty command"):
        run([])


def test_run_failure_raises_command_error_with_the_tail(fake_commands):
    err = "".join(f"line {i}\n" for i in range(1, 9))
    fake_commands.add(["mkfs.xfs"], FakeResult(stdout="out", stderr=err, returncode=1))
    with pytest.raises(CommandError) as e:
        run(["mkfs.xfs", "-f", "/dev/vda2"])
    assert str(e.value) == ("command 'mkfs.xfs' failed with exit code 1: "
                            "line 4; line 5; line 6; line 7; line 8")
    assert e.value.argv == ["mkfs.xfs", "-f", "/dev/vda2"]
    assert e.value.returncode == 1
    assert e.value.stdout == "out" and e.value.stderr == err


def test_run_failure_logs_the_command_at_debug(fake_commands, caplog):
    fake_commands.add(["false"], FakeResult(returncode=1))
    caplog.set_level(logging.DEBUG, logger="sysclone.run")
    with pytest.raises(CommandError):
        run(["false", "a b"])
    assert "+ false 'a b'" in caplog.text
    assert "command failed (1): false 'a b'" in caplog.text


def test_run_check_false_returns_the_failure(fake_commands):
    fake_commands.add(["ldd"], FakeResult(stderr="not a dynamic executable", returncode=1))
    r = run(["ldd", "/x"], check=False)
    assert r.returncode == 1 and r.stderr == "not a dynamic executable"


def test_run_command_not_found(monkeypatch):
    def missing(args: list[str], **kw: Any) -> Any:
        raise FileNotFoundError(2, "No such file or directory", args[0])

    monkeypatch.setattr(runmod, "_popen", missing)
    with pytest.raises(SyscloneError, match="command not found: mdadm") as e:
        run(["mdadm", "--detail", "--scan"])
    assert e.value.hint == "install the package that provides it"
    with pytest.raises(SyscloneError, match="command not found: qemu-system-x86_64"):
        daemon(["qemu-system-x86_64"])


class _Hung:
    """A process that never finishes by itself."""

    def __init__(self, args: list[str]) -> None:
        self.args = args
        self.killed = False
        self.returncode: int | None = None

    def communicate(self, input: str | None = None, timeout: float | None = None):
        if not self.killed:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return "partial output", ""

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9


def test_run_timeout_kills_the_command(fake_commands, monkeypatch):
    procs: list[_Hung] = []

    def popen(args: list[str], **kw: Any) -> Any:
        if args[:1] == ["udevadm"]:
            procs.append(_Hung(args))
            return procs[-1]
        return fake_commands.popen(args, **kw)

    monkeypatch.setattr(runmod, "_popen", popen)
    with pytest.raises(CommandError) as e:
        run(["udevadm", "settle"], timeout=3)
    assert procs[0].killed
    assert e.value.returncode == -9
    assert str(e.value) == "command 'udevadm' failed with exit code -9: timed out after 3s"


def test_output(fake_commands):
    fake_commands.add(["blkid", "-o", "value"], "ext4\n")
    assert output(["blkid", "-o", "value", "-s", "TYPE", "/dev/vda1"]) == "ext4\n"


# ----------------------------------------------------- spawn / daemon ---

class _Streaming:
    def __init__(self, args: list[str], running: bool) -> None:
        self.args = args
        self.stdout = io.StringIO("sent 1,024 bytes\n")
        self.stderr = None
        self.returncode: int | None = None if running else 0
        self.killed = False

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        self.killed = True
        self.returncode = -9

    def wait(self, timeout: float | None = None) -> int | None:
        return self.returncode


@pytest.mark.parametrize("running", [True, False])
def test_spawn_kills_what_is_still_running_and_closes_pipes(monkeypatch, running):
    seen: list[tuple[_Streaming, dict[str, Any]]] = []

    def popen(args: list[str], **kw: Any) -> Any:
        assert args == ["rsync", "--progress", "a", "b"]
        seen.append((_Streaming(args, running), kw))
        return seen[-1][0]

    monkeypatch.setattr(runmod, "_popen", popen)
    with spawn(["rsync", "--progress", "a", "b"]) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "sent 1,024 bytes\n"
    p, kw = seen[0]
    assert kw["stderr"] == subprocess.STDOUT and kw["stdout"] == subprocess.PIPE
    assert kw["stdin"] == subprocess.DEVNULL and kw["bufsize"] == 1
    assert p.killed is running
    assert p.stdout.closed


def test_spawn_separate_stderr(popen_calls, fake_commands):
    fake_commands.add(["chroot", "/sysroot", "udevadm", "monitor"], "")
    with spawn(["udevadm", "monitor"], merge_stderr=False, target=Path("/sysroot")):
        pass
    args, kw = popen_calls[0]
    assert args == ["chroot", "/sysroot", "udevadm", "monitor"]
    assert kw["stderr"] == subprocess.PIPE


def test_daemon_and_interactive(popen_calls, fake_commands):
    fake_commands.add(["rsync", "--daemon"], "")
    fake_commands.add(["/bin/sh"], FakeResult(returncode=3))
    daemon(["rsync", "--daemon", "--no-detach"])
    assert interactive(["/bin/sh", "-i"]) == 3
    (_, dkw), (_, ikw) = popen_calls
    assert dkw["stdin"] == subprocess.DEVNULL and dkw["stdout"] == subprocess.DEVNULL
    assert dkw["stderr"] == subprocess.PIPE
    assert "stdin" not in ikw and "stdout" not in ikw  # the terminal's own
    assert ikw["env"]["PATH"] == runmod.DEFAULT_PATH


def test_unregistered_commands_fail_the_test(fake_commands):
    with pytest.raises(AssertionError, match="tried to run a real command"):
        run(["rm", "-rf", "/"])
    with pytest.raises(AssertionError, match="called subprocess directly"):
        subprocess.Popen(["true"])


# --------------------------------------------------------------- which ---

def test_which_uses_the_fixed_path(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "tool").write_text("not executable")
    (a / "tool").chmod(0o644)
    (b / "tool").write_text("#!/bin/sh\n")
    (b / "tool").chmod(0o755)
    (a / "dir").mkdir()
    (b / "other").write_text("#!/bin/sh\n")
    (b / "other").chmod(0o755)
    (a / "other").write_text("#!/bin/sh\n")
    (a / "other").chmod(0o755)
    monkeypatch.setattr(runmod, "DEFAULT_PATH", f"{a}:{b}")
    assert which("tool") == str(b / "tool")
    assert which("other") == str(a / "other")  # first directory wins
    assert which("dir") is None
    assert which("nothing") is None


# -------------------------------------------------------------- errors ---

def test_error_str_and_dict():
    e = SyscloneError("disk /dev/vdb too small", hint="use a bigger disk", disk="/dev/vdb",
                      needed=None, size=1024)
    assert str(e) == "disk /dev/vdb too small (use a bigger disk)"
    assert e.to_dict() == {"error": "SyscloneError", "message": "disk /dev/vdb too small",
                           "hint": "use a bigger disk", "disk": "/dev/vdb", "size": 1024}
    plain = ConfigError("bad value")
    assert str(plain) == "bad value"
    assert plain.to_dict() == {"error": "ConfigError", "message": "bad value"}
    assert isinstance(plain, SyscloneError)


def test_command_error_fields():
    e = CommandError(["sfdisk", "/dev/vda"], 2, stdout="only stdout\n")
    assert str(e) == "command 'sfdisk' failed with exit code 2: only stdout"
    assert e.to_dict() == {"error": "CommandError", "message": str(e),
                           "argv": ["sfdisk", "/dev/vda"], "returncode": 2}
    assert str(CommandError(["true"], 1)) == "command 'true' failed with exit code 1: no output"


# --------------------------------------------------------------- paths ---

def test_state_root_defaults(monkeypatch):
    monkeypatch.delenv("SYSCLONE_ROOT", raising=False)
    monkeypatch.delenv("SYSCLONE_CACHE", raising=False)
    s = StateRoot.from_options()
    assert s.root == DEFAULT_ROOT == Path("/var/lib/sysclone")
    assert s.cache_dir == DEFAULT_ROOT / "cache"


def test_state_root_environment_and_options(monkeypatch, tmp_path):
    monkeypatch.setenv("SYSCLONE_ROOT", str(tmp_path / "env-root"))
    monkeypatch.setenv("SYSCLONE_CACHE", str(tmp_path / "env-cache"))
    s = StateRoot.from_options()
    assert (s.root, s.cache_dir) == (tmp_path / "env-root", tmp_path / "env-cache")
    s = StateRoot.from_options(tmp_path / "opt-root", tmp_path / "opt-cache")
    assert (s.root, s.cache_dir) == (tmp_path / "opt-root", tmp_path / "opt-cache")


def test_state_root_relative_paths_become_absolute(monkeypatch, tmp_path):
    monkeypatch.delenv("SYSCLONE_CACHE", raising=False)
    monkeypatch.chdir(tmp_path)
    s = StateRoot.from_options("state")
    assert s.root == tmp_path / "state"
    assert s.cache_dir == tmp_path / "state/cache"
    assert StateRoot.from_options("state", "c").cache_dir == tmp_path / "c"


def test_state_root_layout(tmp_path):
    s = StateRoot(tmp_path, tmp_path / "shared-cache")
    assert s.images == tmp_path / "images"
    assert s.kernels == tmp_path / "kernels"
    assert s.bootenvs == tmp_path / "bootenv"
    assert s.scripts == tmp_path / "scripts"
    assert s.overrides == tmp_path / "overrides"
    assert s.pxe == tmp_path / "pxe"
    assert s.run == tmp_path / "run"
    assert s.logs == tmp_path / "log"
    assert s.vms == tmp_path / "vms"
    assert s.cache("debootstrap", "bookworm.tar") == \
        tmp_path / "shared-cache/debootstrap/bookworm.tar"
    assert not tmp_path.joinpath("images").exists()  # nothing created by asking
