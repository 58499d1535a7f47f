"""What an install may fetch last: chosen by the server from the image
tree (imageserver.fetchorder), checked by the agent where it enters
(agent.planner), and sent in the install instructions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from agent.disks import Disk, NoProbe
from agent.planner import make_plan
from imageserver.fetchorder import deferred
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot


def debian_tree(root: Path) -> Path:
    """Merged /usr, as Debian 12: /lib is a link to usr/lib."""
    for d in ("usr/lib/modules/6.1.0-9-amd64/kernel/fs", "usr/lib/firmware/intel",
              "usr/share/doc/bash", "usr/share/man/man1", "var/lib/apt/lists", "usr/bin",
              "etc"):
        (root / d).mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    (root / "usr/lib/modules/6.1.0-9-amd64/kernel/fs/xfs.ko").write_bytes(b"\0" * 10)
    (root / "usr/lib/modules/6.1.0-9-amd64/modules.builtin").write_text("")
    (root / "usr/share/doc/bash/copyright").write_text("GPL\n")
    (root / "usr/bin/bash").write_bytes(b"\x7fELF")
    (root / "etc/hostname").write_text("golden\n")
    return root


def test_the_bulk_nothing_reads_before_the_reboot(tmp_path: Path) -> None:
    tree = debian_tree(tmp_path / "img")
    # /lib/modules and /lib/firmware are the same directories through a
    # link: never named that way (rsync would make /lib a directory).
    assert deferred(tree) == ("usr/lib/modules/6.1.0-9-amd64/kernel", "usr/lib/firmware",
                              "usr/share/doc", "usr/share/man", "var/lib/apt/lists")


def test_an_old_layout_with_a_real_lib(tmp_path: Path) -> None:
    tree = tmp_path / "img"
    (tree / "lib/modules/4.19.0-1-amd64/kernel").mkdir(parents=True)
    (tree / "lib/firmware").mkdir(parents=True)
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/modules").symlink_to("../../lib/modules")
    assert deferred(tree) == ("lib/modules/4.19.0-1-amd64/kernel", "lib/firmware")


def test_a_link_from_outside_keeps_a_directory_in_the_first_run(tmp_path: Path) -> None:
    tree = debian_tree(tmp_path / "img")
    os.link(tree / "usr/bin/bash", tree / "usr/share/doc/bash/bash.bin")
    # Links inside the deferred set come along in its one run.
    os.link(tree / "usr/share/doc/bash/copyright", tree / "usr/share/man/man1/copyright")
    assert deferred(tree) == ("usr/lib/modules/6.1.0-9-amd64/kernel", "usr/lib/firmware",
                              "var/lib/apt/lists")
    # usr/share/man went too: its partner in usr/share/doc no longer comes
    # in the same run.


def test_an_image_without_any(tmp_path: Path) -> None:
    (tmp_path / "img/etc").mkdir(parents=True)
    assert deferred(tmp_path / "img") == ()


def test_the_instructions_carry_it(tmp_path: Path) -> None:
    state = StateRoot.from_options(tmp_path / "state", tmp_path / "cache")
    debian_tree(state.images / "deb")
    ImageStore(state).record("deb", origin="test")
    instr = resolve(state, ClientQuery("node1", None, "deb"), ServerPolicy(rsync_port=873))
    assert instr["image"]["deferred"] == ["usr/lib/modules/6.1.0-9-amd64/kernel",
                                          "usr/lib/firmware", "usr/share/doc", "usr/share/man",
                                          "var/lib/apt/lists"]


def _plan(deferred_value: object) -> object:
    return make_plan(instructions={"image": {"name": "demo", "deferred": deferred_value}},
                     server="10.0.0.2", hostname="n1", targets=[Disk("vda", 20 << 30)],
                     fw="bios", ram_bytes=1 << 30, have_tool=lambda t: True, probe=NoProbe())


def test_the_agent_takes_relative_paths_inside_the_image() -> None:
    plan = _plan(["usr/share/doc", "usr/lib/modules/6.1.0-9-amd64/kernel"])
    assert plan.image.deferred == ("usr/share/doc",  # type: ignore[attr-defined]
                                   "usr/lib/modules/6.1.0-9-amd64/kernel")
    assert _plan(None).image.deferred == ()  # type: ignore[attr-defined]  # an older server


@pytest.mark.parametrize("bad, says", [
    ("/usr/share/doc", "is not a relative directory path"),
    ("usr/../etc", "is not a relative directory path"),
    ("usr/share/doc --delete", "is not a relative directory path"),
    ("-rf", "is not a relative directory path"),
    ("dev/shm", "is under /dev"),
    ("boot/grub", "is under /boot"),
    ("etc", "is under /etc"),
])
def test_the_agent_refuses_what_could_escape_or_race(bad: str, says: str) -> None:
    with pytest.raises(ConfigError) as e:
        _plan([bad])
    assert says in e.value.message and "image.deferred" in e.value.message
    with pytest.raises(ConfigError, match="not a list"):
        _plan("usr/share/doc")


def test_only_names_the_agent_takes_are_offered(tmp_path: Path) -> None:
    tree = debian_tree(tmp_path / "img")
    (tree / "usr/lib/modules/6.1.0 custom~1/kernel").mkdir(parents=True)
    got = deferred(tree)
    assert "usr/lib/modules/6.1.0-9-amd64/kernel" in got
    assert not any("custom" in d for d in got)  # it comes with the first run
    _plan(list(got))  # and the agent takes every one offered


def test_links_to_other_versions_in_the_store_do_not_count(tmp_path: Path) -> None:
    """The image store keeps versions as hard-linked trees: every unchanged
    file has a name in the previous version too, which rsync never sees."""
    tree = debian_tree(tmp_path / "v2")
    older = tmp_path / "v1"
    older.mkdir()
    os.link(tree / "usr/share/doc/bash/copyright", older / "copyright")
    os.link(tree / "usr/bin/bash", older / "bash")
    assert "usr/share/doc" in deferred(tree)
    # A chain: doc linked to man, man to the first run: both come first.
    os.link(tree / "usr/share/doc/bash/copyright", tree / "usr/share/man/man1/c")
    (tree / "usr/share/man/man1/x").write_text("x")
    os.link(tree / "usr/share/man/man1/x", tree / "usr/bin/x")
    got = deferred(tree)
    assert "usr/share/doc" not in got and "usr/share/man" not in got
    assert "var/lib/apt/lists" in got


def test_a_stored_version_is_walked_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from imageserver import fetchorder

    tree = debian_tree(tmp_path / "v1")
    walks: list[Path] = []
    real = fetchorder.deferred
    monkeypatch.setattr(fetchorder, "deferred", lambda t: walks.append(t) or real(t))
    first = fetchorder.deferred_of_version(tree)
    assert fetchorder.deferred_of_version(tree) == first and len(walks) == 1
    # The same path made anew (an image deleted and bootstrapped again).
    import shutil

    shutil.rmtree(tree)
    (tree / "etc").mkdir(parents=True)
    os.utime(tree, ns=(1, 1))
    assert fetchorder.deferred_of_version(tree) == () and len(walks) == 2
