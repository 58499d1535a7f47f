"""Pre-install and post-install scripts, as SystemImager runs them.

The image server chooses a client's scripts and their order
(imageserver.clientfiles) and sends them with the instructions.  Pre-install
scripts run in the boot environment before the disks are partitioned, from
/run/sysclone/scripts/pre-install; post-install scripts run chrooted in the
installed system once it is configured (bootloader and initrd included),
from /tmp/post-install -- a tmpfs, so nothing of them stays on the disk.
Both get SystemImager's variables in their environment and in
variables.txt beside them (`. ./variables.txt` as with SystemImager; for
post-install scripts `. /tmp/post-install/variables.txt`).

Each script's output is shown on the console line by line and sent to the
monitor in batches as it runs; a script that exits non-zero fails the
install, with its name and the end of its output.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysclone.errors import SyscloneError
from sysclone.run import spawn

STAGES = ("pre-install", "post-install")
OUTPUT_TAIL = 16 * 1024  # of each script's output, in its final report
BATCH_LINES = 64
BATCH_SECONDS = 2.0


class ScriptFailed(SyscloneError):
    pass


@dataclass(frozen=True)
class Script:
    stage: str
    name: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def from_instructions(instr: dict[str, Any]) -> dict[str, tuple[Script, ...]]:
    """The scripts the instructions carry, each checked against its digest
    and its name (it becomes a file name)."""
    out: dict[str, tuple[Script, ...]] = {}
    given = instr.get("scripts") or {}
    for stage in STAGES:
        scripts = []
        for e in given.get(stage) or ():
            name = str(e.get("name", ""))
            if not name or "/" in name or name.startswith(".") or "\0" in name:
                raise ScriptFailed(f"the image server sent a {stage} script with a bad name "
                                   f"{name!r}")
            try:
                data = base64.b64decode(e.get("data", ""), validate=True)
            except ValueError:
                raise ScriptFailed(f"{stage} script {name}: its contents are not base64"
                                   ) from None
            script = Script(stage, name, data)
            if e.get("sha256") and script.sha256 != e["sha256"]:
                raise ScriptFailed(f"{stage} script {name} arrived damaged (sha256 mismatch)")
            scripts.append(script)
        out[stage] = tuple(scripts)
    return out


def base_hostname(hostname: str) -> str:
    """node07 -> node: the class of a host's siblings (the image server's
    imageserver.lookup.base_hostname, the same rule)."""
    return re.sub(r"\d+$", "", hostname.split(".")[0])


def variables_txt(variables: dict[str, str]) -> str:
    """SystemImager's variables.txt: NAME=value lines a shell can source."""
    return "".join(f"{k}={shlex.quote(v)}\n" for k, v in sorted(variables.items()))


@dataclass
class Reporter:
    """Where a script's output goes: the console and the monitor."""

    say: Callable[[str], None]
    event: Callable[..., None]


def run_scripts(scripts: tuple[Script, ...], host_dir: Path, run_dir: str,
                variables: dict[str, str], report: Reporter,
                target: Path | None = None) -> None:
    """Write the scripts to `host_dir` (seen by them as `run_dir`, inside
    `target` when chrooted) and run them in order; the first failure stops
    the stage."""
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "variables.txt").write_text(variables_txt(variables))
    for s in scripts:
        p = host_dir / s.name
        p.write_bytes(s.data)
        p.chmod(0o755)
    for n, s in enumerate(scripts, 1):
        report.say(f"{s.stage} script {n}/{len(scripts)}: {s.name}")
        _run_one(s, run_dir, variables, report, target)


def _run_one(s: Script, run_dir: str, variables: dict[str, str], report: Reporter,
             target: Path | None) -> None:
    argv = [f"{run_dir}/{s.name}"]
    env = {**variables, "SYSCLONE_STAGE": s.stage}
    t0 = last_flush = time.monotonic()
    batch: list[str] = []
    tail: list[str] = []
    tail_bytes = 0

    def flush() -> None:
        nonlocal last_flush
        if batch:
            report.event("script-output", phase=s.stage, script=s.name, lines=list(batch))
            batch.clear()
        last_flush = time.monotonic()

    try:
        # Pre-install scripts run where they lie; chroot(8) starts post-install
        # ones at the installed system's /.
        with spawn(argv, env=env, target=target,
                   cwd=None if target is not None else Path(run_dir)) as proc:
            assert proc.stdout is not None
            for raw in proc.stdout:
                line = raw.rstrip("\n")
                report.say(f"  {s.name}: {line}")
                batch.append(line)
                tail.append(line)
                tail_bytes += len(line) + 1
                while tail_bytes > OUTPUT_TAIL and len(tail) > 1:
                    tail_bytes -= len(tail.pop(0)) + 1
                if len(batch) >= BATCH_LINES or time.monotonic() - last_flush > BATCH_SECONDS:
                    flush()
            rc = proc.wait()
    except FileNotFoundError:
        interpreter = s.data.split(b"\n", 1)[0].decode(errors="replace") \
            if s.data.startswith(b"#!") else "(no #! line)"
        raise ScriptFailed(f"{s.stage} script {s.name} cannot be run: its interpreter "
                           f"{interpreter} is not in the boot environment",
                           hint="write pre-install scripts for /bin/sh (busybox)",
                           script=s.name) from None
    except OSError as e:
        raise ScriptFailed(f"{s.stage} script {s.name} cannot be run: {e.strerror}",
                           script=s.name) from None
    flush()
    seconds = round(time.monotonic() - t0, 2)
    report.event("script", phase=s.stage, script=s.name, returncode=rc, seconds=seconds,
                 output="\n".join(tail))
    if rc != 0:
        last = next((ln for ln in reversed(tail) if ln.strip()), "no output")
        raise ScriptFailed(f"{s.stage} script {s.name} failed with exit code {rc}: {last}",
                           script=s.name, returncode=rc)
