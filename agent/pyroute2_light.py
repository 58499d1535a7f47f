"""Importing the parts of pyroute2 the agent uses, and nothing else.

pyroute2's package __init__ imports every subsystem it has (NDB with
sqlite3, plan9, BSD support, conntrack...: some 330 modules).  Natively
that is a fraction of a second; in a freshly booted machine under emulation
it is seconds of the network phase, and megabytes in the boot environment.
The package is registered here without running its __init__, so that
`pyroute2.iproute.linux` and `pyroute2.dhcp.*` import only what they need
themselves.  The frozen agent is built from the same imports.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

# What agent.network uses; agent.main's selftest imports these so the
# frozen agent carries exactly them.
MODULES = ("pyroute2.iproute.linux", "pyroute2.dhcp.client", "pyroute2.dhcp.fsm",
           "pyroute2.dhcp.leases", "pyroute2.dhcp.enums.dhcp")


def register() -> None:
    """Make `pyroute2` importable as a bare package (idempotent)."""
    if "pyroute2" in sys.modules:
        return
    spec = importlib.util.find_spec("pyroute2")
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError("pyroute2 is not installed")
    sys.modules["pyroute2"] = importlib.util.module_from_spec(spec)


def import_all() -> None:
    register()
    for name in MODULES:
        importlib.import_module(name)


def iproute() -> Any:
    """pyroute2's IPRoute class."""
    register()
    from pyroute2.iproute.linux import IPRoute

    return IPRoute
