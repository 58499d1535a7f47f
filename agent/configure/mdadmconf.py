"""/etc/mdadm/mdadm.conf for the installed system: the plan's arrays by
UUID, so that the system (and its initrd, which copies this file) assembles
them under the names the layout gave, whatever host name it boots with.

The image's own settings (MAILADDR, HOMEHOST, DEVICE...) are kept; its
ARRAY lines name the golden client's arrays and are dropped.  Debian keeps
the file in /etc/mdadm/, Red Hat in /etc/.
"""

from __future__ import annotations

from pathlib import Path

from agent.blockdev.md import array_line
from agent.plan import InstallPlan

HEADER = "# Arrays of this machine, written by sysclone (mdadm.conf(5)).\n"


def conf_path(root: Path) -> str:
    """Debian's place when the image has it (or has neither file and is a
    Debian-style initramfs-tools system), else Red Hat's."""
    if (root / "etc/mdadm").is_dir():
        return "etc/mdadm/mdadm.conf"
    debian = (root / "usr/share/initramfs-tools").is_dir()
    return "etc/mdadm/mdadm.conf" if debian and not (root / "etc/mdadm.conf").is_file() \
        else "etc/mdadm.conf"


def mdadm_conf_text(plan: InstallPlan, existing: str = "") -> str:
    """The file's text: the image's settings, then the plan's ARRAY lines.
    Also what an initrd built elsewhere needs to assemble the arrays."""
    kept = []
    skipping = False
    for line in existing.splitlines():
        # ARRAY lines may continue on indented lines.
        if line.startswith("ARRAY") or (skipping and line[:1] in (" ", "\t")):
            skipping = True
            continue
        skipping = False
        if line.strip() != HEADER.strip():
            kept.append(line)
    body = "\n".join(kept).rstrip("\n")
    arrays = "\n".join(array_line(a) for a in plan.arrays)
    return (body + "\n\n" if body else "") + HEADER + arrays + "\n"


def write_mdadm_conf(plan: InstallPlan, root: Path) -> list[str]:
    """Write it when the plan has arrays; returns the paths written
    (relative to root, as the initrd tools' files are)."""
    if not plan.arrays:
        return []
    rel = conf_path(root)
    path = root / rel
    old = path.read_text(errors="replace") if path.is_file() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(mdadm_conf_text(plan, old))
    return [rel]
