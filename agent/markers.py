"""Console markers a host harness waits for (kept tiny: imported first)."""

READY_MARKER = "SYSCLONE-AGENT-READY"
DONE_MARKER = "SYSCLONE-INSTALL-DONE"
FAILED_MARKER = "SYSCLONE-INSTALL-FAILED"
