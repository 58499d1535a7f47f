"""local.cfg on the boot medium: a sysclone USB disk's writable partition.

SystemImager read a local.cfg from a floppy, over every other one; a
sysclone USB disk (mkmedia.usb) has a FAT partition labelled SYSCLONECFG
for the same purpose, which anyone can edit on any computer, and where the
agent leaves its log after each install.

The medium is looked for once the hardware phase has loaded the drivers
(a USB stick is invisible before) and udev has named the filesystems
(/dev/disk/by-label).  It stays mounted while the agent works: that keeps
it out of the disks the install may use (agent.targets skips a mounted
disk), and lets the log be written at the end.

Unlike the rest of agent.params this mounts a filesystem, through
sysclone.run like every command the agent runs.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

LABEL = "SYSCLONECFG"  # mkmedia.usb.DATA_LABEL
BY_LABEL = Path("/dev/disk/by-label")
MOUNTPOINT = Path("/run/sysclone/medium")
LOCAL_CFG = "local.cfg"
LOGS = "logs"


@dataclass(frozen=True)
class Medium:
    device: str
    mountpoint: Path
    writable: bool

    @property
    def local_cfg(self) -> Path | None:
        p = self.mountpoint / LOCAL_CFG
        return p if p.is_file() else None

    def keep_log(self, agent_log: Path, who: str) -> Path | None:
        """Copy the agent's log to logs/WHO-DATE.log; None when it cannot."""
        if not self.writable or not agent_log.is_file():
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in who)[:40] or "client"
        dest = self.mountpoint / LOGS / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        try:
            dest.parent.mkdir(exist_ok=True)
            shutil.copyfile(agent_log, dest)
        except OSError as e:  # a full or failing stick must not fail the install
            log.warning("cannot keep the log on %s: %s", self.device, e)
            return None
        return dest

    def close(self) -> None:
        run(["umount", str(self.mountpoint)], check=False)


def find_medium(by_label: Path | None = None, mountpoint: Path | None = None
                ) -> Medium | None:
    """Mount the SYSCLONECFG filesystem if the machine has one (read-write;
    read-only if it is write-protected)."""
    link = (by_label or BY_LABEL) / LABEL
    if not link.exists():
        return None
    device = str(link.resolve())
    where = mountpoint or MOUNTPOINT
    where.mkdir(parents=True, exist_ok=True)
    # flush: written data reaches the stick at once; it may be pulled out
    # as soon as the machine powers off.
    for opts, writable in (("rw,noatime,flush", True), ("ro", False)):
        res = run(["mount", "-t", "vfat", "-o", opts, device, str(where)], check=False)
        if res.returncode == 0:
            return Medium(device, where, writable)
    raise SyscloneError(f"the boot medium's {LABEL} partition ({device}) cannot be mounted: "
                        + ((res.stderr or res.stdout).strip() or f"exit code {res.returncode}"),
                        hint="check the stick on another computer, or remove it")
