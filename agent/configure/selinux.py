"""SELinux in the installed system: relabel its files on first boot.

The image arrives with whatever security.selinux labels rsync could copy
(-X): none when the image server's filesystem kept none, stale ones when the
golden client's policy differs from the installed one.  SystemImager 4.9
(si.selinux-relabel, on by default) had the installed system relabel itself
on first boot, and so does sysclone: an empty /.autorelabel, which Red Hat's
selinux-autorelabel and Debian's selinux-basics boot hooks honour (they
relabel everything, remove the file and reboot).  Relabelling in the chroot
with setfiles would need the policy tools in the boot environment.

The configure step calls it, after the image and the overrides are in place:

    s.written += relabel_on_first_boot(root, s.params.selinux_relabel)
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CONFIG = "etc/selinux/config"
AUTORELABEL = ".autorelabel"
ACTIVE_MODES = ("enforcing", "permissive")


def selinux_mode(root: Path) -> str | None:
    """SELINUX= of the image's /etc/selinux/config (enforcing, permissive,
    disabled), lower-cased; None when the image has no SELinux config."""
    try:
        text = (root / CONFIG).read_text(errors="replace")
    except OSError:
        return None
    mode = None
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.strip() == "SELINUX":
            # Shell syntax: quotes allowed, a trailing comment possible.
            mode = value.split("#", 1)[0].strip().strip("'\"").lower()
    return mode


def selinux_relabel_wanted(root: Path) -> bool:
    """Whether the installed system runs SELinux (enforcing or permissive),
    so that its files need labels."""
    return selinux_mode(root) in ACTIVE_MODES


def mark_autorelabel(root: Path) -> list[str]:
    """Ask for a full relabel on first boot; the files written, as the
    configure step lists them."""
    (root / AUTORELABEL).write_text("")
    return ["/" + AUTORELABEL]


def relabel_on_first_boot(root: Path, wanted: bool) -> list[str]:
    """si.selinux-relabel: mark the installed system for relabelling when
    it is asked for and the image runs SELinux; the files written."""
    if not wanted:
        log.info("si.selinux-relabel=no: labels left as rsync copied them")
        return []
    if not selinux_relabel_wanted(root):
        log.debug("no active SELinux in the image (mode %s): no relabel",
                  selinux_mode(root) or "unset")
        return []
    return mark_autorelabel(root)
