"""The agent's start: its parameters read and checked, the ready marker, and
the first phase (hardware) run while the rest of the agent is imported.

    begin -> ready marker -> hardware  |  import agent.flow (+ pyroute2, ...)
          -> agent.flow.run_session: network -> ... -> finish

What comes first is kept small (agent.session: parameters, reporting,
the drivers); the storage, network and configure modules that agent.flow
imports are ~80 modules, 5.5 s of Python under emulation (TCG).  The ready marker means what it
says: the agent has its parameters and starts its first phase, whose
waits on modprobe, udev and the devices hide most of the imports.  Under
TCG (bench, one run each, same session): agent start to network up 16.0 s
before, 13.1 s after; the hardware phase 7.2 s and 7.9 s (it shared the
CPUs with pyroute2's warm-up before too).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from agent.report import Reporter
from agent.session import begin, detect_hardware, write_post_action

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.hardware import HardwareReport

log = logging.getLogger(__name__)

# The GIL's switch interval while the import thread runs.  The hardware
# phase meanwhile reads sysfs file by file, and gives the GIL up at each
# read; at the default 5 ms it then waits up to that long for an import to
# hand it back.  Under TCG, the hardware phase took 3.0 s and 2.8 s at
# 5 ms, 2.4 s and 2.5 s at 0.1 ms (alternated installs; the network phase,
# which waits for those imports, 0.26-0.29 s either way).
IMPORTS_SWITCH_INTERVAL = 0.0001


class _SwitchInterval:
    """IMPORTS_SWITCH_INTERVAL while any import thread runs, the interval
    from before the first of them once the last is done (one per install;
    overlapping ones in a test process must not leave it low)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running = 0
        self._before = 0.0

    def lower(self) -> None:
        with self._lock:
            if not self._running:
                self._before = sys.getswitchinterval()
                sys.setswitchinterval(IMPORTS_SWITCH_INTERVAL)
            self._running += 1

    def restore(self) -> None:
        with self._lock:
            self._running -= 1
            if not self._running:
                sys.setswitchinterval(self._before)


_SWITCHING = _SwitchInterval()


def run_install(reporter: Reporter, cmdline: Path, plan_only: bool = False,
                started: float | None = None) -> int:
    """Run the whole install; the exit status and post-action say how it
    went.  `started`: when the agent's process started (agent.main), so
    that the install's time counts its imports too."""
    write_post_action("shell")
    if started is None:
        started = time.monotonic()
    s = begin(reporter, cmdline)
    if s is None:
        return 2
    flow_imported = import_the_rest()
    try:
        detected = outcome(lambda: detect_hardware(s))
        flow_imported.wait()
        from agent import flow  # imported by now, or raises what its import raised

        return flow.run_session(s, plan_only, started, detected)
    finally:
        s.logs.close()


def import_the_rest() -> threading.Event:
    """agent.flow on a thread, then what its phases import lazily, in the
    order they need it: pyroute2 (~250 modules, the network phase) and the
    storage libraries.  The event is set once agent.flow is imported (or
    failed to be: whoever waits imports it again and gets the error).  The
    others only warm up: a phase that uses one imports it again, and
    reports a failure there."""
    flow_imported = threading.Event()
    _SWITCHING.lower()

    def work() -> None:
        try:
            _import_ahead(flow_imported)
        finally:
            _SWITCHING.restore()

    threading.Thread(target=work, name="imports", daemon=True).start()
    return flow_imported


def _import_ahead(flow_imported: threading.Event) -> None:
    """import_the_rest's thread: agent.flow, then the warm-ups."""
    try:
        # For pyudev's lookup of libudev (the inventory, the plan's
        # disks); with ctypes.util, 0.3 s of Python under emulation
        # that the hardware phase does without (libkmod is loaded by
        # its soname).
        from agent.frozen import install_find_library

        install_find_library()
        import agent.flow  # noqa: F401
    except Exception as e:
        log.debug("importing agent.flow ahead: %s", e)
    finally:
        flow_imported.set()
    try:
        from agent import pyroute2_light

        pyroute2_light.import_all()
        import blkinfo  # noqa: F401
        import parted  # noqa: F401
        import pyudev  # noqa: F401
    except Exception as e:
        log.debug("importing ahead: %s", e)


def outcome(fn: Callable[[], HardwareReport]) -> Callable[[], HardwareReport]:
    """Run `fn` now; the result returns what it returned or raises what it
    raised, where the install flow asks for it (and reports it)."""
    try:
        result = fn()
    except BaseException as e:  # re-raised where the flow asks for it, and reported
        error = e

        def fail() -> HardwareReport:
            raise error

        return fail
    return lambda: result
