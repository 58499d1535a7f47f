"""The one place where sysclone runs external commands.

Commands are argv lists only (never a shell string), run with a trimmed,
predictable environment and stdin closed, and logged as `+ cmd` at debug
level.  A failure raises CommandError carrying the command, its exit code and
the tail of its output.  `target=` runs the command chrooted into a tree.

Unit tests replace `_popen` so that no real command can run by accident.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

from sysclone.errors import CommandError, SyscloneError

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any


log = logging.getLogger(__name__)

# A fixed PATH: the host's and the boot environment's tools live in these.
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Arg = str | os.PathLike[str]


def base_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment commands run in: C locale, fixed PATH, nothing inherited
    that could change a tool's output (LANGUAGE, LC_*, GREP_OPTIONS...)."""
    env = {"PATH": DEFAULT_PATH, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "HOME": "/root"}
    for keep in ("TERM", "TMPDIR", "SOURCE_DATE_EPOCH"):
        if keep in os.environ:
            env[keep] = os.environ[keep]
    if extra:
        env.update(extra)
    return env


def _argv(argv: Sequence[Arg], target: Path | None) -> list[str]:
    args = [os.fspath(a) for a in argv]
    if not args:
        raise ValueError("empty command")
    if target is not None:
        args = ["chroot", os.fspath(target), *args]
    return args


def _popen(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    kwargs.setdefault("text", True)
    return subprocess.Popen(args, **kwargs)


def _start(args: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """_popen, with a missing program said as such."""
    try:
        return _popen(args, **kwargs)
    except FileNotFoundError as e:
        raise SyscloneError(
            f"command not found: {args[0]}", hint="install the package that provides it"
        ) from e


def run(
    argv: Sequence[Arg],
    *,
    check: bool = True,
    capture: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    target: Path | None = None,
    timeout: float | None = None,
    stdout: IO[Any] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion.  Output is captured by default (and shown
    in the error when it fails); pass capture=False to let it through."""
    args = _argv(argv, target)
    log.debug("+ %s", shlex.join(args))
    out: Any = stdout if stdout is not None else (subprocess.PIPE if capture else None)
    err: Any = subprocess.PIPE if capture else None
    proc = _start(
        args,
        stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
        stdout=out,
        stderr=err,
        env=base_env(env),
        cwd=cwd,
    )
    try:
        out_text, err_text = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out_text, _ = proc.communicate()
        raise CommandError(args, -9, out_text or "", f"timed out after {timeout}s") from None
    out_text, err_text = out_text or "", err_text or ""
    result = subprocess.CompletedProcess(args, proc.returncode, out_text, err_text)
    if check and proc.returncode != 0:
        log.debug("command failed (%d): %s\n%s", proc.returncode, shlex.join(args),
                  err_text or out_text)
        raise CommandError(args, proc.returncode, out_text, err_text)
    return result


def run_bytes(argv: Sequence[Arg], *, timeout: float | None = None
              ) -> subprocess.CompletedProcess[bytes]:
    """run() for output that is not text (NUL-separated file names in any
    encoding); the exit code is the caller's to judge."""
    args = _argv(argv, None)
    log.debug("+ %s", shlex.join(args))
    proc: Any = _start(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, env=base_env(), text=False)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise CommandError(args, -9, "", f"timed out after {timeout}s") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@contextmanager
def spawn(
    argv: Sequence[Arg],
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    target: Path | None = None,
    merge_stderr: bool = True,
) -> Iterator[subprocess.Popen[str]]:
    """Start a long-running command whose output is read as it comes (rsync
    progress, daemons).  The process is killed if the block exits early."""
    args = _argv(argv, target)
    log.debug("+ %s &", shlex.join(args))
    proc = _popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        env=base_env(env),
        cwd=cwd,
        bufsize=1,
    )
    with _reaped(proc):
        yield proc


@contextmanager
def spawn_raw(argv: Sequence[Arg]) -> Iterator[subprocess.Popen[bytes]]:
    """spawn() for output read in whatever pieces the pipe holds
    (stdout.read(n) returns at once with what there is), stderr merged:
    for output too plentiful to take a line at a time."""
    args = _argv(argv, None)
    log.debug("+ %s &", shlex.join(args))
    proc: Any = _popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, env=base_env(), text=False, bufsize=0)
    with _reaped(proc):
        yield proc


@contextmanager
def _reaped(proc: subprocess.Popen[Any]) -> Iterator[None]:
    """The process is killed if the block exits early, and waited for."""
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream:
                stream.close()


@contextmanager
def filtered(argv: Sequence[Arg], source: IO[bytes], head: bytes = b"",
             *, target: Path | None = None) -> Iterator[IO[bytes]]:
    """Stream `head` + the rest of `source` through a filter command (a
    decompressor) and yield its binary output, read as it comes: nothing is
    staged in memory or on disk.  Raises CommandError if the filter fails."""
    import threading

    args = _argv(argv, target)
    log.debug("+ %s (filter)", shlex.join(args))
    proc = _start(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                  stderr=subprocess.PIPE, env=base_env(), text=False)
    stdin, stdout = proc.stdin, proc.stdout
    assert stdin is not None and stdout is not None

    def feed() -> None:
        try:
            stdin.write(head)  # type: ignore[arg-type]
            for chunk in iter(lambda: source.read(1 << 20), b""):
                stdin.write(chunk)  # type: ignore[arg-type]
        except (BrokenPipeError, ValueError):
            pass  # the reader stopped early
        finally:
            with suppress(BrokenPipeError):
                stdin.close()

    feeder = threading.Thread(target=feed, name="filter-feed", daemon=True)
    feeder.start()
    ok = False
    try:
        yield stdout  # type: ignore[misc]
        stdout.read()  # drain: the filter must be able to finish
        ok = True
    finally:
        stdout.close()
        rc = proc.wait()
        feeder.join()
        err = proc.stderr.read() if proc.stderr else b""
        if proc.stderr:
            proc.stderr.close()
    if ok and rc != 0:
        raise CommandError(args, rc, "", err.decode(errors="replace") if isinstance(err, bytes)
                           else str(err))


def output(argv: Sequence[Arg], **kwargs: Any) -> str:
    """Run a command and return its stdout."""
    return run(argv, **kwargs).stdout


def which(name: str) -> str | None:
    """Find a tool on the fixed PATH commands run with."""
    for d in DEFAULT_PATH.split(":"):
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def daemon(argv: Sequence[Arg], *, env: Mapping[str, str] | None = None,
           stdout: IO[Any] | int | None = subprocess.DEVNULL,
           stderr: IO[Any] | int | None = subprocess.PIPE) -> subprocess.Popen[str]:
    """Start a process that outlives this call (a daemon in the foreground,
    a virtual machine).  The caller owns it and must stop it."""
    args = _argv(argv, None)
    log.debug("+ %s &", shlex.join(args))
    return _start(args, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                  env=base_env(env))


def interactive(argv: Sequence[Arg], *, env: Mapping[str, str] | None = None) -> int:
    """Run a command on this process's terminal (a rescue shell), stdin
    included, and return its exit status."""
    args = _argv(argv, None)
    log.debug("+ %s (interactive)", shlex.join(args))
    proc = _popen(args, env=base_env(env))
    return proc.wait()
