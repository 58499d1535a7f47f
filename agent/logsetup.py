"""Where the agent's log goes, as the install parameters say.

agent.main sets up the log file and the console before any parameter is
known (si.debug on the kernel command line is peeked at for that).  Once the
parameters are resolved, and again whenever a new source arrives (DHCP
option 7 names a log server, the server's instructions carry parameters),
`LogTargets.apply` brings the destinations in line:

- si.debug: debug messages on the console too;
- si.log-server / si.log-server-port: the log also goes to that syslog
  server over UDP, as SystemImager sent its installer's messages;
- si.term: TERM for the shells and commands the agent starts (sysclone.run
  passes TERM through).
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field

# Not at the agent's start: logging.handlers brings socket, pickle and
# queue, for a log server most installs never name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging.handlers

log = logging.getLogger(__name__)

# The facility SystemImager's installer logged with (local0 in 4.x's
# syslog setup, SysLogHandler.LOG_LOCAL0); a site's syslog rules can route on it.
FACILITY = 16


@dataclass
class LogTargets:
    """The log destinations the parameters asked for, kept up to date."""

    logger: logging.Logger = field(default_factory=logging.getLogger)
    syslog: logging.handlers.SysLogHandler | None = None
    syslog_target: tuple[str, int] | None = None

    def apply(self, *, debug: bool, log_server: str | None, log_server_port: int,
              term: str | None) -> list[str]:
        """Bring every destination in line; returns what changed, for the console."""
        changes = []
        if self._console_debug(debug):
            changes.append("debug messages on the console")
        if term and os.environ.get("TERM") != term:
            os.environ["TERM"] = term
            changes.append(f"TERM={term}")
        target = (log_server, log_server_port) if log_server else None
        if target != self.syslog_target:
            self.close()
            if target is not None:
                try:
                    self.syslog = _syslog_handler(*target)
                except OSError as e:  # a name that does not resolve
                    # The install can go on with its local log; say so loudly.
                    changes.append(f"warning: si.log-server: cannot send to {target[0]}:"
                                   f"{target[1]}: {e.strerror or e}; the log stays local")
                    return changes
                self.logger.addHandler(self.syslog)
                self.syslog_target = target
                changes.append(f"log sent to syslog at {target[0]}:{target[1]} (UDP)")
        return changes

    def _console_debug(self, on: bool) -> bool:
        """Lower the console handlers to DEBUG; whether any changed.  Off
        leaves them alone: agent.main may have lowered them already for the
        kernel command line's si.debug."""
        changed = False
        if not on:
            return changed
        for h in self.logger.handlers:
            if _is_console(h) and h.level > logging.DEBUG:
                h.setLevel(logging.DEBUG)
                changed = True
        return changed

    def close(self) -> None:
        if self.syslog is not None:
            self.logger.removeHandler(self.syslog)
            self.syslog.close()
        self.syslog = None
        self.syslog_target = None


def _is_console(h: logging.Handler) -> bool:
    return (type(h) is logging.StreamHandler
            and getattr(h, "stream", None) in (sys.stdout, sys.stderr))


def _syslog_handler(host: str, port: int) -> logging.handlers.SysLogHandler:
    """UDP: sending never blocks or fails the install when the log server
    is down, and it is what SystemImager's LOG_SERVER/LOG_SERVER_PORT meant."""
    import logging.handlers
    import socket

    h = logging.handlers.SysLogHandler(address=(host, port), facility=FACILITY,
                                       socktype=socket.SOCK_DGRAM)
    h.setLevel(logging.INFO)
    h.setFormatter(logging.Formatter("sysclone-agent: %(levelname)s %(name)s: %(message)s"))
    return h
