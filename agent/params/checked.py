"""Install parameters resolved and checked as the agent checks them at its
start (agent.session.read_parameters): every one acted on or refused, the
static addressing whole.  Media, PXE entries and embedded local.cfg files
are checked the same way where they are made, so that a mistake is one
error on the image server rather than a stopped install on every client
that boots them."""

from __future__ import annotations

from collections.abc import Sequence

from agent.params.layers import Layer
from agent.params.resolve import Resolved, resolve
from agent.params.static import static_network
from agent.params.table import param
from agent.phases import break_names  # the agent's phases name si.break's steps
from sysclone.errors import ConfigError


def checked(layers: Sequence[Layer], *, partial: bool = False) -> Resolved:
    """`layers` resolved in order (the kernel command line first), or the
    ConfigError the agent would stop with.  `partial`: not every layer the
    agent will have is known yet (a boot environment's local.cfg, under
    command lines still to be written), so only what each parameter says
    on its own is checked, not how they fit together."""
    resolved = resolve(layers, break_steps=break_names())
    resolved.require_supported()
    if not partial:
        static_network(resolved.params, resolved.origin)
        _monitor_port(resolved)
    return resolved


def _monitor_port(resolved: Resolved) -> None:
    """si.monitor-port is the port of si.monitor-server: without one the
    agent reports to the image server's API port (si.server-port), and the
    port would be ignored.  Nothing after this can set a monitor server
    in time (the server's config arrives after the monitor phase)."""
    if resolved.given("si.monitor-port") and resolved.params.monitor_server is None:
        port = param("si.monitor-port").format_value(resolved.params.monitor_port)
        raise ConfigError(f"si.monitor-port: {port} is set without si.monitor-server "
                          f"({resolved.origin('si.monitor-port')}): the agent reports to the "
                          "image server, on si.server-port",
                          hint="set si.monitor-server too, or si.server-port for the image "
                               "server's port", parameter="si.monitor-port")
