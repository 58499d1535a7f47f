"""The machine's apt sources, and which of them is Debian's archive.

Standard kernels come from the same Debian mirror the host already uses, so
that sysclone works behind the same proxy/mirror policy as apt and never
hard-codes a host.  apt reads `sources.list`, then `sources.list.d/*.list`
(one-line format) and `*.sources` (deb822) in name order; so do we.
"""

from __future__ import annotations

import logging
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from kernels import deb822
from sysclone.errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_APT_ROOT = Path("/etc/apt")

# Release codenames and the aliases apt lines use.  Only consulted for
# sources that carry no Signed-By (old-style lines trusted through
# trusted.gpg.d), where nothing else tells Debian's archive from a
# third-party repository laid out like it.  Lines signed by Debian's own
# keyring are recognised whatever their codename, so a release newer than
# this list still works on a modern deb822 system.
DEBIAN_CODENAMES = frozenset({
    "buzz", "rex", "bo", "hamm", "slink", "potato", "woody", "sarge", "etch", "lenny",
    "squeeze", "wheezy", "jessie", "stretch", "buster", "bullseye", "bookworm", "trixie",
    "forky", "duke", "sid",
})
DEBIAN_ALIASES = frozenset({"stable", "oldstable", "oldoldstable", "testing", "unstable"})
# Suffixes of suites that live in the same archive as the release itself;
# stripping them gives the release the host runs.
_ARCHIVE_SUFFIXES = ("-proposed-updates", "-backports-sloppy", "-backports", "-updates")
# debian-archive-keyring ships debian-archive-keyring.gpg (.pgp since trixie)
# and per-release debian-archive-<codename>-{stable,automatic,...}.{gpg,asc}.
_DEBIAN_KEYRING_RE = re.compile(r"^debian-archive-(?!removed-keys).*\.(gpg|asc|pgp)$")
_FINGERPRINT_RE = re.compile(r"^[0-9A-Fa-f]{16,40}!?$")
_FALSE = frozenset({"no", "false", "without", "off", "disable"})


@dataclass(frozen=True)
class AptSource:
    """One source entry (a line, or a deb822 stanza with all its URIs and
    suites).  `where` is `file:line` for messages."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    components: tuple[str, ...]
    where: str
    enabled: bool = True
    architectures: tuple[str, ...] = ()  # empty: whatever apt's default is
    excluded_architectures: tuple[str, ...] = ()
    signed_by: tuple[str, ...] = ()  # keyring paths and/or key fingerprints
    inline_key: str | None = None  # an ASCII-armored key block in Signed-By

    @property
    def keyring_paths(self) -> tuple[Path, ...]:
        return tuple(Path(s) for s in self.signed_by if not _FINGERPRINT_RE.match(s))

    @property
    def fingerprints(self) -> tuple[str, ...]:
        return tuple(s.rstrip("!").upper() for s in self.signed_by if _FINGERPRINT_RE.match(s))

    def serves(self, arch: str) -> bool:
        if arch in self.excluded_architectures:
            return False
        return not self.architectures or arch in self.architectures


@dataclass(frozen=True)
class DebianMirror:
    """Where Debian's main archive is and how to trust it."""

    uri: str  # e.g. http://deb.debian.org/debian (no trailing slash)
    suite: str  # the release the host tracks, e.g. bookworm (as apt names it)
    keyrings: tuple[Path, ...]  # keyrings gpgv should use
    inline_keys: tuple[str, ...] = ()  # armored keys from an inline Signed-By
    fingerprints: tuple[str, ...] = ()  # if set, only signatures by these keys count
    where: str = ""  # the source entry it came from


# -- reading ---------------------------------------------------------------


def parse_one_line(text: str, where: str) -> list[AptSource]:
    """Parse the classic `deb [opts] uri suite [component...]` format."""
    sources = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        at = f"{where}:{number}"
        kind, _, rest = line.partition(" ")
        if kind not in ("deb", "deb-src"):
            raise ConfigError(f"{at}: expected a line starting with 'deb' or 'deb-src', "
                              f"got {line!r}")
        options: dict[str, list[str]] = {}
        rest = rest.strip()
        if rest.startswith("["):
            inside, closed, rest = rest[1:].partition("]")
            if not closed:
                raise ConfigError(f"{at}: unterminated '[' option list")
            for option in inside.split():
                name, eq, value = option.partition("=")
                if not eq:
                    raise ConfigError(f"{at}: expected option=value in [...], got {option!r}")
                options[name.lower()] = [v for v in value.split(",") if v]
        words = rest.split()
        if len(words) < 2:
            raise ConfigError(f"{at}: expected '{kind} URI SUITE [COMPONENT...]', got {line!r}")
        uri, suite, components = words[0], words[1], tuple(words[2:])
        if not suite.endswith("/") and not components:
            raise ConfigError(f"{at}: suite {suite!r} needs at least one component")
        sources.append(AptSource(
            types=(kind,),
            uris=(uri,),
            suites=(suite,),
            components=components,
            where=at,
            architectures=tuple(options.get("arch", ())),
            excluded_architectures=tuple(options.get("arch-", ())),
            signed_by=tuple(options.get("signed-by", ())),
        ))
    return sources


def parse_deb822(text: str, where: str) -> list[AptSource]:
    """Parse the `.sources` format: stanzas with Types/URIs/Suites/..."""
    sources = []
    try:
        stanzas = list(deb822.parse(text))
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    for stanza in stanzas:
        at = f"{where}:{stanza.line}"
        missing = [f for f in ("types", "uris", "suites") if not stanza.get(f, "").split()]
        if missing:
            raise ConfigError(f"{at}: stanza lacks {', '.join(m.capitalize() for m in missing)}")
        suites = tuple(stanza["suites"].split())
        components = tuple(stanza.get("components", "").split())
        if not components and not all(s.endswith("/") for s in suites):
            raise ConfigError(f"{at}: Components is required unless the suite ends in '/'")
        signed_by = stanza.get("signed-by", "")
        inline_key = None
        if "BEGIN PGP PUBLIC KEY BLOCK" in signed_by:
            inline_key, signed_by = signed_by.strip() + "\n", ""
        sources.append(AptSource(
            types=tuple(stanza["types"].split()),
            uris=tuple(stanza["uris"].split()),
            suites=suites,
            components=components,
            where=at,
            enabled=stanza.get("enabled", "yes").strip().lower() not in _FALSE,
            architectures=tuple(stanza.get("architectures", "").split()),
            excluded_architectures=tuple(stanza.get("architectures-remove", "").split()),
            signed_by=tuple(signed_by.split()),
            inline_key=inline_key,
        ))
    return sources


def source_files(apt_root: Path = DEFAULT_APT_ROOT) -> list[Path]:
    """The files apt reads, in its order."""
    files = []
    main = apt_root / "sources.list"
    if main.is_file():
        files.append(main)
    parts = apt_root / "sources.list.d"
    if parts.is_dir():
        # apt ignores other extensions (foo.list.save, *.disabled...).
        files += sorted(p for p in parts.iterdir()
                        if p.suffix in (".list", ".sources") and p.is_file())
    return files


def read_sources(apt_root: Path = DEFAULT_APT_ROOT) -> list[AptSource]:
    """Every source entry of the machine, disabled ones included, in apt's order."""
    sources: list[AptSource] = []
    for path in source_files(apt_root):
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: cannot read apt sources: {e}") from None
        parse = parse_deb822 if path.suffix == ".sources" else parse_one_line
        sources += parse(text, str(path))
    return sources


# -- picking Debian's archive -------------------------------------------------


def _base_suite(suite: str) -> str:
    for suffix in _ARCHIVE_SUFFIXES:
        if suite.endswith(suffix):
            return suite[: -len(suffix)]
    return suite


def _is_security(uri: str, suite: str) -> bool:
    path = urllib.parse.urlsplit(uri).path.rstrip("/")
    return (path.endswith("/debian-security") or suite.endswith("-security")
            or suite.endswith("/updates"))


def _has_debian_keyring(source: AptSource) -> bool:
    return any(_DEBIAN_KEYRING_RE.match(p.name) for p in source.keyring_paths)


def _looks_like_debian(uri: str, suite: str, source: AptSource) -> bool:
    """Heuristic for sources without Signed-By: a Debian suite, the `main`
    component and `debian` in the URI path (…/debian on every mirror,
    …/archive/debian/<date> on snapshot.debian.org)."""
    segments = urllib.parse.urlsplit(uri).path.strip("/").split("/")
    base = _base_suite(suite)
    known = base in DEBIAN_CODENAMES or base in DEBIAN_ALIASES
    return known and "main" in source.components and "debian" in segments


def _default_keyrings(apt_root: Path) -> tuple[Path, ...]:
    # What apt trusts for a source without Signed-By.
    keyrings = [apt_root / "trusted.gpg"] if (apt_root / "trusted.gpg").is_file() else []
    parts = apt_root / "trusted.gpg.d"
    if parts.is_dir():
        keyrings += sorted(p for p in parts.iterdir() if p.suffix in (".gpg", ".asc"))
    return tuple(keyrings)


def find_debian_mirror(
    apt_root: Path = DEFAULT_APT_ROOT, *, arch: str | None = None
) -> DebianMirror:
    """The first enabled `deb` source that is Debian's main archive.

    Sources whose Signed-By names Debian's archive keyring are preferred over
    ones without a keyring file (old-style lines trusted through
    trusted.gpg.d, inline keys) that merely look like Debian: a third-party
    repository can use a codename suite and a /debian path too.  Sources
    whose Signed-By names some other keyring file are never Debian's.  The
    security and debug archives, flat repositories and non-http(s) URIs are
    skipped.
    """
    signed: list[tuple[AptSource, str, str]] = []
    looks: list[tuple[AptSource, str, str]] = []
    for source in read_sources(apt_root):
        if not source.enabled or "deb" not in source.types:
            continue
        if arch is not None and not source.serves(arch):
            continue
        for uri in source.uris:
            if urllib.parse.urlsplit(uri).scheme not in ("http", "https"):
                log.debug("%s: skipping %s: not http(s)", source.where, uri)
                continue
            for suite in source.suites:
                if suite.endswith("/") or _is_security(uri, suite):
                    continue
                base = _base_suite(suite)
                # Release names have no hyphen: what is left after the
                # suffixes above is another archive (bookworm-debug on
                # debian-debug, bookworm-pgdg...), and experimental never
                # stands alone as a host's release.
                if "-" in base or base in ("experimental", "rc-buggy"):
                    continue
                if _has_debian_keyring(source):
                    signed.append((source, uri, base))
                elif not source.keyring_paths and _looks_like_debian(uri, suite, source):
                    # No keyring file named: trusted.gpg.d or an inline key,
                    # neither of which says whose archive this is.
                    looks.append((source, uri, base))
    if not signed and not looks:
        raise ConfigError(
            f"no Debian archive found in the apt sources under {apt_root} "
            "(expected an enabled 'deb' entry for a Debian mirror such as "
            "'.../debian bookworm main', not the security archive)",
            hint="pass the mirror URL and suite explicitly",
        )
    source, uri, suite = (signed or looks)[0]
    keyrings = source.keyring_paths or _default_keyrings(apt_root)
    mirror = DebianMirror(
        uri=uri.rstrip("/"),
        suite=suite,
        keyrings=keyrings,
        inline_keys=(source.inline_key,) if source.inline_key else (),
        fingerprints=source.fingerprints,
        where=source.where,
    )
    log.debug("Debian mirror from %s: %s %s", source.where, mirror.uri, mirror.suite)
    return mirror
