"""Enabling systemd units in an image tree, as `systemctl enable` would.

The installed system must start what sysclone configured for it (a network
configured for systemd-networkd is no use if networkd never runs), and the
agent cannot ask the image's systemctl: it runs before the chroot exists
and without the image's /proc.  So the unit's [Install] section is read and
the same links are made: WantedBy=/RequiredBy= as .wants/.requires links,
Alias= as an alias link, Also= units enabled in turn.  Links are absolute
paths inside the image, as systemctl writes them.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from sysclone.errors import SyscloneError

log = logging.getLogger(__name__)

# systemd's unit search path, admin's first (a unit there shadows the vendor's).
UNIT_DIRS = ("etc/systemd/system", "usr/lib/systemd/system", "lib/systemd/system")


class UnitError(SyscloneError):
    pass


def find_unit(root: Path, unit: str) -> Path | None:
    """The unit file the image's systemd would load (None when there is
    none).  A link to /dev/null is a masked unit: returned as it is."""
    for d in UNIT_DIRS:
        p = root / d / unit
        if p.is_symlink() or p.exists():
            return p
    return None


def is_masked(root: Path, unit: str) -> bool:
    for d in ("etc/systemd/system", "run/systemd/system"):
        p = root / d / unit
        if p.is_symlink() and str(p.readlink()) == "/dev/null":
            return True
    return False


def _resolve_in_image(root: Path, p: Path) -> Path:
    """Follow a link the way the image sees it (absolute targets are
    relative to the image's root, not the boot environment's)."""
    for _ in range(16):
        if not p.is_symlink():
            return p
        target = p.readlink()
        p = root / str(target).lstrip("/") if target.is_absolute() else p.parent / target
    return p


def install_section(text: str) -> dict[str, list[str]]:
    """The [Install] section's settings, each a list of the words given
    (repeated keys add up, as in systemd)."""
    out: dict[str, list[str]] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        m = re.fullmatch(r"\[(.+)\]", line)
        if m:
            section = m.group(1)
            continue
        if section != "Install" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        words = value.split()
        if not words:  # an empty assignment resets the list
            out[key.strip()] = []
        else:
            out.setdefault(key.strip(), []).extend(words)
    return out


def is_enabled(root: Path, unit: str) -> bool:
    """Whether some .wants/.requires link or alias of the unit exists in
    /etc (links may dangle outside the image: judged by name)."""
    etc = root / "etc/systemd/system"
    return any((d / unit).is_symlink() or (d / unit).exists()
               for d in list(etc.glob("*.wants")) + list(etc.glob("*.requires")))


def enable(root: Path, unit: str, _seen: set[str] | None = None) -> list[str]:
    """Enable `unit` in the image; returns the links made (paths from /).
    Refuses a masked unit or one the image does not have."""
    seen = _seen if _seen is not None else set()
    if unit in seen:
        return []
    seen.add(unit)
    if is_masked(root, unit):
        raise UnitError(f"{unit} is masked in the image (/etc/systemd/system/{unit} -> "
                        "/dev/null): sysclone will not unmask it",
                        hint=f"run `systemctl unmask {unit}` in the golden image")
    path = find_unit(root, unit)
    if path is None:
        raise UnitError(f"the image has no {unit}",
                        hint="install the package that provides it in the golden image")
    real = _resolve_in_image(root, path)
    if not real.is_file():
        raise UnitError(f"{unit} in the image is a dangling link ({path})")
    inst = install_section(real.read_text(errors="replace"))
    # The path systemctl links to: where the unit lives, seen from inside.
    target = "/" + str(path.relative_to(root))
    if target.startswith("/etc/systemd/system/"):
        target = "/" + str(real.relative_to(root))
    made: list[str] = []
    for key, suffix in (("WantedBy", "wants"), ("RequiredBy", "requires")):
        for by in inst.get(key, []):
            made += _link(root, f"etc/systemd/system/{by}.{suffix}/{unit}", target)
    for alias in inst.get("Alias", []):
        made += _link(root, f"etc/systemd/system/{alias}", target)
    for also in inst.get("Also", []):
        made += enable(root, also, seen)
    if not made and not any(inst.get(k) for k in ("WantedBy", "RequiredBy", "Alias", "Also")):
        log.info("%s has no [Install] section: it is started by what needs it", unit)
    return made


def _link(root: Path, rel: str, target: str) -> list[str]:
    link = root / rel
    if link.is_symlink():
        if str(link.readlink()) == target:
            return []
        link.unlink()
    elif link.exists():
        return []  # a real file there: the admin's, left alone
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)
    return ["/" + rel]
