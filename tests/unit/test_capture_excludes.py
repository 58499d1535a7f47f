"""imageserver.excludes: what a capture leaves out, in rsync filter syntax,
checked before the capture starts."""

from __future__ import annotations

import pytest

from imageserver import excludes as ex
from imageserver.prepare.golden import mount_rules, rsync_escape, skipped_mounts
from sysclone.errors import ConfigError
from tests.conftest import DATA

CAPTURE = DATA / "capture"


@pytest.mark.parametrize(("line", "rule"), [
    ("- /var/log/**", "- /var/log/**"),
    ("+ /tmp/keep", "+ /tmp/keep"),
    ("-/ /proc/*", "-,/ /proc/*"),
    ("exclude *.pyc", "- *.pyc"),
    ("include /etc/***", "+ /etc/***"),
    ("/home/*/.cache", "- /home/*/.cache"),
    ("name with spaces", "- name with spaces"),
    (r"/literal\[1\]/*", r"- /literal\[1\]/*"),
])
def test_rules(line, rule):
    assert ex.parse_rule(line, "x").text == rule


@pytest.mark.parametrize("line", ["", "   ", "# comment", "; comment", "  # indented"])
def test_comments_and_blanks(line):
    assert ex.parse_rule(line, "x") is None


@pytest.mark.parametrize(("line", "says"), [
    ("-nospace", "does not parse as a filter rule"),
    ("+x", "does not parse as a filter rule"),
    ("merge /etc/x", "only include and exclude rules"),
    (". /etc/x", "only include and exclude rules"),
    (": .rsync-filter", "only include and exclude rules"),
    ("!", "only include and exclude rules"),
    ("P /keep", "only include and exclude rules"),
    ("dir-merge .f", "only include and exclude rules"),
    ("- ", "empty pattern"),
    ("- /var/[log", "has a '[' without its ']'"),
    ("- /trailing\\", "ends with a lone backslash"),
    ("- a\0b", "NUL byte"),
    ("- " + "x" * 5000, "longer than 4096 bytes"),
])
def test_rules_that_do_not_parse(line, says):
    with pytest.raises(ConfigError, match=None) as e:
        ex.parse_rule(line, "f:3")
    assert str(e.value).startswith("f:3: ") and says in str(e.value)


def test_files_name_the_line(tmp_path):
    f = tmp_path / "capture.exclude"
    f.write_text("# site rules\n- /srv/cache/**\n\n/opt/scratch\n")
    assert [r.text for r in ex.read_file(f)] == ["- /srv/cache/**", "- /opt/scratch"]
    assert ex.read_file(f)[1].origin == f"{f}:4"
    f.write_text("- /ok\n-bad\n")
    with pytest.raises(ConfigError, match=f"{f}:2: '-bad' does not parse"):
        ex.read_file(f)
    f.write_bytes(b"- /caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ex.read_file(f)
    with pytest.raises(ConfigError, match="cannot read exclude file"):
        ex.read_file(tmp_path / "missing")


def test_order_user_then_server_then_defaults(tmp_path):
    user = tmp_path / "user.exclude"
    user.write_text("+ /tmp/keep-me\n")
    server = tmp_path / "server.exclude"
    server.write_text("- /srv/**\n")
    rules = ex.user_rules(ex.ExcludeOptions(("/var/log/*.gz",), (user,), True, server))
    texts = [r.text for r in rules]
    assert texts[:3] == ["- /var/log/*.gz", "+ /tmp/keep-me", "- /srv/**"]
    assert texts[3:] == [r for r, _ in ex.DEFAULTS]
    assert texts.index("+ /tmp/keep-me") < texts.index("- /tmp/**")  # first match wins
    none = ex.user_rules(ex.ExcludeOptions(defaults=False, server_file=tmp_path / "absent"))
    assert none == []
    assert ex.render(rules[:2]) == "- /var/log/*.gz\n+ /tmp/keep-me\n"


def test_help_text_says_why():
    text = ex.help_text()
    for rule, why in ex.DEFAULTS:
        assert rule in text and why in text


def test_skipped_mounts_of_a_real_client():
    import json

    facts = json.loads((CAPTURE / "facts-uefi-multi.json").read_text())
    skipped = dict(skipped_mounts(facts["findmnt"]["out"]))
    assert set(skipped) == {"/home/export", "/tmp", "/proc", "/sys", "/dev", "/run"}
    assert skipped["/home/export"] == "bind mount of /dev/loop1p1[/export]"
    assert skipped["/tmp"] == "tmpfs filesystem"
    facts = json.loads((CAPTURE / "facts-raid-lvm.json").read_text())
    skipped = dict(skipped_mounts(facts["findmnt"]["out"]))
    assert skipped["/mnt/nas"] == "nfs4 filesystem"
    assert skipped["/media/cdrom"] == "iso9660 filesystem"
    assert "/boot" not in skipped and "/home" not in skipped


def test_btrfs_subvolumes_are_not_bind_mounts():
    import json

    mounts = {"filesystems": [
        {"target": "/", "source": "/dev/sda2[/@]", "fstype": "btrfs", "fsroot": "/@",
         "options": "rw,subvol=/@", "maj:min": "0:30"},
        {"target": "/home", "source": "/dev/sda2[/@home]", "fstype": "btrfs",
         "fsroot": "/@home", "options": "rw,subvol=/@home", "maj:min": "0:30"},
        {"target": "/srv/www", "source": "/dev/sda2[/@home/www]", "fstype": "btrfs",
         "fsroot": "/@home/www", "options": "rw,subvol=/@home", "maj:min": "0:30"},
        {"target": "/home2", "source": "/dev/sda2[/@home]", "fstype": "btrfs",
         "fsroot": "/@home", "options": "rw,subvol=/@home", "maj:min": "0:30"},
        {"target": "/mnt/fuse", "source": "sshfs#x", "fstype": "fuse.sshfs", "fsroot": "/",
         "maj:min": "0:50"},
    ]}
    assert skipped_mounts(json.dumps(mounts)) == [
        ("/srv/www", "bind mount of /dev/sda2[/@home/www]"),
        ("/home2", "second mount of /dev/sda2[/@home]"),
        ("/mnt/fuse", "fuse.sshfs filesystem"),
    ]
    assert skipped_mounts("not json") == []


def test_mount_rules_escape_wildcards():
    assert rsync_escape("/mnt/a*b?[c]\\d") == "/mnt/a\\*b\\?\\[c\\]\\\\d"
    assert mount_rules([("/proc", "proc"), ("/mnt/odd [1]", "nfs")]) == \
        ["- /proc/**", "- /mnt/odd \\[1\\]/**"]
    with pytest.raises(ConfigError, match="line break"):
        ex.skipped_mount_rules([("/mnt/a\nb", "nfs")])
    rules = ex.skipped_mount_rules([("/proc", "proc filesystem")])
    assert rules[0].origin == "mount /proc: proc filesystem"
    assert ex.literal_exclude("/var/lib/sysclone/", "store").text == "- /var/lib/sysclone/**"
