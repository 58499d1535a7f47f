"""The archive client and fetch_standard against an in-memory mirror.

The mirror serves the captured bookworm stanzas with fake .deb bodies (their
SHA256/Size rewritten to match); gpgv, dpkg-deb and depmod are fakes that do
what the real ones would to the file system.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import re
from pathlib import Path
from typing import IO

import pytest

from kernels import standard
from kernels.archive import ArchiveError, ChecksumError, DebianArchive
from kernels.fetch import FetchError, check_url
from kernels.gpgv import SignatureError
from kernels.standard import fetch_standard, resolve_standard
from kernels.tree import load
from sysclone.errors import CommandError, ConfigError
from sysclone.paths import StateRoot
from tests.conftest import FakeCommands, FakeResult

DATA = Path(__file__).parent / "data" / "kernels"
MIRROR = "http://mirror.test/debian"
KVER = "6.1.0-50-cloud-amd64"
IMAGE = f"pool/main/l/linux-signed-amd64/linux-image-{KVER}_6.1.176-1_amd64.deb"
GOOD_STATUS = (DATA / "gpgv-status.all-good").read_text()
RELEASE_HEAD = """\
Origin: Debian
Label: Debian
Suite: oldstable
Codename: bookworm
Date: Sat, 11 Jul 2026 10:16:37 UTC
Acquire-By-Hash: yes
Architectures: all amd64 arm64
Components: main contrib non-free-firmware non-free
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def transient(url: str) -> FetchError:
    return FetchError(f"{url}: connection reset", url=url, transient=True)


class FakeMirror:
    """A `Fetch` serving bytes by URL; `failures[url]` queues exceptions (or
    wrong bodies) to hand out before the real file."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.failures: dict[str, list[Exception | bytes]] = {}
        self.calls: list[str] = []
        self.offline = False

    def __call__(self, url: str, dest: IO[bytes], progress=None) -> None:
        self.calls.append(url)
        check_url(url)
        if self.offline:
            raise transient(url)
        queued = self.failures.get(url)
        data = queued.pop(0) if queued else self.files.get(url)
        if isinstance(data, Exception):
            raise data
        if data is None:
            raise FetchError(f"{url}: HTTP 404 Not Found", url=url, status=404)
        half = len(data) // 2
        dest.write(data[:half])
        if progress:
            progress(half, len(data))
        dest.write(data[half:])
        if progress:
            progress(len(data), len(data))

    def publish(self, suite: str = "bookworm", *, debs: dict[str, bytes] | None = None,
                formats: tuple[str, ...] = ("xz",), release_head: str = RELEASE_HEAD,
                extra_packages: str = "") -> dict[str, str]:
        """Serve the captured Packages stanzas (plus `extra_packages`) with
        `debs` as .deb bodies; return the index paths' sha256 by path."""
        debs = {IMAGE: b"linux image 50"} if debs is None else debs
        text = (DATA / "Packages.linux-image-bookworm").read_text() + extra_packages
        stanzas = []
        for stanza in text.strip().split("\n\n"):
            filename = re.search(r"^Filename: (.*)$", stanza, re.M)[1]  # type: ignore[index]
            if filename in debs:
                body = debs[filename]
                stanza = re.sub(r"^SHA256: .*$", f"SHA256: {sha(body)}", stanza, flags=re.M)
                stanza = re.sub(r"^Size: .*$", f"Size: {len(body)}", stanza, flags=re.M)
                self.files[f"{MIRROR}/{filename}"] = body
            stanzas.append(stanza)
        packages = ("\n\n".join(stanzas) + "\n").encode()
        compressed = {"xz": lzma.compress(packages), "gz": __import__("gzip").compress(packages),
                      "": packages}
        lines, hashes = [], {}
        for fmt in formats:
            path = "main/binary-amd64/Packages" + (f".{fmt}" if fmt else "")
            body = compressed[fmt]
            hashes[path] = sha(body)
            lines.append(f" {sha(body)} {len(body):8d} {path}")
            self.files[f"{MIRROR}/dists/{suite}/{path}"] = body
            by_hash = f"main/binary-amd64/by-hash/SHA256/{sha(body)}"
            self.files[f"{MIRROR}/dists/{suite}/{by_hash}"] = body
        release = release_head + "SHA256:\n" + "\n".join(lines) + "\n"
        self.files[f"{MIRROR}/dists/{suite}/InRelease"] = (
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA256\n\n" + release +
            "-----BEGIN PGP SIGNATURE-----\n\nZmFrZQ==\n-----END PGP SIGNATURE-----\n"
        ).encode()
        return hashes


def fake_gpgv(fake_commands: FakeCommands, status: str = GOOD_STATUS) -> None:
    def gpgv(args: list[str]) -> FakeResult:
        text = Path(args[-1]).read_text()
        signed = text.split("\n\n", 1)[1].split("-----BEGIN PGP SIGNATURE-----")[0]
        return FakeResult(stdout=signed, stderr=status, returncode=0 if status else 2)
    fake_commands.add(["gpgv"], gpgv)


def fake_kernel_tools(fake_commands: FakeCommands, *, kver: str = KVER,
                      modules_base: str = "lib/modules", depmod_rc: int = 0) -> None:
    def dpkg_deb(args: list[str]) -> FakeResult:
        assert Path(args[2]).is_file()
        root = Path(args[3])
        (root / "boot").mkdir(parents=True)
        (root / "boot" / f"vmlinuz-{kver}").write_bytes(b"bzImage " + Path(args[2]).read_bytes())
        (root / "boot" / f"config-{kver}").write_text("CONFIG_VIRTIO_NET=m\n")
        (root / "boot" / f"System.map-{kver}").write_text(
            "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n")
        modules = root / modules_base / kver
        (modules / "kernel/drivers/net").mkdir(parents=True)
        (modules / "kernel/drivers/net/virtio_net.ko").write_bytes(b"\x7fELF")
        (modules / "modules.order").write_text("kernel/drivers/net/virtio_net.ko\n")
        (modules / "modules.builtin").write_text("kernel/fs/ext4/ext4.ko\n")
        (root / "usr/share/doc/linux-image").mkdir(parents=True)
        return FakeResult()

    def depmod(args: list[str]) -> FakeResult:
        assert args[3] == kver
        modules = Path(args[2]) / "lib/modules" / kver
        assert (modules / "modules.order").is_file()
        if depmod_rc == 0:
            (modules / "modules.dep").write_text("kernel/drivers/net/virtio_net.ko:\n")
            (modules / "modules.alias").write_text("alias virtio:d00000001v* virtio_net\n")
        return FakeResult(returncode=depmod_rc, stderr="depmod: ERROR: boom" if depmod_rc else "")

    fake_commands.add(["dpkg-deb", "-x"], dpkg_deb)
    fake_commands.add(["depmod", "-b"], depmod)


@pytest.fixture
def mirror() -> FakeMirror:
    m = FakeMirror()
    m.publish()
    return m


@pytest.fixture
def keyring(tmp_path: Path) -> Path:
    path = tmp_path / "keyrings" / "debian-archive-keyring.gpg"
    path.parent.mkdir()
    path.write_bytes(b"\x99\x01\x0dbinary keyring")
    return path


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "cache")


def archive(mirror: FakeMirror, keyring: Path, state: StateRoot, suite: str = "bookworm",
            **kwargs) -> DebianArchive:
    return DebianArchive(MIRROR, suite, keyrings=[keyring], cache_dir=state.cache_dir,
                         fetch=mirror, retry_delay=0, **kwargs)


# -- InRelease -------------------------------------------------------------------


def test_release_is_verified_with_gpgv_and_kept(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    release = archive(mirror, keyring, state).release()
    assert (release.codename, release.suite) == ("bookworm", "oldstable")
    (gpgv,) = fake_commands.calls
    assert gpgv[:5] == ["gpgv", "--status-fd", "2", "--output", "-"]
    assert gpgv[5:7] == ["--keyring", str(keyring)]
    kept = state.cache("apt", "release", "mirror.test_debian", "bookworm", "InRelease")
    assert kept.read_bytes() == mirror.files[f"{MIRROR}/dists/bookworm/InRelease"]
    assert release.sha256 == sha(kept.read_bytes())
    assert [p.name for p in kept.parent.iterdir()] == ["InRelease"]


def test_bad_signature_is_refused_and_not_kept(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands, status="[GNUPG:] NEWSIG\n[GNUPG:] ERRSIG 1 1 8 01 1 9 X\n"
                                    "[GNUPG:] NO_PUBKEY 6ED0E7B82643E131\n")
    with pytest.raises(SignatureError, match="InRelease: no good signature") as e:
        archive(mirror, keyring, state).release()
    assert str(keyring) in (e.value.hint or "")
    assert not list(state.cache_dir.rglob("InRelease*"))


def test_unsigned_or_padded_inrelease_is_refused(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    url = f"{MIRROR}/dists/bookworm/InRelease"
    mirror.files[url] = b"Origin: Evil\n\n" + mirror.files[url]
    with pytest.raises(SignatureError, match="not a single clearsigned message"):
        archive(mirror, keyring, state).release()
    assert fake_commands.calls == []


def test_inrelease_for_another_suite_is_refused(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    mirror.publish("trixie")  # a mirror answering trixie's with bookworm's release
    with pytest.raises(ArchiveError, match="is for oldstable/bookworm, not trixie"):
        archive(mirror, keyring, state, "trixie").release()


def test_expired_inrelease_is_refused(keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    m = FakeMirror()
    m.publish(release_head=RELEASE_HEAD + "Valid-Until: Mon, 01 Jan 2024 00:00:00 UTC\n")
    with pytest.raises(ArchiveError, match="expired on 2024-01-01"):
        archive(m, keyring, state).release()


def test_unknown_suite(mirror, keyring, state, fake_commands):
    with pytest.raises(ConfigError, match=r"suite 'bookwrm' not found on http://mirror.test"):
        archive(mirror, keyring, state, "bookwrm").release()


def test_mirror_and_suite_are_checked(keyring, state):
    with pytest.raises(ConfigError, match="mirror 'ftp://x/debian': expected an http"):
        DebianArchive("ftp://x/debian", "bookworm", keyrings=[keyring], cache_dir=state.cache_dir)
    with pytest.raises(ConfigError, match=r"suite '\.\./x'"):
        DebianArchive(MIRROR, "../x", keyrings=[keyring], cache_dir=state.cache_dir)


def test_missing_keyring_is_a_config_error(mirror, state, fake_commands, tmp_path):
    with pytest.raises(ConfigError, match=r"keyring .*missing.gpg: cannot read"):
        archive(mirror, tmp_path / "missing.gpg", state).release()


# -- Packages ----------------------------------------------------------------------


def test_packages_come_by_hash_and_are_cached(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    hashes = mirror.publish()
    index = archive(mirror, keyring, state).packages()
    assert index.versions("linux-image-cloud-amd64")[0].version == "6.1.176-1"
    assert mirror.calls[1].endswith(
        f"/main/binary-amd64/by-hash/SHA256/{hashes['main/binary-amd64/Packages.xz']}")
    cached = list(state.cache("apt", "index").rglob("*.json"))
    assert [p.name for p in cached] == ["main_binary-amd64.json"]
    # no download leftovers next to it
    assert [p.name for p in cached[0].parent.iterdir()] == ["main_binary-amd64.json"]

    mirror.calls.clear()
    again = archive(mirror, keyring, state).packages()
    assert mirror.calls == [f"{MIRROR}/dists/bookworm/InRelease"]
    assert again.versions(f"linux-image-{KVER}")[0].filename == IMAGE
    assert list(again.all_packages()) == list(index.all_packages())


def test_by_hash_missing_falls_back_to_the_plain_name(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    hashes = mirror.publish()
    del mirror.files[f"{MIRROR}/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
                     f"{hashes['main/binary-amd64/Packages.xz']}"]
    assert len(archive(mirror, keyring, state).packages()) == 6
    assert mirror.calls[-1] == f"{MIRROR}/dists/bookworm/main/binary-amd64/Packages.xz"


def test_packages_sha256_mismatch_is_an_error(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    for url, body in list(mirror.files.items()):
        if "binary-amd64" in url:  # same size, one byte changed
            mirror.files[url] = body[:100] + bytes([body[100] ^ 1]) + body[101:]
    with pytest.raises(ArchiveError, match=r"no usable Packages index.*sha256 mismatch"):
        archive(mirror, keyring, state).packages()
    assert not list(state.cache("apt", "index").rglob("*.json"))
    assert not list(state.cache_dir.rglob("*.part"))


def test_packages_xz_broken_falls_back_to_gz(keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    m = FakeMirror()
    hashes = m.publish(formats=("xz", "gz"))
    by_hash = f"{MIRROR}/dists/bookworm/main/binary-amd64/by-hash/SHA256/"
    xz = hashes["main/binary-amd64/Packages.xz"]
    m.files[by_hash + xz] = m.files[f"{MIRROR}/dists/bookworm/main/binary-amd64/Packages.xz"] \
        = b"truncated"
    index = archive(m, keyring, state).packages()
    assert index.get("linux-image-amd64") is not None
    assert m.calls[-1] == by_hash + hashes["main/binary-amd64/Packages.gz"]


def test_missing_architecture(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    with pytest.raises(ArchiveError, match="has no main/binary-riscv64/Packages") as e:
        archive(mirror, keyring, state).packages("main", "riscv64")
    assert "amd64" in (e.value.hint or "")


# -- .deb downloads ------------------------------------------------------------------


def _image(mirror, keyring, state, fake_commands):
    fake_gpgv(fake_commands)
    a = archive(mirror, keyring, state)
    return a, a.packages().get(f"linux-image-{KVER}")


def test_download_verifies_and_caches_by_sha256(mirror, keyring, state, fake_commands):
    a, image = _image(mirror, keyring, state, fake_commands)
    seen: list[tuple[int, int]] = []
    path = a.download(image, lambda done, total: seen.append((done, total)))
    assert path == state.cache("debs", f"{image.sha256}.deb")
    assert path.read_bytes() == b"linux image 50"
    assert seen[-1] == (14, 14) and len(seen) == 2
    mirror.calls.clear()
    seen.clear()
    assert a.download(image, lambda done, total: seen.append((done, total))) == path
    assert mirror.calls == [] and seen == [(14, 14)]


def test_download_retries_transient_failures(mirror, keyring, state, fake_commands):
    a, image = _image(mirror, keyring, state, fake_commands)
    url = f"{MIRROR}/{IMAGE}"
    mirror.failures[url] = [transient(url), b"linux image 5"]  # a reset, then a short body
    assert a.download(image).read_bytes() == b"linux image 50"
    assert mirror.calls.count(url) == 3


def test_download_sha256_mismatch_is_an_error(mirror, keyring, state, fake_commands):
    a, image = _image(mirror, keyring, state, fake_commands)
    mirror.files[f"{MIRROR}/{IMAGE}"] = b"linux image 51"
    with pytest.raises(ChecksumError, match=f"{IMAGE}: sha256 mismatch: expected {image.sha256}"):
        a.download(image)
    assert mirror.calls.count(f"{MIRROR}/{IMAGE}") == 3
    assert list(state.cache("debs").iterdir()) == []  # no partial file left


def test_permanent_http_errors_are_not_retried(mirror, keyring, state, fake_commands):
    a, image = _image(mirror, keyring, state, fake_commands)
    url = f"{MIRROR}/{IMAGE}"
    mirror.failures[url] = [FetchError(f"{url}: HTTP 403 Forbidden", url=url, status=403)]
    with pytest.raises(FetchError, match="403"):
        a.download(image)
    assert mirror.calls.count(url) == 1


def test_corrupt_cached_deb_is_fetched_again(mirror, keyring, state, fake_commands):
    a, image = _image(mirror, keyring, state, fake_commands)
    path = a.download(image)
    path.write_bytes(b"bit rot here!!")
    assert a.download(image).read_bytes() == b"linux image 50"


def test_offline_rerun_works_from_the_cache(mirror, keyring, state, fake_commands, caplog):
    a, image = _image(mirror, keyring, state, fake_commands)
    a.download(image)
    mirror.offline = True
    b = archive(mirror, keyring, state)
    (again,) = b.packages().versions(f"linux-image-{KVER}")
    assert again == image
    assert b.download(again).is_file()
    assert "using the InRelease fetched before" in caplog.text


def test_offline_without_cache_fails(mirror, keyring, state, fake_commands):
    mirror.offline = True
    with pytest.raises(FetchError, match="connection reset"):
        archive(mirror, keyring, state).release()


def test_unsafe_archive_paths_are_refused(mirror, keyring, state):
    a = archive(mirror, keyring, state)
    for bad in ("../etc/passwd", "/etc/passwd", "pool//x.deb", "pool/./x.deb"):
        with pytest.raises(ArchiveError, match="unsafe"):
            a.url(bad)
    assert a.url("pool/main/g/g++-12/g++_1:2~3.deb") == \
        f"{MIRROR}/pool/main/g/g++-12/g++_1:2~3.deb"


def test_fetch_refuses_other_schemes():
    for url in ("file:///etc/passwd", "ftp://mirror/debian", "gopher://x"):
        with pytest.raises(FetchError, match="only http and https"):
            check_url(url)


# -- fetch_standard -------------------------------------------------------------------


@pytest.fixture
def apt_root(tmp_path: Path, keyring: Path) -> Path:
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    (root / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: {MIRROR}\nSuites: bookworm bookworm-updates\nComponents: main\n"
        f"Signed-By: {keyring}\n\n"
        f"Types: deb\nURIs: {MIRROR}-security\nSuites: bookworm-security\nComponents: main\n"
        f"Signed-By: {keyring}\n")
    (root / "sources.list.d" / "google-cloud-sdk.list").write_text(
        "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
    return root


def test_fetch_standard_builds_a_tree(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands)
    seen: list[tuple[int, int]] = []
    tree = fetch_standard(state, progress=lambda d, t: seen.append((d, t)),
                          apt_root=apt_root, fetch=mirror)
    assert tree.path == state.kernels / f"cloud-amd64-{KVER}"
    assert (tree.flavor, tree.kver, tree.arch) == ("cloud-amd64", KVER, "amd64")
    assert tree.package.name == f"linux-image-{KVER}"
    assert tree.package.version == "6.1.176-1"
    assert tree.package.sha256 == sha(b"linux image 50")
    assert tree.package.metapackage == "linux-image-cloud-amd64"
    assert (tree.source.mirror, tree.source.suite, tree.source.codename) == \
        (MIRROR, "bookworm", "bookworm")
    assert tree.vmlinuz.read_bytes() == b"bzImage linux image 50"
    assert tree.modules_dir == tree.path / "lib/modules" / KVER
    assert "virtio_net" in (tree.modules_dir / "modules.alias").read_text()
    assert (tree.modules_dir / "kernel/drivers/net/virtio_net.ko").is_file()
    assert tree.config is not None and tree.system_map is None  # placeholder dropped
    assert sorted(p.name for p in tree.path.iterdir()) == ["config", "kernel.json", "lib",
                                                           "vmlinuz"]
    assert sorted(p.name for p in state.kernels.iterdir()) == [tree.path.name]
    assert seen[-1] == (14, 14)
    data = json.loads((tree.path / "kernel.json").read_text())
    assert data["kver"] == KVER and data["vmlinuz"] == "vmlinuz"
    assert load(tree.path) == tree
    dpkg, depmod = fake_commands.calls[1:]
    assert dpkg[:3] == ["dpkg-deb", "-x", str(state.cache("debs", f"{tree.package.sha256}.deb"))]
    assert depmod[:2] == ["depmod", "-b"] and depmod[3] == KVER
    assert tree.path.stat().st_mode & 0o777 == 0o755


def test_fetch_standard_is_idempotent(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands)
    first = fetch_standard(state, apt_root=apt_root, fetch=mirror)
    mirror.calls.clear()
    fake_commands.calls.clear()
    second = fetch_standard(state, apt_root=apt_root, fetch=mirror)
    assert second == first
    assert mirror.calls == [f"{MIRROR}/dists/bookworm/InRelease"]
    assert [c[0] for c in fake_commands.calls] == ["gpgv"]


def test_a_new_state_root_reuses_the_cached_deb(mirror, state, apt_root, fake_commands,
                                                tmp_path):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands)
    fetch_standard(state, apt_root=apt_root, fetch=mirror)
    other = StateRoot(tmp_path / "other", state.cache_dir)
    mirror.calls.clear()
    tree = fetch_standard(other, apt_root=apt_root, fetch=mirror)
    assert tree.path.parent == other.kernels and tree.vmlinuz.is_file()
    assert mirror.calls == [f"{MIRROR}/dists/bookworm/InRelease"]


def test_a_rebuilt_package_replaces_the_tree(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands)
    old = fetch_standard(state, apt_root=apt_root, fetch=mirror)
    mirror.publish(debs={IMAGE: b"linux image 50, binNMU"})
    new = fetch_standard(state, apt_root=apt_root, fetch=mirror)
    assert new.path == old.path and new.package.sha256 != old.package.sha256
    assert new.vmlinuz.read_bytes() == b"bzImage linux image 50, binNMU"
    assert [p.name for p in state.kernels.iterdir()] == [new.path.name]


def test_modules_under_usr_lib_are_moved(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands, modules_base="usr/lib/modules")
    tree = fetch_standard(state, apt_root=apt_root, fetch=mirror)
    assert (tree.modules_dir / "modules.dep").is_file()
    assert not (tree.path / "usr").exists()


def test_depmod_failure_leaves_nothing_behind(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_kernel_tools(fake_commands, depmod_rc=1)
    with pytest.raises(CommandError, match=r"depmod.*boom"):
        fetch_standard(state, apt_root=apt_root, fetch=mirror)
    assert list(state.kernels.iterdir()) == []


def test_a_package_without_a_kernel_is_refused(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    fake_commands.add(["dpkg-deb", "-x"], lambda args: FakeResult())
    with pytest.raises(ArchiveError, match=r"expected one kernel .* found none"):
        fetch_standard(state, apt_root=apt_root, fetch=mirror)
    assert list(state.kernels.iterdir()) == []


def test_unknown_flavor(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    with pytest.raises(ArchiveError, match="'linux-image-clowd-amd64' not found") as e:
        fetch_standard(state, "clowd-amd64", apt_root=apt_root, fetch=mirror)
    assert "flavor" in (e.value.hint or "")
    with pytest.raises(ConfigError, match="flavor 'Cloud AMD64'"):
        fetch_standard(state, "Cloud AMD64", apt_root=apt_root, fetch=mirror)


def test_no_debian_source_needs_mirror_and_suite(mirror, state, fake_commands, tmp_path,
                                                 keyring, monkeypatch):
    fake_gpgv(fake_commands)
    empty = tmp_path / "empty-apt"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no Debian archive found"):
        resolve_standard(state, apt_root=empty, fetch=mirror)
    # Given explicitly, Debian's keyring from debian-archive-keyring is used.
    monkeypatch.setattr(standard, "DEBIAN_KEYRINGS", (tmp_path / "nope.pgp", keyring))
    resolved = resolve_standard(state, suite="bookworm", mirror=MIRROR + "/", apt_root=empty,
                                fetch=mirror)
    assert resolved.package.name == f"linux-image-{KVER}"
    assert resolved.mirror == MIRROR
    assert fake_commands.calls[0][5:7] == ["--keyring", str(keyring)]


def test_explicit_suite_uses_the_host_mirror(mirror, state, apt_root, fake_commands):
    fake_gpgv(fake_commands)
    mirror.publish("oldstable")
    resolved = resolve_standard(state, suite="oldstable", apt_root=apt_root, fetch=mirror)
    assert (resolved.suite, resolved.codename) == ("oldstable", "bookworm")
    assert mirror.calls[0] == f"{MIRROR}/dists/oldstable/InRelease"
