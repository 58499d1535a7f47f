"""The installed system's identity: host name, /etc/hosts, machine-id, SSH
host keys.  Every clone must be its own machine."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sysclone.run import run

log = logging.getLogger(__name__)


def set_hostname(root: Path, hostname: str, domain: str | None) -> list[str]:
    short = hostname.split(".")[0]
    fqdn = hostname if "." in hostname else (f"{hostname}.{domain}" if domain else hostname)
    (root / "etc/hostname").write_text(short + "\n")
    hosts = root / "etc/hosts"
    text = hosts.read_text() if hosts.is_file() else "127.0.0.1\tlocalhost\n"
    names = f"{fqdn}\t{short}" if fqdn != short else short
    line = f"127.0.1.1\t{names}"
    if re.search(r"^127\.0\.1\.1\s", text, re.M):
        text = re.sub(r"^127\.0\.1\.1\s.*$", line, text, flags=re.M)
    else:
        text = text.rstrip("\n") + "\n" + line + "\n"
    hosts.write_text(text)
    return ["/etc/hostname", "/etc/hosts"]


def reset_machine_id(root: Path) -> list[str]:
    """An empty machine-id makes systemd create a new one on first boot;
    a copied one would make every clone the same machine to journald, DHCP
    (DUID) and dbus."""
    mid = root / "etc/machine-id"
    changed = []
    if mid.exists() and mid.read_text().strip():
        mid.write_text("")
        changed.append("/etc/machine-id")
    dbus = root / "var/lib/dbus/machine-id"
    if dbus.is_file() and not dbus.is_symlink():
        dbus.unlink()
        changed.append("/var/lib/dbus/machine-id")
    return changed


def regenerate_ssh_host_keys(root: Path) -> list[str]:
    """Clones must not share SSH host keys: replace the image's."""
    keys = sorted((root / "etc/ssh").glob("ssh_host_*_key"))
    if not keys:
        return []
    if not (root / "usr/bin/ssh-keygen").exists():
        log.warning("image has SSH host keys but no ssh-keygen: keys left as they are")
        return []
    for k in (root / "etc/ssh").glob("ssh_host_*"):
        k.unlink()
    run(["ssh-keygen", "-A"], target=root)
    return [f"/etc/ssh/{k.name}" for k in keys]
