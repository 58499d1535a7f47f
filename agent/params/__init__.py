"""Install parameters: what the agent is told to do, from where.

One declarative table (`table.PARAMS`) defines every parameter: canonical
`si.` name, legacy aliases, type, default, help.  Readers turn each source
into a named `Layer`; `resolve()` merges them by precedence into a typed
`InstallParams` and remembers where each value came from:

    cmdline = read_cmdline()                       # /proc/cmdline
    layers = [cmdline, dhcp_layer(lease_options)]
    if not local_cfg_skipped(layers):
        layers.append(read_local_cfg("/local.cfg"))
    resolved = resolve(layers, break_steps=AGENT_PHASES)
    resolved.require_supported()                   # refuses what sysclone does not do yet
    static_network(resolved.params, resolved.origin)   # agent.params.static: IPADDR & co.
    params = resolved.params                       # params.image_server, params.post_action...
    print(resolved.explain())                      # for si.dry-run

Nothing is read at import; all of it is standard library only.
"""

from __future__ import annotations

from agent.params.kinds import HostPort, IPAddress, Kind, Shape
from agent.params.layers import (
    Layer,
    Setting,
    Source,
    defaults_layer,
    dhcp_layer,
    parse_cmdline,
    parse_local_cfg,
    read_cmdline,
    read_local_cfg,
    server_layer,
    split_cmdline,
)
from agent.params.resolve import InstallParams, Resolved, local_cfg_skipped, resolve
from agent.params.table import (
    BY_NAME,
    PARAMS,
    SI_BREAK_STEPS,
    SUPPORTED_PROTOCOLS,
    Alias,
    DlProtocol,
    Param,
    PostAction,
    param,
)

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Literal


def render_docs(fmt: Literal["markdown", "text"] = "markdown", *, width: int = 79) -> str:
    """agent.params.docs.render_docs, imported when asked for: an install
    never renders the parameters' reference."""
    from agent.params.docs import render_docs as render

    return render(fmt, width=width)


__all__ = [
    "BY_NAME",
    "PARAMS",
    "SI_BREAK_STEPS",
    "SUPPORTED_PROTOCOLS",
    "Alias",
    "DlProtocol",
    "HostPort",
    "IPAddress",
    "InstallParams",
    "Kind",
    "Layer",
    "Param",
    "PostAction",
    "Resolved",
    "Setting",
    "Shape",
    "Source",
    "defaults_layer",
    "dhcp_layer",
    "local_cfg_skipped",
    "param",
    "parse_cmdline",
    "parse_local_cfg",
    "read_cmdline",
    "read_local_cfg",
    "render_docs",
    "resolve",
    "server_layer",
    "split_cmdline",
]
