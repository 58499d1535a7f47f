"""Debian's archive through apt itself, run with a private configuration.

As mkosi does, apt gets its own configuration, sources, lists, state and
package cache (APT_CONFIG, every Dir:: set) under the sysclone cache dir,
trusting only Debian's archive keyring: the host's apt state, pins, proxies
configured in apt.conf.d and keys play no part, and nothing of the host's
apt is written.  apt verifies the chain itself: the InRelease signature,
the Packages indexes against it, each .deb against them.

    cache/apt/<key>/etc/apt.conf, sources.list    one archive (mirror, suite, arch)
    cache/apt/<key>/lists/, state/, archives/      apt's own files
    cache/debs/<sha256>.deb                         packages, shared by every archive

What apt does not do is left to us: which package a kernel flavor stands
for (kernels.standard), naming downloads by their hash so any archive
shares them, and reading what it printed (python-debian's deb822).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from debian import deb822

from sysclone.errors import CommandError, ConfigError, SyscloneError
from sysclone.run import run

log = logging.getLogger(__name__)

# What debian-archive-keyring installs (.pgp since trixie).
DEBIAN_KEYRINGS = (
    Path("/usr/share/keyrings/debian-archive-keyring.pgp"),
    Path("/usr/share/keyrings/debian-archive-keyring.gpg"),
)
# Kernels are in main; firmware in non-free-firmware (bookworm on) or
# non-free (before).  apt notes a component a release lacks and goes on.
COMPONENTS = ("main", "non-free-firmware", "non-free")
_PROXY_VARS = ("http_proxy", "https_proxy", "no_proxy")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")


class ArchiveError(SyscloneError):
    """The archive answered, but not with something we can use."""


@dataclass(frozen=True)
class Package:
    """One binary package as the archive's signed index describes it."""

    name: str
    version: str
    architecture: str
    filename: str  # in the archive, e.g. pool/main/l/linux-signed-amd64/...deb
    sha256: str
    size: int
    depends: str = ""  # the raw Depends field

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.architecture})"

    def depends_on(self) -> list[list[str]]:
        """Depends as groups of alternative package names."""
        return [[alt["name"] for alt in group]
                for group in deb822.PkgRelation.parse_relations(self.depends)]


def debian_keyring() -> Path:
    for k in DEBIAN_KEYRINGS:
        if k.is_file():
            return k
    raise ConfigError("Debian's archive keyring is not installed",
                      hint="apt-get install debian-archive-keyring")


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ConfigError(f"{what} {value!r} is not a Debian name",
                          hint="lowercase letters, digits, '.', '+' and '-'")
    return value


class Archive:
    """One suite of one mirror for one architecture, through a private apt.

    `update()` refreshes the lists (once per instance; without network the
    lists fetched before are used, with a warning), `show()` reads a
    package's candidate stanza, `download()` fetches its .deb into the
    shared cache."""

    def __init__(self, mirror: str, suite: str, arch: str, cache_dir: Path, *,
                 keyring: Path | None = None,
                 components: Sequence[str] = COMPONENTS) -> None:
        if not re.match(r"^https?://[^\s\"'\]\[]+$", mirror):
            raise ConfigError(f"mirror {mirror!r}: expected an http:// or https:// URL")
        self.mirror = mirror.rstrip("/")
        self.suite = check_name(suite, "suite")
        self.arch = check_name(arch, "architecture")
        self.cache_dir = cache_dir
        self.keyring = keyring or debian_keyring()
        self.components = tuple(components)
        key = hashlib.sha256(
            f"{self.mirror} {suite} {arch} {' '.join(self.components)} {self.keyring}".encode()
        ).hexdigest()[:16]
        self.top = cache_dir / "apt" / f"{suite}-{arch}-{key}"
        self._updated = False

    def __repr__(self) -> str:
        return f"Archive({self.mirror!r}, {self.suite!r}, {self.arch!r})"

    # -- apt's private world ---------------------------------------------------

    @property
    def config(self) -> Path:
        return self.top / "etc" / "apt.conf"

    def config_text(self) -> str:
        t = self.top
        options = {
            "Dir": "/",
            "Dir::Etc": t / "etc",
            "Dir::Etc::SourceList": t / "etc" / "sources.list",
            "Dir::Etc::SourceParts": t / "etc" / "sources.list.d",
            "Dir::Etc::Parts": t / "etc" / "apt.conf.d",
            "Dir::Etc::Preferences": t / "etc" / "preferences",
            "Dir::Etc::PreferencesParts": t / "etc" / "preferences.d",
            "Dir::Etc::Trusted": t / "etc" / "trusted.gpg",
            "Dir::Etc::TrustedParts": t / "etc" / "trusted.gpg.d",
            "Dir::State": t / "state",
            "Dir::State::Lists": t / "lists",
            "Dir::State::Status": t / "state" / "status",
            "Dir::Cache": t / "cache",
            "Dir::Cache::Archives": t / "archives",
            "Dir::Log": t / "log",
            "APT::Architecture": self.arch,
            "APT::Architectures": self.arch,
            "Acquire::Languages": "none",
            # Lists are only read by us, with our own lock-free use.
            "Debug::NoLocking": "true",
            # apt drops privileges to _apt for downloads; the cache dir may
            # not be reachable for it (a 0700 parent): stay who we are.
            "APT::Sandbox::User": "root" if os.geteuid() == 0 else "",
            # A warning is a failure: a missing signature must not pass.
            "APT::Update::Error-Mode": "any",
        }
        return "".join(f'{k} "{v}";\n' for k, v in options.items() if v != "")

    def _prepare(self) -> None:
        for d in ("etc/apt.conf.d", "etc/preferences.d", "etc/sources.list.d",
                  "etc/trusted.gpg.d", "state", "lists/partial", "cache",
                  "archives/partial", "log"):
            (self.top / d).mkdir(parents=True, exist_ok=True)
        status = self.top / "state" / "status"
        if not status.exists():
            status.write_text("")  # nothing is installed: apt resolves from scratch
        _write(self.config, self.config_text())
        _write(self.top / "etc" / "sources.list",
               f"deb [signed-by={self.keyring}] {self.mirror} {self.suite} "
               f"{' '.join(self.components)}\n")

    def _apt(self, argv: list[str], *, check: bool = True, cwd: Path | None = None
             ) -> tuple[int, str, str]:
        env = {"APT_CONFIG": str(self.config)}
        # sysclone.run trims the environment; apt honours these as the host's does.
        env.update({k: v for k, v in os.environ.items() if k.lower() in _PROXY_VARS})
        res = run(argv, check=False, env=env, cwd=cwd)
        if check and res.returncode != 0:
            raise CommandError(argv, res.returncode, res.stdout, res.stderr)
        return res.returncode, res.stdout, res.stderr

    def update(self) -> None:
        """apt-get update: fetch and verify InRelease and the indexes."""
        if self._updated:
            return
        self._prepare()
        rc, out, err = self._apt(["apt-get", "-q", "update"], check=False)
        if rc != 0:
            why = _apt_errors(out + "\n" + err)
            if self._have_lists() and not _is_trust_problem(why):
                log.warning("apt-get update failed (%s); using the lists fetched before", why)
            else:
                raise ArchiveError(f"{self.mirror} {self.suite}: {why}",
                                   hint="check the mirror, the suite and the network "
                                        "(apt's own view, with Debian's archive keyring)")
        self._updated = True

    def _have_lists(self) -> bool:
        lists = self.top / "lists"
        return lists.is_dir() and any(p.name.endswith("_InRelease") for p in lists.iterdir())

    def codename(self) -> str:
        """The release's codename, from its (verified) InRelease."""
        self.update()
        _, out, _ = self._apt(["apt-get", "indextargets", "--format", "$(CODENAME)",
                               "Created-By: Packages"])
        names = [line.strip() for line in out.splitlines() if line.strip()]
        return names[0] if names else self.suite

    def show(self, name: str) -> Package:
        """The candidate version of package `name`."""
        check_name(name, "package")
        self.update()
        rc, out, err = self._apt(["apt-cache", "show", "--no-all-versions", name], check=False)
        stanzas = [s for s in deb822.Packages.iter_paragraphs(out.splitlines(),
                                                              use_apt_pkg=False) if s]
        if rc != 0 or not stanzas:
            raise ArchiveError(f"package {name!r} not found in {self.mirror} {self.suite} "
                               f"({self.arch})", hint=_apt_errors(err) or None)
        return package_from(stanzas[0])

    def download(self, package: Package) -> Path:
        """The .deb of `package` in the cache (cache/debs/<sha256>.deb),
        downloaded and verified by apt if it is not there yet."""
        if not _SHA256_RE.match(package.sha256):
            raise ArchiveError(f"{package}: bad sha256 {package.sha256!r}")
        debs = self.cache_dir / "debs"
        dest = debs / f"{package.sha256}.deb"
        if dest.is_file() and file_sha256(dest) == package.sha256:
            log.info("%s: using cached %s", package, dest)
            return dest
        self.update()
        debs.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=debs, prefix=".download-"))
        try:
            log.info("downloading %s (%.1f MB)", package, package.size / 1e6)
            self._apt(["apt-get", "-q", "download", f"{package.name}={package.version}"],
                      cwd=work)
            got = [p for p in work.iterdir() if p.suffix == ".deb"]
            if len(got) != 1:
                raise ArchiveError(f"apt-get download {package.name} left "
                                   f"{len(got)} .deb files")
            actual = file_sha256(got[0])
            if actual != package.sha256:  # apt checked it; a second look is cheap
                raise ArchiveError(f"{package}: sha256 {actual} is not the index's "
                                   f"{package.sha256}")
            got[0].replace(dest)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return dest


def package_from(stanza: deb822.Deb822) -> Package:
    try:
        return Package(
            name=stanza["Package"],
            version=stanza["Version"],
            architecture=stanza.get("Architecture", ""),
            filename=stanza["Filename"],
            sha256=stanza["SHA256"].lower(),
            size=int(stanza["Size"]),
            depends=" ".join(stanza.get("Depends", "").split()),
        )
    except (KeyError, ValueError) as e:
        raise ArchiveError(f"apt-cache show {stanza.get('Package', '?')}: no usable "
                           f"{e} field") from None


def _apt_errors(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.startswith(("E:", "W:", "Err:"))]
    return "; ".join(lines[-3:]) or (text.strip().splitlines() or ["apt failed"])[-1]


def _is_trust_problem(why: str) -> bool:
    # Lists we have are no excuse for a signature or hash that does not hold.
    return any(w in why for w in ("NO_PUBKEY", "not signed", "BADSIG", "Hash Sum",
                                  "EXPKEYSIG", "is not valid yet", "expired"))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _write(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)
