"""/etc/crypttab for the installed system, and how its initrd unlocks root.

Each LUKS volume of the plan is named by the UUID the plan gave its header.
How it is unlocked at boot (si.luks-unlock):

  keyfile  (default) the key is stored in /etc/cryptsetup-keys.d/<name>.key
           (mode 0400) and named in crypttab; Debian's cryptsetup-initramfs
           copies key files matching KEYFILE_PATTERN into the initrd (set in
           /etc/cryptsetup-initramfs/conf-hook, with UMASK=0077 so the initrd
           is readable by root only), dracut those listed in install_items.
           The machine boots unattended; whoever can read /boot can read the
           key, so this protects data on disks taken out of service only
           once /boot is wiped, not a stolen running machine.
  console  crypttab names no key: the initrd asks for the passphrase on the
           console at every boot.  The key is not stored on the machine.
"""

from __future__ import annotations

import os
from pathlib import Path

from agent.plan import InstallPlan

KEY_DIR = "etc/cryptsetup-keys.d"
CONF_HOOK = "etc/cryptsetup-initramfs/conf-hook"
UMASK_CONF = "etc/initramfs-tools/conf.d/sysclone-umask"
DRACUT_CONF = "etc/dracut.conf.d/90-sysclone-luks.conf"
KEYFILE_PATTERN = f'KEYFILE_PATTERN="/{KEY_DIR}/*.key"'
HEADER = "# <target name>\t<source device>\t<key file>\t<options>, written by sysclone\n"


def crypttab_text(plan: InstallPlan, unlock: str) -> str:
    lines = []
    for c in plan.crypts:
        key = f"/{KEY_DIR}/{c.name}.key" if unlock == "keyfile" else "none"
        options = ",".join(["luks", *(o for o in (c.options or "").split(",") if o)])
        lines.append(f"{c.name}\tUUID={c.uuid}\t{key}\t{options}")
    return HEADER + "\n".join(lines) + "\n"


def _set_line(path: Path, key: str, line: str) -> None:
    """Replace the `key=` assignment in a shell-style config, or add it."""
    text = path.read_text(errors="replace") if path.is_file() else ""
    kept = [x for x in text.splitlines() if not x.lstrip().startswith(f"{key}=")]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*kept, line]).lstrip("\n") + "\n")


def _write_key(root: Path, name: str, key: bytes) -> str:
    d = root / KEY_DIR
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o700)
    path = d / f"{name}.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    os.chmod(path, 0o400)
    return f"{KEY_DIR}/{name}.key"


def write_crypttab(plan: InstallPlan, root: Path, unlock: str) -> list[str]:
    """Write crypttab (and, for keyfile unlocking, the keys and the initrd
    tools' settings); returns the paths written, relative to root.  The
    image's crypttab names the golden client's volumes and is replaced."""
    if not plan.crypts:
        return []
    written = ["etc/crypttab"]
    (root / "etc").mkdir(exist_ok=True)
    (root / "etc/crypttab").write_text(crypttab_text(plan, unlock))
    if unlock != "keyfile":
        return written
    for c in plan.crypts:
        written.append(_write_key(root, c.name, plan.keys[c.name]))
    _set_line(root / CONF_HOOK, "KEYFILE_PATTERN", KEYFILE_PATTERN)
    _set_line(root / UMASK_CONF, "UMASK", "UMASK=0077")
    keys = " ".join(f"/{KEY_DIR}/{c.name}.key" for c in plan.crypts)
    dracut = root / DRACUT_CONF
    dracut.parent.mkdir(parents=True, exist_ok=True)
    dracut.write_text("# written by sysclone: unlock the LUKS volumes at boot with their key\n"
                      f'install_items+=" /etc/crypttab {keys} "\n')
    return [*written, CONF_HOOK, UMASK_CONF, DRACUT_CONF]
