"""A small, verified client for a Debian package archive.

The chain of trust is apt's: `dists/<suite>/InRelease` is checked with gpgv
against the given keyrings; it lists the SHA256 of each Packages index; each
Packages stanza gives the SHA256 of its .deb.  Nothing is used before its
hash is checked.

Cache layout (under the sysclone cache dir, shared between state roots):

    apt/release/<mirror>/<suite>/InRelease   last verified InRelease (offline fallback)
    apt/index/<InRelease sha256>/<component>_binary-<arch>.json   parsed Packages
    apt/keyrings/<sha256>.gpg                 armored keys converted for gpgv
    debs/<sha256>.deb                         downloaded packages

so a rerun against an unchanged mirror only re-downloads the InRelease, and
one without network works from what was fetched before.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import re
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

from kernels import deb822, gpgv
from kernels.aptsources import DebianMirror
from kernels.debversion import parse_relations, version_key
from kernels.fetch import Fetch, FetchError, Progress, check_url, http_fetch
from sysclone.errors import ConfigError, SyscloneError

log = logging.getLogger(__name__)

INDEX_FORMAT = 1
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


class ArchiveError(SyscloneError):
    """The archive answered, but not with something we can use."""


class ChecksumError(ArchiveError):
    """A downloaded file does not match the hash the signed index gives."""


# -- InRelease -----------------------------------------------------------------


@dataclass(frozen=True)
class IndexFile:
    path: str  # relative to dists/<suite>/, e.g. main/binary-amd64/Packages.xz
    sha256: str
    size: int


@dataclass(frozen=True)
class Release:
    """The signed part of an InRelease file."""

    origin: str
    label: str
    suite: str  # e.g. oldstable
    codename: str  # e.g. bookworm
    date: datetime | None
    valid_until: datetime | None
    acquire_by_hash: bool
    architectures: tuple[str, ...]
    components: tuple[str, ...]
    files: dict[str, IndexFile]  # by path; SHA256 entries only (MD5 is no proof)
    sha256: str = ""  # of the InRelease file as fetched: the index cache key

    def names(self, suite: str) -> bool:
        """Whether this is the release apt would call `suite`."""
        return suite in (self.suite, self.codename)


def _date(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise ArchiveError(f"InRelease: cannot read the date {value!r}") from None


def parse_release(text: str, sha256: str = "") -> Release:
    """Parse the (already verified) text of an InRelease/Release file."""
    try:
        stanza = next(deb822.parse(text, comments=False))
    except (StopIteration, ValueError) as e:
        raise ArchiveError(f"InRelease: not a Release file ({e or 'empty'})") from None
    files: dict[str, IndexFile] = {}
    for line in stanza.get("sha256", "").splitlines():
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not _SHA256_RE.match(parts[0]) or not parts[1].isdigit():
            raise ArchiveError(f"InRelease: malformed SHA256 line {line.strip()!r}")
        files[parts[2]] = IndexFile(parts[2], parts[0], int(parts[1]))
    return Release(
        origin=stanza.get("origin", ""),
        label=stanza.get("label", ""),
        suite=stanza.get("suite", ""),
        codename=stanza.get("codename", ""),
        date=_date(stanza.get("date")),
        valid_until=_date(stanza.get("valid-until")),
        acquire_by_hash=stanza.get("acquire-by-hash", "no").lower() == "yes",
        architectures=tuple(stanza.get("architectures", "").split()),
        components=tuple(stanza.get("components", "").split()),
        files=files,
        sha256=sha256,
    )


# -- Packages ------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    architecture: str
    filename: str  # relative to the mirror root, e.g. pool/main/l/...deb
    sha256: str
    size: int
    depends: str = ""  # the raw Depends field; see debversion.parse_relations

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.architecture})"


_PACKAGE_FIELDS = ("package", "version", "architecture", "filename", "sha256", "size", "depends")


def parse_packages(text: str) -> list[Package]:
    """The stanzas of a Packages index.  Stanzas without a SHA256 cannot be
    verified and are left out."""
    packages = []
    skipped = 0
    for stanza in deb822.parse(text, fields=_PACKAGE_FIELDS, comments=False):
        try:
            packages.append(Package(
                name=stanza["package"],
                version=stanza["version"],
                architecture=stanza.get("architecture", ""),
                filename=stanza["filename"],
                sha256=stanza["sha256"].lower(),
                size=int(stanza["size"]),
                depends=" ".join(stanza.get("depends", "").split()),
            ))
        except (KeyError, ValueError):
            skipped += 1
    if skipped:
        log.debug("Packages: skipped %d stanzas without filename/size/sha256", skipped)
    return packages


class PackageIndex:
    """Packages by name; `get` gives the newest version, `versions` all of
    them newest first (a suite can carry several, and a metapackage may pin
    one that is not the newest)."""

    def __init__(self, packages: Iterable[Package], where: str = "") -> None:
        self.where = where
        by_name: dict[str, list[Package]] = {}
        for p in packages:
            by_name.setdefault(p.name, []).append(p)
        for versions in by_name.values():
            if len(versions) > 1:
                versions.sort(key=lambda p: version_key(p.version), reverse=True)
        self._by_name = by_name

    def get(self, name: str) -> Package | None:
        versions = self._by_name.get(name)
        return versions[0] if versions else None

    def versions(self, name: str) -> tuple[Package, ...]:
        return tuple(self._by_name.get(name, ()))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __len__(self) -> int:
        return len(self._by_name)

    def __iter__(self) -> Iterator[Package]:
        """The newest version of every package."""
        return (versions[0] for versions in self._by_name.values())

    def all_packages(self) -> Iterator[Package]:
        return (p for versions in self._by_name.values() for p in versions)


def resolve_metapackage(
    index: PackageIndex, name: str, *, follow: Callable[[str], bool] | None = None
) -> Package:
    """Follow `name`'s Depends to the concrete package it stands for.

    A kernel metapackage (linux-image-cloud-amd64) depends on exactly one
    versioned image (linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)); the
    image's own Depends (kmod, linux-base, initramfs-tools) name nothing that
    `follow` accepts, which is how we know we have arrived.  In each group of
    alternatives the first one present in the index at a satisfying version
    wins, as apt would choose.
    """
    if follow is None:
        def follow(dep: str) -> bool:
            return dep.startswith("linux-image-")
    package = index.get(name)
    if package is None:
        raise ArchiveError(f"package {name!r} not found in {index.where or 'the index'}",
                           hint="check the flavor name (e.g. cloud-amd64, amd64, rt-amd64)")
    seen = {name}
    while True:
        try:
            groups = parse_relations(package.depends)
        except ValueError as e:
            raise ArchiveError(f"{package}: {e}") from None
        step: Package | None = None
        for group in groups:
            wanted = [r for r in group if follow(r.name) and r.name not in seen]
            if not wanted:
                continue
            for relation in wanted:
                step = next((p for p in index.versions(relation.name)
                             if relation.satisfied_by(p.version)), None)
                if step:
                    break
            if step is None:
                alts = " | ".join(str(r) for r in wanted)
                raise ArchiveError(f"{package} depends on {alts}, which is not in "
                                   f"{index.where or 'the index'}")
            break
        if step is None:
            return package
        log.debug("%s -> %s", package, step)
        seen.add(step.name)
        package = step


def _index_to_json(index: PackageIndex, source: str) -> str:
    rows = [[p.name, p.version, p.architecture, p.filename, p.sha256, p.size, p.depends]
            for p in index.all_packages()]
    return json.dumps({"format": INDEX_FORMAT, "source": source, "packages": rows},
                      separators=(",", ":"))


def _index_from_json(text: str, where: str) -> PackageIndex:
    data = json.loads(text)
    if data.get("format") != INDEX_FORMAT:
        raise ValueError("unknown index cache format")
    return PackageIndex((Package(*row) for row in data["packages"]), where)


# -- files -----------------------------------------------------------------------


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _check_file(path: Path, sha256: str, size: int | None, what: str) -> None:
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        raise ChecksumError(f"{what}: size mismatch: expected {size} bytes, got {actual_size}")
    actual = file_sha256(path)
    if actual != sha256:
        raise ChecksumError(f"{what}: sha256 mismatch: expected {sha256}, got {actual}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.+~-]+", "_", text).strip("_") or "_"


def _decompress(data: bytes, name: str) -> str:
    if name.endswith(".xz"):
        data = lzma.decompress(data)
    elif name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.decode("utf-8")


class DebianArchive:
    """One suite of one mirror.  `fetch` does the HTTP (tests pass a fake);
    `retries` attempts are made on transient failures and checksum errors."""

    def __init__(
        self,
        mirror: str,
        suite: str,
        *,
        keyrings: Sequence[Path],
        cache_dir: Path,
        inline_keys: Sequence[str] = (),
        fingerprints: Sequence[str] = (),
        fetch: Fetch = http_fetch,
        retries: int = 3,
        retry_delay: float = 1.0,
    ) -> None:
        mirror = mirror.rstrip("/")
        try:
            check_url(mirror + "/")
        except FetchError:
            raise ConfigError(f"mirror {mirror!r}: expected an http:// or https:// URL") \
                from None
        if not suite or suite.startswith("/") or ".." in suite.split("/"):
            raise ConfigError(f"suite {suite!r}: expected a release name such as bookworm")
        self.mirror = mirror
        self.suite = suite
        self.keyrings = tuple(keyrings)
        self.inline_keys = tuple(inline_keys)
        self.fingerprints = tuple(fingerprints)
        self.cache_dir = cache_dir
        self.fetch = fetch
        self.retries = max(1, retries)
        self.retry_delay = retry_delay
        self._release: Release | None = None
        self._indexes: dict[tuple[str, str], PackageIndex] = {}

    @classmethod
    def from_mirror(cls, mirror: DebianMirror, cache_dir: Path, *,
                    fetch: Fetch = http_fetch) -> DebianArchive:
        return cls(mirror.uri, mirror.suite, keyrings=mirror.keyrings,
                   inline_keys=mirror.inline_keys, fingerprints=mirror.fingerprints,
                   cache_dir=cache_dir, fetch=fetch)

    def __repr__(self) -> str:
        return f"DebianArchive({self.mirror!r}, {self.suite!r})"

    @property
    def where(self) -> str:
        return f"{self.mirror} {self.suite}"

    def url(self, path: str) -> str:
        """The URL of `path` relative to the mirror root.  Paths come from
        signed indexes, but are still refused if they could escape it."""
        parts = path.split("/")
        if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
            raise ArchiveError(f"refusing unsafe archive path {path!r}")
        return f"{self.mirror}/{urllib.parse.quote(path, safe='/+~:@')}"

    # -- downloads -------------------------------------------------------------

    def _download(self, urls: Sequence[str], dest: Path, *, sha256: str | None,
                  size: int | None, progress: Progress | None = None) -> None:
        """Fetch the first of `urls` that exists into `dest`, atomically: the
        body goes to a temporary file next to it that is renamed only once
        its hash matches, so an interrupted download never looks complete."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        last: SyscloneError | None = None
        for attempt in range(1, self.retries + 1):
            for url in urls:
                fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.",
                                                suffix=".part")
                tmp = Path(tmp_name)
                try:
                    with os.fdopen(fd, "wb") as f:
                        self.fetch(url, f, progress)
                    if sha256 is not None:
                        _check_file(tmp, sha256, size, url)
                    tmp.replace(dest)
                    return
                except FetchError as e:
                    if e.status == 404 and url != urls[-1]:
                        log.debug("%s: not found, trying the next location", url)
                        continue
                    if not e.transient:
                        raise
                    last = e
                except ChecksumError as e:
                    last = e
                finally:
                    tmp.unlink(missing_ok=True)
                break  # a transient error: retry from the first URL
            if attempt < self.retries:
                log.warning("%s (attempt %d of %d); retrying", last, attempt, self.retries)
                time.sleep(self.retry_delay * attempt)
        assert last is not None
        raise last

    def _binary_keyrings(self) -> list[Path]:
        return gpgv.binary_keyrings(self.keyrings, self.inline_keys,
                                    self.cache_dir / "apt" / "keyrings")

    # -- InRelease ---------------------------------------------------------------

    def release(self) -> Release:
        """Fetch, verify and parse InRelease (once per instance).  Without
        network, the last verified copy is used, with a warning."""
        if self._release is None:
            self._release = self._fetch_release()
        return self._release

    def _fetch_release(self) -> Release:
        cached = (self.cache_dir / "apt" / "release" / _slug(self.mirror.split("://", 1)[1])
                  / _slug(self.suite) / "InRelease")
        url = self.url(f"dists/{self.suite}/InRelease")
        # Per-process name: a concurrent run must not move ours away.
        fresh = cached.with_name(f"InRelease.{os.getpid()}.new")
        offline = False
        try:
            self._download([url], fresh, sha256=None, size=None)
        except FetchError as e:
            if e.status == 404:
                raise ConfigError(f"suite {self.suite!r} not found on {self.mirror} "
                                  f"({url}: HTTP 404)",
                                  hint="check the suite name and the mirror URL") from None
            if not cached.is_file():
                raise
            log.warning("cannot reach %s (%s); using the InRelease fetched before",
                        self.mirror, e.message)
            offline = True
        path = cached if offline else fresh
        try:
            text = gpgv.verify_clearsigned(path, self._binary_keyrings(),
                                           fingerprints=self.fingerprints, what=url)
            release = parse_release(text, file_sha256(path))
        except SyscloneError:
            if not offline:
                fresh.unlink(missing_ok=True)
            raise
        if not release.names(self.suite):
            raise ArchiveError(f"{url}: is for {release.suite}/{release.codename}, "
                               f"not {self.suite}")
        if release.valid_until and release.valid_until < datetime.now(UTC):
            message = f"{url}: expired on {release.valid_until:%Y-%m-%d %H:%M} UTC"
            if not offline:
                fresh.unlink(missing_ok=True)
                raise ArchiveError(message, hint="the mirror is stale; try another mirror")
            log.warning("%s; using it anyway as we are offline", message)
        if not offline:
            fresh.replace(cached)
        log.info("%s: %s %s (%s), %s", self.mirror, release.origin, release.codename,
                 release.suite, f"dated {release.date:%Y-%m-%d}" if release.date else "undated")
        return release

    # -- Packages ----------------------------------------------------------------

    def packages(self, component: str = "main", arch: str = "amd64") -> PackageIndex:
        """The verified Packages index of one component and architecture."""
        key = (component, arch)
        if key not in self._indexes:
            self._indexes[key] = self._load_packages(component, arch)
        return self._indexes[key]

    def _load_packages(self, component: str, arch: str) -> PackageIndex:
        release = self.release()
        where = f"{self.where} {component}/binary-{arch}"
        cache = (self.cache_dir / "apt" / "index" / release.sha256
                 / f"{_slug(component)}_binary-{_slug(arch)}.json")
        if cache.is_file():
            try:
                index = _index_from_json(cache.read_text(encoding="utf-8"), where)
                log.debug("%s: %d packages from %s", where, len(index), cache)
                return index
            except (OSError, ValueError, TypeError, KeyError) as e:
                log.warning("ignoring unreadable index cache %s: %s", cache, e)
        base = f"{component}/binary-{arch}/Packages"
        candidates = [release.files[p] for p in (base + ".xz", base + ".gz", base)
                      if p in release.files]
        if not candidates:
            raise ArchiveError(
                f"{self.where}: has no {base} index",
                hint=f"components: {' '.join(release.components) or '?'}; "
                     f"architectures: {' '.join(release.architectures) or '?'}")
        errors = []
        for entry in candidates:
            urls = [self.url(f"dists/{self.suite}/{entry.path}")]
            if release.acquire_by_hash:
                # The by-hash name cannot change under us while the mirror
                # syncs between our InRelease and Packages requests.
                by_hash = f"{entry.path.rsplit('/', 1)[0]}/by-hash/SHA256/{entry.sha256}"
                urls.insert(0, self.url(f"dists/{self.suite}/{by_hash}"))
            tmp = cache.with_name(f".{entry.path.rsplit('/', 1)[1]}.{os.getpid()}")
            try:
                log.info("downloading %s (%d kB)", urls[-1], entry.size // 1024)
                self._download(urls, tmp, sha256=entry.sha256, size=entry.size)
                text = _decompress(tmp.read_bytes(), entry.path)
            except (FetchError, ChecksumError, lzma.LZMAError, OSError, EOFError,
                    UnicodeDecodeError) as e:
                errors.append(f"{entry.path}: {e}")
                log.warning("%s; trying the next index format", errors[-1])
                continue
            finally:
                tmp.unlink(missing_ok=True)
            index = PackageIndex(parse_packages(text), where)
            part = cache.with_name(f".{cache.name}.{os.getpid()}")
            part.write_text(_index_to_json(index, urls[-1]), encoding="utf-8")
            part.replace(cache)
            log.debug("%s: %d packages, cached in %s", where, len(index), cache)
            return index
        raise ArchiveError(f"{where}: no usable Packages index ({'; '.join(errors)})")

    # -- .deb files ----------------------------------------------------------------

    def download(self, package: Package, progress: Progress | None = None) -> Path:
        """The .deb of `package` in the cache, downloading it if needed.
        The cache is keyed by sha256, so any mirror or suite shares it."""
        if not _SHA256_RE.match(package.sha256):
            raise ArchiveError(f"{package}: bad sha256 {package.sha256!r}")
        dest = self.cache_dir / "debs" / f"{package.sha256}.deb"
        if dest.is_file():
            try:
                _check_file(dest, package.sha256, package.size, str(dest))
                log.info("%s: using cached %s", package, dest)
                if progress:
                    progress(package.size, package.size)
                return dest
            except ChecksumError as e:
                log.warning("%s; downloading it again", e)
                dest.unlink()
        log.info("downloading %s (%.1f MB)", package, package.size / 1e6)
        self._download([self.url(package.filename)], dest, sha256=package.sha256,
                       size=package.size, progress=progress)
        return dest

