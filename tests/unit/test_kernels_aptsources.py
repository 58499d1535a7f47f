"""Reading apt sources and picking Debian's archive among them."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernels.aptsources import find_debian_mirror, parse_deb822, parse_one_line, read_sources
from sysclone.errors import ConfigError

DATA = Path(__file__).parent / "data" / "kernels"
DEBIAN_KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")

INLINE_KEY_SOURCES = """\
Types: deb
URIs: https://mirror.example.net/debian/
Suites: trixie trixie-updates
Components: main contrib
Signed-By:
 -----BEGIN PGP PUBLIC KEY BLOCK-----
 .
 mDMEY865UxYJKwYBBAHaRw8BAQdAd7Z0srwuhlB6JKFkcf4HU4SSS/xcRfwEQWzr
 crf6AEq0SURlYmlhbiBTdGFibGUgUmVsZWFzZSBLZXkgKDEyL2Jvb2t3b3JtKQ==
 =abcd
 -----END PGP PUBLIC KEY BLOCK-----
"""


def apt_tree(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "apt"
    (root / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    return root


# -- parsing -----------------------------------------------------------------


def test_host_tree_reads_deb822_with_comments_and_third_party_files():
    sources = read_sources(DATA / "apt-host")
    # *.disabled-by-farm files are not read, the .list/.sources copies are.
    assert [Path(s.where.rsplit(":", 1)[0]).name for s in sources] == [
        "debian.sources", "debian.sources", "google-cloud-sdk.list", "nodesource.sources",
    ]
    main, security, google, node = sources
    assert main.uris == ("http://deb.debian.org/debian",)
    assert main.suites == ("bookworm", "bookworm-updates")
    assert main.components == ("main",)
    assert main.keyring_paths == (DEBIAN_KEYRING,)
    assert main.where.endswith("debian.sources:1")
    assert security.where.endswith("debian.sources:8")
    assert google.suites == ("cloud-sdk-bookworm",)
    assert node.architectures == ("amd64",)


def test_one_line_options_comments_and_deb_src():
    text = """\
# deb http://deb.debian.org/debian bookworm main
deb [ arch=amd64,arm64 signed-by=/etc/apt/keyrings/x.gpg ] http://a.example/debian bookworm main
deb-src http://deb.debian.org/debian bookworm main contrib   # sources too

deb [trusted=yes arch-=i386] http://flat.example/repo ./
"""
    one, src, flat = parse_one_line(text, "sources.list")
    assert one.architectures == ("amd64", "arm64")
    assert one.signed_by == ("/etc/apt/keyrings/x.gpg",)
    assert one.uris == ("http://a.example/debian",) and one.where == "sources.list:2"
    assert src.types == ("deb-src",) and src.components == ("main", "contrib")
    assert flat.suites == ("./",) and flat.components == ()
    assert flat.excluded_architectures == ("i386",) and not flat.serves("i386")
    assert flat.serves("amd64") and one.serves("arm64") and not one.serves("i386")


@pytest.mark.parametrize("line, message", [
    ("deb http://a.example/debian", "expected 'deb URI SUITE"),
    ("deb http://a.example/debian bookworm", "needs at least one component"),
    ("rpm http://a.example/ x y", "starting with 'deb'"),
    ("deb [arch=amd64 http://a.example/debian bookworm main", "unterminated"),
    ("deb [arch] http://a.example/debian bookworm main", "option=value"),
])
def test_one_line_errors_name_file_and_line(line, message):
    with pytest.raises(ConfigError, match=message) as e:
        parse_one_line("\n" + line, "/etc/apt/sources.list")
    assert e.value.message.startswith("/etc/apt/sources.list:2: ")


def test_deb822_stanzas_multiple_uris_suites_and_enabled():
    text = """\
# Mirrors in order of preference
Types: deb deb-src
URIs: http://one.example/debian https://two.example/debian
Suites: bookworm bookworm-backports
Components: main non-free-firmware
Architectures: amd64
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
  0123456789ABCDEF0123456789ABCDEF01234567

Enabled: no
Types: deb
URIs: http://off.example/debian
Suites: sid
Components: main
"""
    first, second = parse_deb822(text, "x.sources")
    assert first.types == ("deb", "deb-src")
    assert first.uris == ("http://one.example/debian", "https://two.example/debian")
    assert first.suites == ("bookworm", "bookworm-backports")
    assert first.keyring_paths == (DEBIAN_KEYRING,)
    assert first.fingerprints == ("0123456789ABCDEF0123456789ABCDEF01234567",)
    assert first.where == "x.sources:2"
    assert first.enabled and not second.enabled
    assert second.where == "x.sources:10"


def test_deb822_inline_signed_by_key_is_kept_whole():
    (source,) = parse_deb822(INLINE_KEY_SOURCES, "inline.sources")
    assert source.signed_by == ()
    assert source.inline_key is not None
    assert source.inline_key.startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nmDME")
    assert source.inline_key.endswith("-----END PGP PUBLIC KEY BLOCK-----\n")


@pytest.mark.parametrize("text, message", [
    ("Types: deb\nURIs: http://a.example/debian\nComponents: main\n", "lacks Suites"),
    ("Types: deb\nURIs: http://a.example/debian\nSuites: bookworm\n", "Components is required"),
    (" stray\nTypes: deb\n", "x.sources: line 1: continuation"),
    ("Types deb\n", "expected 'Field: value'"),
])
def test_deb822_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_deb822(text, "x.sources")


def test_read_order_is_sources_list_then_sorted_parts(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb http://first.example/debian bookworm main\n",
        "sources.list.d/b.sources": "Types: deb\nURIs: http://b.example/debian\n"
                                    "Suites: bookworm\nComponents: main\n",
        "sources.list.d/a.list": "deb http://a.example/debian bookworm main\n",
        "sources.list.d/c.list.save": "deb http://ignored.example/debian bookworm main\n",
    })
    assert [s.uris[0] for s in read_sources(root)] == [
        "http://first.example/debian", "http://a.example/debian", "http://b.example/debian",
    ]


def test_missing_apt_root_reads_nothing(tmp_path):
    assert read_sources(tmp_path / "nope") == []


# -- picking Debian's archive ----------------------------------------------------


def test_host_tree_picks_deb_debian_org():
    mirror = find_debian_mirror(DATA / "apt-host")
    assert mirror.uri == "http://deb.debian.org/debian"
    assert mirror.suite == "bookworm"
    assert mirror.keyrings == (DEBIAN_KEYRING,)
    assert mirror.where.endswith("debian.sources:1")


def test_third_party_and_security_only_is_an_error(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n"
                        "deb http://security.debian.org/debian-security bookworm-security main\n"
                        "deb https://deb.nodesource.com/node_20.x bookworm main\n",
        "sources.list.d/docker.list":
            "deb [signed-by=/etc/apt/keyrings/docker.asc] https://download.docker.com/linux/debian"
            " bookworm stable\n",
    })
    with pytest.raises(ConfigError) as e:
        find_debian_mirror(root)
    assert str(tmp_path / "apt") in e.value.message
    assert "no Debian archive found" in e.value.message
    assert e.value.hint and "mirror" in e.value.hint


def test_no_sources_at_all_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no Debian archive found"):
        find_debian_mirror(apt_tree(tmp_path, {}))


def test_disabled_and_deb_src_entries_are_skipped(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list.d/debian.sources": """\
Types: deb
URIs: http://disabled.example/debian
Suites: bookworm
Components: main
Enabled: no
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://ftp.de.debian.org/debian/
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
""",
    })
    mirror = find_debian_mirror(root)
    assert mirror.uri == "http://ftp.de.debian.org/debian"  # trailing slash dropped


def test_signed_by_debian_keyring_beats_an_earlier_lookalike(tmp_path):
    # zabbix-style: codename, main and /debian, but trusted via trusted.gpg.d
    root = apt_tree(tmp_path, {
        "sources.list": "deb http://repo.zabbix.example/zabbix/6.0/debian bookworm main\n",
        "sources.list.d/debian.sources": "Types: deb\nURIs: http://mirror.example/debian\n"
            "Suites: bookworm\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.pgp\n",
    })
    assert find_debian_mirror(root).uri == "http://mirror.example/debian"


def test_signed_by_another_keyring_is_never_debian(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb [signed-by=/usr/share/keyrings/zabbix.gpg] "
                        "http://repo.zabbix.example/debian bookworm main\n",
    })
    with pytest.raises(ConfigError):
        find_debian_mirror(root)


def test_classic_sources_list_without_signed_by_uses_trusted_gpg_d(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb cdrom:[Debian GNU/Linux 12]/ bookworm main\n"
                        "deb http://security.debian.org/ bookworm-security main\n"
                        "deb http://ftp.us.debian.org/debian/ bookworm-updates main\n"
                        "deb http://ftp.us.debian.org/debian/ bookworm main contrib\n",
    })
    (root / "trusted.gpg.d").mkdir()
    for name in ("debian-archive-bookworm-stable.asc", "debian-archive-bookworm-automatic.gpg",
                 "README"):
        (root / "trusted.gpg.d" / name).write_text("x")
    mirror = find_debian_mirror(root)
    # bookworm-updates lives in the same archive: its base suite is the answer
    assert (mirror.uri, mirror.suite) == ("http://ftp.us.debian.org/debian", "bookworm")
    assert [p.name for p in mirror.keyrings] == [
        "debian-archive-bookworm-automatic.gpg", "debian-archive-bookworm-stable.asc",
    ]


def test_snapshot_and_alias_suites_are_recognised(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb http://snapshot.debian.org/archive/debian/20250520T000000Z "
                        "stable main\n",
    })
    mirror = find_debian_mirror(root)
    assert mirror.suite == "stable"
    assert mirror.uri == "http://snapshot.debian.org/archive/debian/20250520T000000Z"


def test_unknown_codename_needs_the_debian_keyring(tmp_path):
    line = "http://deb.debian.org/debian zebra main\n"
    unsigned = apt_tree(tmp_path / "a", {"sources.list": "deb " + line})
    with pytest.raises(ConfigError):
        find_debian_mirror(unsigned)
    signed = apt_tree(tmp_path / "b", {"sources.list": "deb [signed-by=/usr/share/keyrings/"
                                                       "debian-archive-keyring.gpg] " + line})
    assert find_debian_mirror(signed).suite == "zebra"


def test_arch_restriction(tmp_path):
    root = apt_tree(tmp_path, {
        "sources.list": "deb [arch=arm64] http://ports.example/debian bookworm main\n"
                        "deb [arch=amd64] http://amd.example/debian bookworm main\n",
    })
    assert find_debian_mirror(root, arch="amd64").uri == "http://amd.example/debian"
    assert find_debian_mirror(root, arch="arm64").uri == "http://ports.example/debian"
    assert find_debian_mirror(root).uri == "http://ports.example/debian"


def test_inline_key_and_fingerprints_are_passed_on(tmp_path):
    root = apt_tree(tmp_path, {"sources.list.d/inline.sources": INLINE_KEY_SOURCES})
    mirror = find_debian_mirror(root)
    # No keyring path: the inline key is what must verify it.
    assert mirror.inline_keys and mirror.suite == "trixie"
    assert mirror.uri == "https://mirror.example.net/debian"

    root2 = apt_tree(tmp_path / "fpr", {
        "sources.list": "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg,"
                        "4D64FEC119C2029067D6E791F8D2585B8783D481] "
                        "http://deb.debian.org/debian bookworm main\n",
    })
    mirror2 = find_debian_mirror(root2)
    assert mirror2.fingerprints == ("4D64FEC119C2029067D6E791F8D2585B8783D481",)
    assert mirror2.keyrings == (DEBIAN_KEYRING,)


def test_other_archives_experimental_and_non_http_are_skipped(tmp_path):
    signed = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]"
    root = apt_tree(tmp_path, {
        "sources.list": f"deb {signed} http://deb.debian.org/debian-debug bookworm-debug main\n"
                        f"deb {signed} http://apt.example/pg bookworm-pgdg main\n"
                        "deb file:/srv/mirror/debian bookworm main\n"
                        "deb mirror+http://mirrors.example/list.txt bookworm main\n"
                        "deb http://deb.debian.org/debian experimental main\n"
                        "deb https://deb.debian.org/debian sid main\n",
    })
    mirror = find_debian_mirror(root)
    assert (mirror.uri, mirror.suite) == ("https://deb.debian.org/debian", "sid")

