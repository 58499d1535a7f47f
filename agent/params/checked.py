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


def checked(layers: Sequence[Layer]) -> Resolved:
    """`layers` resolved in order (the kernel command line first), or the
    ConfigError the agent would stop with."""
    from agent.phases import break_names  # the agent's phases name si.break's steps

    resolved = resolve(layers, break_steps=break_names())
    resolved.require_supported()
    static_network(resolved.params, resolved.origin)
    return resolved
