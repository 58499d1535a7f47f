"""The archive's formats: deb822, versions, relations, InRelease, Packages,
gpgv's status output and armored keys.  Samples are captured from
deb.debian.org (bookworm, July 2026)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels import deb822
from kernels.archive import (
    ArchiveError,
    Package,
    PackageIndex,
    parse_packages,
    parse_release,
    resolve_metapackage,
)
from kernels.debversion import Relation, compare_versions, parse_relations
from kernels.gpgv import SignatureError, binary_keyrings, check_status, dearmor
from sysclone.errors import ConfigError

DATA = Path(__file__).parent / "data" / "kernels"


def signed_text(path: Path) -> str:
    """The part of a clearsigned file that gpgv would output."""
    text = path.read_text()
    body = text.split("\n\n", 1)[1]
    return body.split("-----BEGIN PGP SIGNATURE-----", 1)[0]


# -- deb822 ------------------------------------------------------------------------


def test_deb822_multiline_values_comments_and_line_numbers():
    text = "# head\nA: 1\nB:\n x\n .\n y\n\n\n#c\nC: 3\n"
    first, second = deb822.parse(text)
    assert first == {"a": "1", "b": "\nx\n\ny"}
    assert first.line == 2 and second.line == 10


def test_deb822_field_filter_skips_continuations():
    text = "Package: a\nDescription: long\n more\n text\nVersion: 1\n"
    (stanza,) = deb822.parse(text, fields={"package", "version"})
    assert stanza == {"package": "a", "version": "1"}


def test_deb822_whitespace_only_line_separates_stanzas():
    assert len(list(deb822.parse("A: 1\n   \nB: 2\n"))) == 2


# -- versions and relations ---------------------------------------------------------


@pytest.mark.parametrize("a, b, expected", [
    ("6.1.176-1", "6.1.170-3", 1),
    ("6.1.176-1", "6.1.176-1", 0),
    ("1.0~rc1-1", "1.0-1", -1),
    ("1.0", "1.0-0", 0),
    ("1:0.1", "2.0", 1),
    ("1.0a", "1.0", 1),
    ("1.0+b1", "1.0", 1),
    ("1.0~", "1.0", -1),
    ("4.3~", "4.9", -1),
    ("1.01", "1.1", 0),
    ("0.120+deb8u2", "0.120", 1),
    ("2.30-1", "2.3-1", 1),
    ("1.2-3-4", "1.2-3-3", 1),
])
def test_compare_versions_like_dpkg(a, b, expected):
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_bad_version_is_an_error():
    with pytest.raises(ValueError):
        compare_versions("", "1")


def test_parse_relations_alternatives_constraints_and_arch_qualifiers():
    groups = parse_relations(
        "kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) |\n linux-initramfs-tool,"
        " python3:any (>>3.9), foo [amd64] <!nocheck>"
    )
    assert groups == [
        (Relation("kmod"),),
        (Relation("linux-base", ">=", "4.3~"),),
        (Relation("initramfs-tools", ">=", "0.120+deb8u2"), Relation("linux-initramfs-tool")),
        (Relation("python3", ">>", "3.9", "any"),),
        (Relation("foo"),),
    ]
    assert parse_relations("") == []


@pytest.mark.parametrize("op, version, ok", [
    ("=", "6.1.176-1", True), ("=", "6.1.170-3", False),
    (">=", "6.1.176", True), ("<<", "6.1.176-1", False), ("<=", "6.1.176-1", True),
    (">>", "6.1.170-3", True), ("<", "6.1.176-1", True), (">", "6.1.176-2", False),
])
def test_relation_satisfaction(op, version, ok):
    assert Relation("x", op, version).satisfied_by("6.1.176-1") is ok


def test_malformed_relation():
    with pytest.raises(ValueError, match="malformed"):
        parse_relations("foo (>= )")


# -- InRelease ------------------------------------------------------------------


def test_parse_release_from_captured_inrelease():
    release = parse_release(signed_text(DATA / "InRelease.bookworm"), "abc")
    assert (release.origin, release.suite, release.codename) == ("Debian", "oldstable", "bookworm")
    assert release.names("bookworm") and release.names("oldstable") and not release.names("stable")
    assert release.acquire_by_hash
    assert release.valid_until is None
    assert release.date is not None and release.date.year == 2026
    assert "amd64" in release.architectures and "main" in release.components
    xz = release.files["main/binary-amd64/Packages.xz"]
    assert xz.sha256 == "9e0b5aabb2465b3d2e7a7fe27f9913846277833f7a2826e7767acccff5b588c5"
    assert xz.size == 8790396
    # MD5Sum lines are not taken as hashes
    assert len(release.files) == 7
    assert release.sha256 == "abc"


def test_parse_release_valid_until_and_bad_lines():
    text = ("Suite: stable-security\nCodename: bookworm-security\n"
            "Valid-Until: Sat, 18 Jul 2026 10:16:37 UTC\nSHA256:\n 1234 10 main/x\n")
    with pytest.raises(ArchiveError, match="malformed SHA256 line"):
        parse_release(text)
    ok = parse_release(text.replace(" 1234 10 main/x\n", ""))
    assert ok.valid_until is not None and ok.valid_until.day == 18


# -- Packages ----------------------------------------------------------------------


@pytest.fixture
def index() -> PackageIndex:
    text = (DATA / "Packages.linux-image-bookworm").read_text()
    return PackageIndex(parse_packages(text), "sample")


def test_parse_packages_captured_stanzas(index):
    assert len(index) == 6
    meta = index.get("linux-image-cloud-amd64")
    assert meta == Package(
        name="linux-image-cloud-amd64",
        version="6.1.176-1",
        architecture="amd64",
        filename="pool/main/l/linux-signed-amd64/linux-image-cloud-amd64_6.1.176-1_amd64.deb",
        sha256=meta.sha256,
        size=1500,
        depends="linux-image-6.1.0-50-cloud-amd64 (= 6.1.176-1)",
    )
    assert len(meta.sha256) == 64


def test_stanza_without_sha256_is_left_out():
    text = "Package: a\nVersion: 1\nFilename: pool/a.deb\nSize: 1\n\n" \
           "Package: b\nVersion: 1\nFilename: pool/b.deb\nSize: 1\nSHA256: " + "0" * 64 + "\n"
    assert [p.name for p in parse_packages(text)] == ["b"]


def test_index_keeps_newest_version_first():
    def pkg(version: str) -> Package:
        return Package("k", version, "amd64", f"pool/k_{version}.deb", "0" * 64, 1)
    index = PackageIndex([pkg("6.1.170-3"), pkg("6.1.176-1"), pkg("6.1.176~bpo-1")])
    assert index.versions("k")[0] == index.get("k")
    assert [p.version for p in index.versions("k")] == ["6.1.176-1", "6.1.176~bpo-1", "6.1.170-3"]
    assert index.get("nope") is None and "k" in index
    assert [p.version for p in index] == ["6.1.176-1"]


def test_resolve_cloud_metapackage(index):
    image = resolve_metapackage(index, "linux-image-cloud-amd64")
    assert image.name == "linux-image-6.1.0-50-cloud-amd64"
    assert image.version == "6.1.176-1"
    # the signed amd64 image, not the -unsigned one
    assert resolve_metapackage(index, "linux-image-amd64").name == "linux-image-6.1.0-50-amd64"
    # a concrete image resolves to itself
    assert resolve_metapackage(index, "linux-image-6.1.0-47-cloud-amd64").version == "6.1.170-3"


def _p(name: str, version: str = "1", depends: str = "") -> Package:
    return Package(name, version, "amd64", f"pool/{name}.deb", "0" * 64, 1, depends)


def test_resolve_pins_version_and_takes_first_available_alternative():
    index = PackageIndex([
        _p("linux-image-flav", "2", "linux-image-9-flav-missing | linux-image-9-flav:any (= 2)"),
        _p("linux-image-9-flav", "3", "kmod"),
        _p("linux-image-9-flav", "2", "kmod, linux-base"),
    ])
    image = resolve_metapackage(index, "linux-image-flav")
    assert (image.name, image.version) == ("linux-image-9-flav", "2")


def test_resolve_follows_chains_and_stops_on_cycles():
    index = PackageIndex([
        _p("linux-image-a", depends="linux-image-b"),
        _p("linux-image-b", depends="linux-image-c"),
        _p("linux-image-c", depends="linux-image-a, kmod"),
    ])
    assert resolve_metapackage(index, "linux-image-a").name == "linux-image-c"


def test_resolve_errors():
    index = PackageIndex([_p("linux-image-x", "1", "linux-image-1-x (= 2)"),
                          _p("linux-image-1-x", "1")], "mirror bookworm main/binary-amd64")
    with pytest.raises(ArchiveError, match=r"depends on linux-image-1-x \(= 2\), which is not"):
        resolve_metapackage(index, "linux-image-x")
    with pytest.raises(ArchiveError, match="'linux-image-nope' not found in mirror bookworm"):
        resolve_metapackage(index, "linux-image-nope")


# -- gpgv status ------------------------------------------------------------------


def test_all_good_signatures():
    signers = check_status((DATA / "gpgv-status.all-good").read_text())
    assert signers == [
        "4CB50190207B4758A3F73A796ED0E7B82643E131",
        "B8E5F13176D2A7A75220028078DBA3BC47EF2265",
        "4D64FEC119C2029067D6E791F8D2585B8783D481",
    ]


def test_one_good_signature_is_enough_although_gpgv_exits_2():
    status = (DATA / "gpgv-status.one-known-key").read_text()
    assert check_status(status) == ["4CB50190207B4758A3F73A796ED0E7B82643E131"]


def test_fingerprint_restriction_matches_primary_or_subkey():
    status = (DATA / "gpgv-status.one-known-key").read_text()
    # primary key of the signing subkey
    assert check_status(status, ["B8B80B5B623EAB6AD8775C45B7C5D7D6350947F8"])
    with pytest.raises(SignatureError, match="not one of the Signed-By keys"):
        check_status(status, ["4D64FEC119C2029067D6E791F8D2585B8783D481"])


def test_no_known_key():
    status = "\n".join(line for line in (DATA / "gpgv-status.one-known-key").read_text()
                       .splitlines() if "GOODSIG" not in line and "VALIDSIG" not in line)
    with pytest.raises(SignatureError, match=r"no good signature.*NO_PUBKEY 78DBA3BC47EF2265"):
        check_status(status)


def test_bad_signature_wins_over_good_ones():
    status = (DATA / "gpgv-status.all-good").read_text() + \
        "[GNUPG:] NEWSIG\n[GNUPG:] BADSIG 6ED0E7B82643E131 Debian\n"
    with pytest.raises(SignatureError, match="bad signature"):
        check_status(status)


def test_weak_digest_and_expired_keys_do_not_count():
    sha1 = ("[GNUPG:] NEWSIG\n[GNUPG:] GOODSIG 1 x\n[GNUPG:] VALIDSIG "
            "AAAA 2026-07-11 1 0 4 0 1 2 01 BBBB\n")
    with pytest.raises(SignatureError, match="weak digest"):
        check_status(sha1)
    with pytest.raises(SignatureError, match="EXPKEYSIG"):
        check_status("[GNUPG:] NEWSIG\n[GNUPG:] EXPKEYSIG 1 x\n"
                     "[GNUPG:] VALIDSIG AAAA 2026-07-11 1 0 4 0 1 8 01 BBBB\n")
    with pytest.raises(SignatureError, match="not signed"):
        check_status("")


# -- keys --------------------------------------------------------------------------


def test_dearmor_matches_the_binary_keyring():
    armored = (DATA / "debian-archive-bookworm-stable.asc").read_text()
    assert dearmor(armored) == (DATA / "debian-archive-bookworm-stable.gpg").read_bytes()
    # deb822 inline form: indentation removed by the parser, headers allowed
    with_header = armored.replace("-----\n\n", "-----\nComment: x\n\n", 1)
    assert dearmor(with_header) == dearmor(armored)
    with pytest.raises(ValueError):
        dearmor("nothing here")


def test_binary_keyrings_converts_armored_files_and_inline_keys(tmp_path):
    binary = DATA / "debian-archive-bookworm-stable.gpg"
    armored = DATA / "debian-archive-bookworm-stable.asc"
    out = binary_keyrings([binary, armored], [armored.read_text()], tmp_path / "k")
    assert out[0] == binary
    # armored file and identical inline key land in the same converted file
    assert out[1] == out[2] and out[1].parent == tmp_path / "k"
    assert out[1].read_bytes() == binary.read_bytes()
    with pytest.raises(ConfigError, match=r"keyring /nonexistent.gpg: cannot read"):
        binary_keyrings([Path("/nonexistent.gpg")], [], tmp_path / "k")
    with pytest.raises(ConfigError, match="inline Signed-By key: not a usable OpenPGP key"):
        binary_keyrings([], ["-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n"
                             "-----END PGP PUBLIC KEY BLOCK-----\n"], tmp_path / "k")
