"""The agent's start in a fresh interpreter: what agent.main and
agent.start import before the ready marker (a unit test cannot tell: its
process has imported everything already)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# What agent.flow brings in: none of it may come before the ready marker,
# or the agent's start waits for ~80 modules (5.5 s under emulation) that
# the hardware phase does not use.
LATER = ("agent.flow", "agent.plan", "agent.planner", "agent.storage.model", "agent.fetch",
         "agent.configure.bootloader", "agent.network", "urllib.request", "http.client",
         "pyroute2", "parted", "pyudev", "blkinfo", "typing", "ctypes.util")


def test_the_start_imports_only_what_the_first_phase_needs() -> None:
    # As the boot environment's /init starts it: isolated, without site.
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); "
            "import agent.main, agent.start; print(' '.join(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True,
                         text=True, check=True).stdout.split()
    assert {"agent.start", "agent.session", "agent.drivers", "agent.params"} <= set(out)
    assert [m for m in LATER if m in out] == []
