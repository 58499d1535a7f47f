"""The agent's start: its parameters read and checked, the ready marker, and
the first phase (hardware) run while the rest of the agent is imported.

    begin -> ready marker -> hardware  |  import agent.flow (+ pyroute2, ...)
          -> agent.flow.run_session: network -> ... -> finish

Kept to what that needs (parameters, reporting, the drivers): the storage,
network and configure modules that agent.flow imports are ~80 modules,
5.5 s of Python under emulation (TCG) against the hardware phase's 4 s of
waiting on modprobe and udev.  Importing them on the second CPU meanwhile
takes that time off every install, and the ready marker means what it
says: the agent has its parameters and starts its first phase.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent import drivers
from agent.logsetup import LogTargets
from agent.params import (
    InstallParams,
    Layer,
    Resolved,
    Source,
    local_cfg_skipped,
    param,
    read_cmdline,
    read_local_cfg,
    resolve,
)
from agent.params.static import static_network
from agent.phases import PARAMS_STEP, Steps, break_names, canonical
from agent.report import FAILED_MARKER, READY_MARKER, Reporter
from sysclone.errors import SyscloneError
from sysclone.run import interactive

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.hardware import HardwareReport
    from agent.params.medium import Medium

log = logging.getLogger(__name__)

RUN_DIR = Path("/run/sysclone")
LOCAL_CFG = Path("/local.cfg")
MEMINFO = Path("/proc/meminfo")

# Install parameters the agent has used by the time the server's
# instructions arrive: a server config that changes them comes too late for
# this install, and says so rather than being silently ignored.
USED_BEFORE_INSTRUCTIONS = (
    "si.install-iface", "si.ip-address", "si.netmask", "si.network-address", "si.broadcast",
    "si.gateway", "si.gateway-iface", "si.dns-servers", "si.ether-sleep", "si.image-server",
    "si.server-port", "si.monitor-server", "si.monitor-port",
)


@dataclass
class Session:
    """What the phases share: parameters (re-resolved as layers arrive),
    the reporter and the phase runner.  Results pass as return values."""

    layers: list[Layer]
    params: InstallParams
    reporter: Reporter
    steps: Steps
    cmdline: Path = Path("/proc/cmdline")
    written: list[str] = field(default_factory=list)  # files configure wrote
    resolved: Resolved | None = None
    logs: LogTargets = field(default_factory=LogTargets)
    medium: Medium | None = None  # a sysclone USB disk's SYSCLONECFG partition, mounted
    inventory: threading.Thread | None = None  # sending the inventory (connect_monitor)

    def add_layer(self, layer: Layer) -> None:
        """A new source of parameters (DHCP, the server's instructions):
        re-resolve, refuse what sysclone cannot do, act on what changed and
        say what comes too late to matter."""
        self.layers.append(layer)
        resolved = resolve(self.layers, break_steps=break_names())
        resolved.require_supported()
        before = self.resolved.warnings if self.resolved else ()
        for w in resolved.warnings:
            if w not in before:
                self.reporter.say(f"warning: {w}")
        if layer.source is Source.SERVER:
            for name in USED_BEFORE_INSTRUCTIONS:
                field_ = param(name).field
                if getattr(resolved.params, field_) != getattr(self.params, field_):
                    self.reporter.say(f"warning: {layer.name}: {name} is used before the "
                                      "instructions are fetched: it has no effect on this "
                                      "install")
        old_breaks = set(self.params.breaks)
        self.resolved, self.params = resolved, resolved.params
        for b in self.params.breaks:
            if b not in old_breaks and self.steps.passed(b):
                self.reporter.say(f"warning: {layer.name}: si.break={b} comes too late, "
                                  "that step has passed")
        self.steps.breaks = frozenset(canonical(b) for b in self.params.breaks)
        self.follow_params()

    def follow_params(self) -> None:
        """Logging, syslog and TERM as the parameters now say."""
        p = self.params
        for change in self.logs.apply(debug=p.debug, log_server=p.log_server,
                                      log_server_port=p.log_server_port, term=p.term):
            self.reporter.say(change)


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
        flow = importlib.import_module("agent.flow")  # raises what the import raised
        return int(flow.run_session(s, plan_only, started, detected))
    finally:
        s.logs.close()


def begin(reporter: Reporter, cmdline: Path) -> Session | None:
    """The parameters read and checked, then the ready marker; None when
    they are bad (reported)."""
    logs = LogTargets()
    try:
        layers, resolved = read_parameters(reporter, cmdline, logs)
    except SyscloneError as e:
        reporter.say(f"{FAILED_MARKER}: bad install parameters: {e}")
        logs.close()
        return None
    params = resolved.params
    steps = Steps(reporter, breaks=frozenset(canonical(b) for b in params.breaks),
                  shell=shell, meminfo=MEMINFO)
    s = Session(layers, params, reporter, steps, cmdline, resolved=resolved, logs=logs)
    if params.hostname:
        reporter.client["hostname"] = params.hostname
    # What the boot benchmark times: the agent has its parameters and
    # starts its first phase.
    reporter.say(READY_MARKER)
    return s


def read_parameters(reporter: Reporter, cmdline: Path, logs: LogTargets
                    ) -> tuple[list[Layer], Resolved]:
    """The kernel command line, then local.cfg, resolved and checked: every
    parameter is acted on or refused here, before any phase runs.
    si.break=parse-localcfg stops in between, as in SystemImager."""
    layers = [read_cmdline(cmdline)]
    early = resolve(layers, break_steps=break_names())
    if PARAMS_STEP in early.params.breaks:
        logs.apply(debug=early.params.debug, log_server=None, log_server_port=0,
                   term=early.params.term)
        reporter.say(f"breakpoint before {PARAMS_STEP}: exit the shell to continue")
        shell(PARAMS_STEP)
    if LOCAL_CFG.is_file() and not local_cfg_skipped(layers):
        layers.append(read_local_cfg(LOCAL_CFG))
    resolved = resolve(layers, break_steps=break_names())
    resolved.require_supported()
    static_network(resolved.params, resolved.origin)
    for w in resolved.warnings:
        reporter.say(f"warning: {w}")
    for s in resolved.effective.get("si.break", ()):
        if s.value == PARAMS_STEP and s.source is not Source.CMDLINE:
            reporter.say(f"warning: {s.where}: si.break={PARAMS_STEP} comes too late, "
                         "local.cfg is read already; set it on the kernel command line")
    p = resolved.params
    for change in logs.apply(debug=p.debug, log_server=p.log_server,
                             log_server_port=p.log_server_port, term=p.term):
        reporter.say(change)
    return layers, resolved


def detect_hardware(s: Session) -> HardwareReport:
    with s.steps.phase("hardware"):
        report = drivers.load_drivers()
        mods = report.modules()
        s.reporter.say(f"{len(report.pci)} PCI devices, loaded: {', '.join(mods) or 'none'}")
        return report


def import_the_rest() -> threading.Event:
    """agent.flow on a thread, then what its phases import lazily, in the
    order they need it: pyroute2 (~250 modules, the network phase) and the
    storage libraries.  The event is set once agent.flow is imported (or
    failed to be: whoever waits imports it again and gets the error).  The
    others only warm up: a phase that uses one imports it again, and
    reports a failure there."""
    flow_imported = threading.Event()

    def work() -> None:
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

    threading.Thread(target=work, name="imports", daemon=True).start()
    return flow_imported


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


def shell(phase: str) -> None:
    """si.break: a shell on the console; the install goes on when it exits.
    TERM (si.term) comes through sysclone.run's environment."""
    interactive(["setsid", "cttyhack", "sh", "-l"], env={"PS1": f"(break before {phase}) # "})


def write_post_action(action: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "post-action").write_text(action + "\n")
