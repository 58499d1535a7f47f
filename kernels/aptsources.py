"""Which of the machine's apt sources is Debian's archive.

Kernels and golden images come from the Debian mirror the host already
uses, so sysclone follows the same mirror policy as apt and never
hard-codes a host.  apt reads its own sources (one-line and deb822 files,
Enabled:, Architectures:...) and tells us its index targets with
`apt-get indextargets`; once the host has run `apt-get update`, each target
also carries the Origin and Label of the signed Release it came from,
which is what tells Debian's archive from a repository laid out like it.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from debian import deb822

from sysclone.errors import ConfigError
from sysclone.run import run

log = logging.getLogger(__name__)

DEFAULT_APT_ROOT = Path("/etc/apt")

# Used only for targets the host never updated (no Origin known yet).
DEBIAN_ALIASES = frozenset({"stable", "oldstable", "oldoldstable", "testing", "unstable"})


@dataclass(frozen=True)
class DebianMirror:
    """Where Debian's main archive is."""

    uri: str  # e.g. http://deb.debian.org/debian (no trailing slash)
    suite: str  # the release the host tracks, as its sources name it (bookworm)
    where: str = ""  # the sources entry it came from (file:line)


def index_targets(apt_root: Path = DEFAULT_APT_ROOT) -> str:
    """`apt-get indextargets` of the host's apt (or of another /etc/apt)."""
    argv = ["apt-get", "indextargets"]
    if apt_root != DEFAULT_APT_ROOT:
        argv += ["-o", f"Dir::Etc={apt_root}"]
    return run(argv).stdout


def _is_release_name(suite: str) -> bool:
    # bookworm, not bookworm-updates/-backports/-security or a flat "./".
    return bool(suite) and "-" not in suite and "/" not in suite \
        and suite not in ("experimental", "rc-buggy")


def pick_debian(text: str, arch: str | None = None) -> DebianMirror:
    """The first binary Packages target of Debian's main archive in
    `apt-get indextargets` output."""
    signed: list[DebianMirror] = []
    looks: list[DebianMirror] = []
    for t in deb822.Deb822.iter_paragraphs(text.splitlines(), use_apt_pkg=False):
        if t.get("Target-Of") != "deb" or t.get("Created-By") != "Packages":
            continue
        if arch is not None and t.get("Architecture") != arch:
            continue
        site, release = t.get("Site", "").rstrip("/"), t.get("Release", "")
        if urllib.parse.urlsplit(site).scheme not in ("http", "https") \
                or not _is_release_name(release) or t.get("Component") != "main":
            continue
        found = DebianMirror(site, release, t.get("Sourcesentry", ""))
        if t.get("Origin") == "Debian" and t.get("Label") == "Debian":
            signed.append(found)
        elif not t.get("Origin") and \
                "debian" in urllib.parse.urlsplit(site).path.strip("/").split("/"):
            # Never updated: a Debian-looking path (…/debian on mirrors,
            # …/archive/debian/<date> on snapshots).
            looks.append(found)
    if not signed and not looks:
        raise ConfigError(
            "no Debian archive in the machine's apt sources (expected an enabled 'deb' "
            "entry for a Debian mirror such as '.../debian bookworm main')",
            hint="pass the mirror URL and suite explicitly, or run apt-get update")
    mirror = (signed or looks)[0]
    log.debug("Debian mirror from %s: %s %s", mirror.where, mirror.uri, mirror.suite)
    return mirror


def find_debian_mirror(apt_root: Path = DEFAULT_APT_ROOT, *, arch: str | None = None
                       ) -> DebianMirror:
    """Debian's archive as the host's apt sees it."""
    return pick_debian(index_targets(apt_root), arch)
