"""kernels.apt (apt with a private configuration), kernels.aptsources (the
host's Debian mirror, from `apt-get indextargets`) and how kernels.standard
follows a flavor to its image package.  apt itself is faked by argv; its
outputs are real ones (tests/unit/data/kernels/README.md)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kernels import aptsources, standard
from kernels.apt import Archive, ArchiveError, Package
from sysclone.errors import ConfigError
from tests.conftest import DATA, FakeResult

KERNELS = DATA / "kernels"
MIRROR = "http://deb.debian.org/debian"


@pytest.fixture
def archive(tmp_path: Path) -> Archive:
    keyring = tmp_path / "debian-archive-keyring.gpg"
    keyring.write_bytes(b"keys")
    return Archive(MIRROR, "bookworm", "amd64", tmp_path / "cache", keyring=keyring)


def _show(fake_commands, name: str) -> None:
    fake_commands.add(["apt-cache", "show", "--no-all-versions", name],
                      (KERNELS / f"apt-cache-show.{name}").read_text())


def test_apt_runs_in_a_private_world(archive, fake_commands, tmp_path):
    fake_commands.add(["apt-get", "-q", "update"], "")
    archive.update()
    archive.update()  # once per archive object
    assert fake_commands.calls == [["apt-get", "-q", "update"]]
    conf = archive.config.read_text()
    top = archive.top
    assert top.is_relative_to(tmp_path / "cache" / "apt")
    for line in (f'Dir::State::Lists "{top}/lists";', f'Dir::Cache::Archives "{top}/archives";',
                 f'Dir::Etc::SourceParts "{top}/etc/sources.list.d";',
                 f'Dir::Etc::TrustedParts "{top}/etc/trusted.gpg.d";',
                 f'Dir::State::Status "{top}/state/status";',
                 'APT::Architectures "amd64";', 'APT::Update::Error-Mode "any";'):
        assert line in conf
    assert (top / "etc/sources.list").read_text() == (
        f"deb [signed-by={tmp_path}/debian-archive-keyring.gpg] {MIRROR} bookworm "
        "main non-free-firmware non-free\n")
    assert (top / "state/status").read_text() == ""


def test_another_mirror_or_suite_is_another_apt(archive, tmp_path):
    other = Archive(MIRROR, "trixie", "amd64", tmp_path / "cache", keyring=archive.keyring)
    assert other.top != archive.top


def test_a_signature_problem_fails_even_with_old_lists(archive, fake_commands):
    (archive.top / "lists").mkdir(parents=True)
    (archive.top / "lists" / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    fake_commands.add(["apt-get", "-q", "update"], FakeResult(
        stdout="Get:1 http://deb.debian.org/debian bookworm InRelease\n",
        stderr="W: GPG error: http://deb.debian.org/debian bookworm InRelease: The following "
               "signatures couldn't be verified because the public key is not available: "
               "NO_PUBKEY 6ED0E7B82643E131\nE: The repository is not signed.\n",
        returncode=100))
    with pytest.raises(ArchiveError, match="NO_PUBKEY"):
        archive.update()


def test_offline_uses_the_lists_fetched_before(archive, fake_commands, caplog):
    fake_commands.add(["apt-get", "-q", "update"], FakeResult(
        stderr="W: Failed to fetch http://deb.debian.org/debian/dists/bookworm/InRelease  "
               "Temporary failure resolving 'deb.debian.org'\n", returncode=100))
    with pytest.raises(ArchiveError, match="Temporary failure"):
        archive.update()
    (archive.top / "lists" / "deb.debian.org_debian_dists_bookworm_InRelease").write_text("x")
    archive.update()
    assert "using the lists fetched before" in caplog.text


def test_show_reads_the_candidate(archive, fake_commands):
    fake_commands.add(["apt-get", "-q", "update"], "")
    _show(fake_commands, "linux-image-6.1.0-50-amd64")
    p = archive.show("linux-image-6.1.0-50-amd64")
    assert p.name == "linux-image-6.1.0-50-amd64" and p.version == "6.1.176-1"
    assert p.size == 70305560 and len(p.sha256) == 64
    assert p.filename.startswith("pool/main/l/linux-signed-amd64/")
    assert [g[0] for g in p.depends_on()] == ["kmod", "linux-base", "initramfs-tools"]


def test_show_unknown_package(archive, fake_commands):
    fake_commands.add(["apt-get", "-q", "update"], "")
    fake_commands.add(["apt-cache", "show"], FakeResult(
        stderr="N: Unable to locate package linux-image-clowd-amd64\nE: No packages found\n",
        returncode=100))
    with pytest.raises(ArchiveError, match="'linux-image-clowd-amd64' not found"):
        archive.show("linux-image-clowd-amd64")
    with pytest.raises(ConfigError, match="not a Debian name"):
        archive.show("Linux Image")


def test_a_flavor_is_followed_to_its_image_package(archive, fake_commands):
    fake_commands.add(["apt-get", "-q", "update"], "")
    _show(fake_commands, "linux-image-amd64")
    _show(fake_commands, "linux-image-6.1.0-50-amd64")
    resolved = standard.resolve_flavor(archive, "amd64")
    assert resolved.metapackage == "linux-image-amd64"
    assert resolved.package.name == "linux-image-6.1.0-50-amd64"


def test_download_names_the_deb_by_its_hash(archive, fake_commands):
    body = b"!<arch>\ndebian-binary"
    sha = hashlib.sha256(body).hexdigest()
    pkg = Package("firmware-bnx2", "20230210-5", "all", "pool/x.deb", sha, len(body))

    def apt_download(argv: list[str]) -> FakeResult:
        work = next((archive.cache_dir / "debs").glob(".download-*"))
        (work / "firmware-bnx2_20230210-5_all.deb").write_bytes(body)
        return FakeResult()

    fake_commands.add(["apt-get", "-q", "update"], "")
    fake_commands.add(["apt-get", "-q", "download", "firmware-bnx2=20230210-5"], apt_download)
    dest = archive.download(pkg)
    assert dest == archive.cache_dir / "debs" / f"{sha}.deb" and dest.read_bytes() == body
    calls = len(fake_commands.calls)
    assert archive.download(pkg) == dest  # cached: apt is not asked again
    assert len(fake_commands.calls) == calls
    assert not list((archive.cache_dir / "debs").glob(".download-*"))


def test_download_refuses_another_file(archive, fake_commands):
    pkg = Package("firmware-bnx2", "1", "all", "pool/x.deb", "b" * 64, 3)

    def apt_download(argv: list[str]) -> FakeResult:
        work = next((archive.cache_dir / "debs").glob(".download-*"))
        (work / "x.deb").write_bytes(b"bad")
        return FakeResult()

    fake_commands.add(["apt-get", "-q", "update"], "")
    fake_commands.add(["apt-get", "-q", "download"], apt_download)
    with pytest.raises(ArchiveError, match="is not the index's"):
        archive.download(pkg)
    assert not (archive.cache_dir / "debs" / f"{'b' * 64}.deb").exists()


def test_bad_mirror_or_suite():
    with pytest.raises(ConfigError, match="http:// or https://"):
        Archive("ftp://x/debian", "bookworm", "amd64", Path("/tmp"), keyring=Path("/k"))
    with pytest.raises(ConfigError, match=r"suite '\.\./x'"):
        Archive(MIRROR, "../x", "amd64", Path("/tmp"), keyring=Path("/k"))


# -- the host's mirror --------------------------------------------------------------


def test_the_host_mirror_from_a_real_indextargets():
    text = (KERNELS / "indextargets.bookworm-host").read_text()
    m = aptsources.pick_debian(text, "amd64")
    assert (m.uri, m.suite) == ("http://deb.debian.org/debian", "bookworm")
    assert m.where.endswith("debian.sources:1")


def _target(site: str, release: str, origin: str = "", label: str = "",
            component: str = "main") -> str:
    return (f"MetaKey: {component}/binary-amd64/Packages\nCreated-By: Packages\n"
            f"Target-Of: deb\nSite: {site}\nRelease: {release}\nComponent: {component}\n"
            f"Architecture: amd64\nOrigin: {origin}\nLabel: {label}\n"
            f"Sourcesentry: /etc/apt/sources.list:1\n\n")


def test_debian_is_told_by_the_signed_origin():
    text = (_target("https://deb.nodesource.com/debian", "bookworm", "Node", "Node")
            + _target("http://security.debian.org/debian-security", "bookworm-security",
                      "Debian", "Debian-Security")
            + _target("http://mirror.example/debian", "bookworm-updates", "Debian", "Debian")
            + _target("http://mirror.example/debian", "bookworm", "Debian", "Debian"))
    assert aptsources.pick_debian(text).uri == "http://mirror.example/debian"


def test_lists_never_updated_fall_back_to_the_path():
    text = (_target("http://ppa.example/ubuntu", "jammy")
            + _target("http://snapshot.debian.org/archive/debian/20250520T000000Z", "bookworm"))
    m = aptsources.pick_debian(text)
    assert m.uri == "http://snapshot.debian.org/archive/debian/20250520T000000Z"


def test_no_debian_archive():
    with pytest.raises(ConfigError, match="no Debian archive") as e:
        aptsources.pick_debian(_target("http://ppa.example/ubuntu", "jammy", "Ubuntu", "x"))
    assert "apt-get update" in (e.value.hint or "")
