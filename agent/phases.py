"""The agent's install phases, as data, and the runner that reports them.

Phase names are what `si.break=<name>` stops before (SystemImager's own
step names are accepted as aliases) and what the monitor shows.  Each phase
is timed; the timings end up in the final report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.report import Reporter
from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Phase:
    name: str
    title: str
    si_names: tuple[str, ...] = ()  # SystemImager 4.9 break-step names


# Every SystemImager 4.9 break step stops somewhere: at the phase doing
# that step's work, else at the nearest phase after it (si.break stops
# *before* a phase).  pre-install and post-install are phases of their own,
# under SystemImager's names: its scripts run there.  Two need a word:
# se-linux relabelling is prepared by configure, so it stops there;
# terminate-transfer (ending a torrent or SSH transfer, after umount-client)
# has nothing to end with rsync, so it stops where the rest of the tail
# does, before finish.  parse-localcfg is before any phase: see PARAMS_STEP.
PHASES: tuple[Phase, ...] = (
    Phase("hardware", "load drivers for the devices found"),
    Phase("network", "bring up the install network", ("network-infos", "ping")),
    Phase("monitor", "report to the image server", ("monitor",)),
    Phase("instructions", "fetch the install instructions", ("download-scripts",)),
    Phase("plan", "validate the install plan", ("deploy",)),
    Phase("pre-install", "run the pre-install scripts, check the network configuration"),
    Phase("partition", "partition the disks", ("prepare-disks",)),
    Phase("assemble", "create RAID arrays, LUKS volumes and LVM"),
    Phase("format", "create filesystems and swap"),
    Phase("mount", "mount the new filesystems, swap on", ("main-install",)),
    Phase("fetch", "pull the image", ("download-image", "extract-image")),
    Phase("overrides", "apply the overrides", ("install-overrides",)),
    Phase("fetch-rest", "pull what the image server let come last (kernel modules, firmware, "
                        "documentation, package lists), while the system is configured"),
    Phase("configure", "write fstab, hostname and network config",
          ("install-configs", "configure-network", "se-linux")),
    Phase("initrd", "keep or regenerate the installed system's initrd"),
    Phase("host-keys", "new SSH host keys for this clone"),
    Phase("bootloader", "install the bootloader", ("boot-loader",)),
    Phase("post-install", "run the post-install scripts in the installed system"),
    Phase("finish", "unmount and report",
          ("umount-client", "terminate-transfer", "finished")),
)

PARAMS_STEP = "parse-localcfg"
"""SystemImager's first break step: before local.cfg is read, when only the
kernel command line is known.  It comes before every phase, so the agent
stops for it itself (agent.session.read_parameters), and only the kernel command
line can ask for it."""

BY_NAME = {p.name: p for p in PHASES}
ALIASES = {si: p.name for p in PHASES for si in p.si_names}
# The phases a dry run (or `sysclone-agent plan`) never reaches.
AFTER_PLAN = frozenset(p.name for p in PHASES[[p.name for p in PHASES].index("plan") + 1:])


def break_names() -> frozenset[str]:
    """Every name si.break accepts."""
    return frozenset(BY_NAME) | frozenset(ALIASES) | {PARAMS_STEP}


def canonical(name: str) -> str:
    return ALIASES.get(name, name)


class InstallFailed(SyscloneError):
    """Raised once a phase failed and was reported."""


class Stopped(Exception):
    """Raised in a phase that another one's failure ended early (fetch-rest
    beside a fetch that failed): reported as stopped, not as a second
    failure that would hide the first."""


@dataclass
class Steps:
    reporter: Reporter
    breaks: frozenset[str] = frozenset()
    shell: Callable[[str], None] | None = None
    timings: list[tuple[str, float]] = field(default_factory=list)
    current: str | None = None
    # When set (/proc/meminfo), each phase's "done" event says how much
    # memory was left: what a 128 MiB client has to spare, phase by phase.
    meminfo: Path | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        ph = BY_NAME[name]
        if name in self.breaks and self.shell:
            self.reporter.say(f"breakpoint before {name}: exit the shell to continue")
            self.shell(name)
        self.current = name
        self.reporter.say(f"[{name}] {ph.title}")
        self.reporter.event("phase", phase=name, status="start", title=ph.title)
        t0 = time.monotonic()
        try:
            yield
        except Stopped as e:
            self.reporter.say(f"[{name}] stopped: {e}")
            self.reporter.event("phase", phase=name, status="stopped", reason=str(e))
            raise
        except SyscloneError as e:
            self._fail(name, e.message, e.to_dict())
            raise InstallFailed(e.message, hint=e.hint, phase=name) from e
        except Exception as e:  # a bug: still report it, with its type
            log.exception("phase %s crashed", name)
            self._fail(name, f"{type(e).__name__}: {e}", {"error": type(e).__name__})
            raise InstallFailed(f"{type(e).__name__}: {e}", phase=name) from e
        dt = time.monotonic() - t0
        self.timings.append((name, dt))
        extra = {}
        if self.meminfo is not None:
            avail = mem_available_kib(self.meminfo)
            if avail is not None:
                extra["mem_available_kib"] = avail
        self.reporter.event("phase", phase=name, status="done", seconds=round(dt, 2), **extra)
        self.current = None

    def passed(self, name: str) -> bool:
        """Whether a break before this step can no longer happen: the phase
        has started (or is the early parameters step)."""
        name = canonical(name)
        return name == PARAMS_STEP or name == self.current or \
            any(done == name for done, _ in self.timings)

    def concurrently(self, jobs: dict[str, Callable[[], None]],
                     also: tuple[str, ...] = ()) -> None:
        """Run independent phases at the same time (each reports itself as
        usual; `also` names further phases the jobs run); one after the
        other, in the order given, when a breakpoint is set on any of them,
        so that only one shell ever owns the console.  The first failure is
        raised once all have ended."""
        if self.breaks & (set(jobs) | set(also)):
            for job in jobs.values():
                job()
            return
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=len(jobs), thread_name_prefix="phase") as pool:
            futures = [pool.submit(job) for job in jobs.values()]
        for f in futures:
            err = f.exception()
            if err is not None:
                raise err

    def _fail(self, name: str, message: str, data: dict[str, object]) -> None:
        self.reporter.event("failed", phase=name, message=message, detail=data)

    def skipped(self, name: str, why: str) -> None:
        self.reporter.say(f"[{name}] skipped: {why}")
        self.reporter.event("phase", phase=name, status="skipped", reason=why)


def mem_available_kib(meminfo: Path) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None
