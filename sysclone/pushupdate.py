"""`sysclone push-update CLIENTS...` (SystemImager's si_pushupdate): run
updateclient on many clients over SSH, a few at a time, and summarize.

Nothing is installed on a client: the updateclient script goes through
the SSH connection's stdin (`ssh HOST python3 - ARGS < updateclient.py`),
so a client needs sshd, Python 3.9+ and rsync.  It syncs from the image
server named by --server, as the clients reach it (not necessarily the
address this machine knows it by).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

from agent.params.kinds import is_hostname
from sysclone.errors import CommandError, ConfigError, SyscloneError
from sysclone.run import run

_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,31}\Z")
_SSH_OPTION = re.compile(r"[A-Za-z]+=[^\s]+\Z")
DEFAULT_CONCURRENCY = 8
SSH_UNREACHABLE = 255


@dataclass(frozen=True)
class Target:
    user: str
    host: str
    port: int | None = None

    @property
    def name(self) -> str:
        return self.host if self.port is None else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """[USER@]HOST[:PORT]; an IPv6 address with a port is [ADDR]:PORT."""
    user, at, rest = text.rpartition("@")
    if not at:
        user = "root"
    port_s = ""
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_s = tail.removeprefix(":")
    elif rest.count(":") == 1:
        host, _, port_s = rest.partition(":")
    else:
        host = rest
    port = None
    if port_s:
        if not port_s.isdigit() or not 0 < int(port_s) < 65536:
            raise ConfigError(f"client {text!r}: {port_s!r} is not a port")
        port = int(port_s)
    if not _USER.match(user):
        raise ConfigError(f"client {text!r}: {user!r} is not a user name")
    if not (is_hostname(host) or _is_address(host)):
        raise ConfigError(f"client {text!r}: {host!r} is not a host",
                          hint="clients are [USER@]HOST[:PORT]")
    return Target(user, host, port)


def _is_address(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class PushOptions:
    server: str
    http_port: int = 8181
    image: str | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False
    excludes: tuple[str, ...] = ()
    health_checks: tuple[str, ...] = ()
    ssh_key: str | None = None
    ssh_options: tuple[str, ...] = ()
    timeout: int = 3600
    python: str = "python3"

    @classmethod
    def from_namespace(cls, a: argparse.Namespace) -> PushOptions:
        if a.concurrency < 1:
            raise ConfigError(f"--concurrency {a.concurrency}: at least 1")
        if a.timeout < 1:
            raise ConfigError(f"--timeout {a.timeout}: at least 1 second")
        for o in a.ssh_option or ():
            if not _SSH_OPTION.match(o):
                raise ConfigError(f"--ssh-option {o!r}: expected Name=value")
        if not re.fullmatch(r"[A-Za-z0-9./_-]+", a.python):
            raise ConfigError(f"--python {a.python!r} is not a command name")
        if any(c.isspace() for c in a.server) or a.server.startswith("-"):
            raise ConfigError(f"--server {a.server!r} is not a host")
        return cls(a.server, a.port, a.image, a.concurrency, a.dry_run, tuple(a.exclude or ()),
                   tuple(a.health_check or ()), a.ssh_key, tuple(a.ssh_option or ()),
                   a.timeout, a.python)

    def client_args(self) -> list[str]:
        args = ["--server", self.server, "--port", str(self.http_port), "--json"]
        if self.image:
            args += ["--image", self.image]
        if self.dry_run:
            args.append("--dry-run")
        for e in self.excludes:
            args += ["--exclude", e]
        for h in self.health_checks:
            args += ["--health-check", h]
        return args


@dataclass(frozen=True)
class PushResult:
    target: Target
    status: str  # ok | failed | rolled-back | unreachable
    seconds: float
    image: str = ""
    changes: int | None = None
    message: str = ""

    COLUMNS: ClassVar[tuple[str, ...]] = ("client", "status", "image", "changes", "seconds",
                                          "message")

    def row(self) -> dict[str, Any]:
        return {"client": self.target.name, "status": self.status, "image": self.image,
                "changes": "" if self.changes is None else self.changes,
                "seconds": f"{self.seconds:.0f}", "message": self.message[:70]}

    def line(self) -> str:
        what = f"{self.changes} changes" if self.changes is not None else self.message
        return f"{self.target.name}: {self.status} ({what}, {self.seconds:.0f}s)"


def ssh_argv(t: Target, opts: PushOptions, remote: list[str]) -> list[str]:
    import shlex

    argv = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=20"]
    if t.port:
        argv += ["-p", str(t.port)]
    if opts.ssh_key:
        argv += ["-i", opts.ssh_key]
    for o in opts.ssh_options:
        argv += ["-o", o]
    return [*argv, f"{t.user}@{t.host}", shlex.join(remote)]


def update_one(t: Target, opts: PushOptions, script: str) -> PushResult:
    t0 = time.monotonic()
    remote = [opts.python, "-", *opts.client_args()]
    try:
        res = run(ssh_argv(t, opts, remote), input=script, check=False, timeout=opts.timeout)
    except CommandError as e:  # the timeout
        return PushResult(t, "failed", time.monotonic() - t0, message=e.message)
    except SyscloneError as e:
        return PushResult(t, "failed", time.monotonic() - t0, message=e.message)
    seconds = time.monotonic() - t0
    if res.returncode == SSH_UNREACHABLE:
        why = (res.stderr.strip().splitlines() or ["ssh failed"])[-1]
        return PushResult(t, "unreachable", seconds, message=why)
    result: dict[str, Any] = {}
    for line in reversed(res.stdout.splitlines()):
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except ValueError:
                continue
    if res.returncode != 0:
        errors = [x for x in res.stderr.splitlines() if x.startswith("updateclient:")]
        message = (errors[-1] if errors else res.stderr.strip()[-200:]).removeprefix(
            "updateclient: error: ") or f"exit status {res.returncode}"
        status = "rolled-back" if res.returncode == 3 else "failed"
        return PushResult(t, status, seconds, message=message)
    return PushResult(t, "ok", seconds, str(result.get("image") or ""),
                      result.get("changes"), "dry run" if result.get("dry_run") else "")


def push(targets: list[Target], opts: PushOptions,
         on_result: Callable[[PushResult], None] | None = None) -> list[PushResult]:
    """Every client, at most opts.concurrency at once; results in the
    order the clients were given."""
    from imageserver.updateclient import script

    text = script().decode()
    if len({t.name for t in targets}) != len(targets):
        raise ConfigError("a client is named twice")
    with ThreadPoolExecutor(max_workers=opts.concurrency) as pool:
        futures = [pool.submit(update_one, t, opts, text) for t in targets]
        results = []
        for f in futures:
            r = f.result()
            if on_result:
                on_result(r)
            results.append(r)
    return results


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("clients", nargs="+", metavar="CLIENT", help="[USER@]HOST[:PORT]")
    p.add_argument("--server", help="the image server, as the clients reach it (required)")
    p.add_argument("--port", type=int, default=8181, help="its HTTP port (default 8181)")
    p.add_argument("--image", help="NAME or NAME@N (default: each client's own image)")
    p.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help=f"clients updated at once (default {DEFAULT_CONCURRENCY})")
    p.add_argument("--dry-run", action="store_true", help="only list what would change")
    p.add_argument("--exclude", action="append", metavar="PATTERN")
    p.add_argument("--health-check", action="append", metavar="COMMAND")
    p.add_argument("--ssh-key", metavar="FILE")
    p.add_argument("--ssh-option", action="append", metavar="NAME=VALUE")
    p.add_argument("--timeout", type=int, default=3600, help="seconds per client")
    p.add_argument("--python", default="python3", help="the clients' Python (default python3)")
