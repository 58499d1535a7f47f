"""What the phases share (Session), the install parameters read and
checked before any phase, the ready marker, and the first phase, hardware:
all the agent needs before the rest of it is imported (agent.start).
"""

from __future__ import annotations

import threading
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
from agent.params.checked import checked
from agent.phases import PARAMS_STEP, Steps, break_names, canonical
from agent.report import FAILED_MARKER, READY_MARKER, Reporter
from sysclone.errors import SyscloneError
from sysclone.run import interactive

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from agent.hardware import HardwareReport
    from agent.params.medium import Medium

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
    resolved = checked(layers)
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


def shell(phase: str) -> None:
    """si.break: a shell on the console; the install goes on when it exits.
    TERM (si.term) comes through sysclone.run's environment."""
    interactive(["setsid", "cttyhack", "sh", "-l"], env={"PS1": f"(break before {phase}) # "})


def write_post_action(action: str) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    (RUN_DIR / "post-action").write_text(action + "\n")
