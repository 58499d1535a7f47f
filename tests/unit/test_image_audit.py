"""The image store's edges an audit found: damaged records named in one
line, version numbers never given twice, exit statuses of diff and verify,
reads that write nothing, captures of nothing or of the store itself, and
the messages of the SystemImager front ends."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import pytest

from imageserver import capture as capture_mod
from imageserver import excludes as ex
from imageserver.names import NAME_HINT, is_name
from imageserver.seal import NewVersion, seal
from imageserver.sources import LocalSource, parse_source
from imageserver.store import ImageStore
from imageserver.versions import Versions
from sysclone import sicompat
from sysclone.cli import main
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    return StateRoot(tmp_path / "root", tmp_path / "root" / "cache")


def new_version(state: StateRoot, name: str, text: str) -> int:
    v = Versions(state)
    with v.lock(name), v.stage(name) as s:
        (s.tree / "etc").mkdir()
        (s.tree / "etc/hostname").write_text(text)
        return seal(v, s, NewVersion("test", source="unit", dedupe=True)).version


def sysclone(state: StateRoot, *argv: str) -> int:
    return main(["--root", str(state.root), *argv])


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1, err
    return err[0]


# -- 1: a damaged store ---------------------------------------------------------

def test_a_damaged_version_json_is_named_and_hides_no_other_image(state, capsys):
    new_version(state, "web", "a\n")
    new_version(state, "db", "b\n")
    bad = Versions(state).version_dir("web", 1) / "version.json"
    bad.write_text("{not json")
    assert sysclone(state, "image", "list") == 1
    captured = capsys.readouterr()
    rows = {line.split()[0]: line for line in captured.out.splitlines()[1:]}
    assert "DAMAGED" in rows["web"] and "test" in rows["db"]
    assert captured.err.strip().startswith(f"sysclone: error: {bad}: damaged, cannot be read")
    assert len(captured.err.strip().splitlines()) == 1
    assert sysclone(state, "image", "versions", "web") == 1
    captured = capsys.readouterr()
    assert "DAMAGED" in captured.out and str(bad) in captured.err
    assert sysclone(state, "image", "show", "web") == 1
    assert str(bad) in error_line(capsys)


def test_a_truncated_manifest_is_damage_for_verify_and_an_error_for_diff(state, capsys):
    new_version(state, "web", "a\n")
    new_version(state, "web", "b\n")
    v = Versions(state)
    m1 = v.version_dir("web", 1) / "manifest.jsonl.gz"
    m1.write_bytes(m1.read_bytes()[:20])  # truncated: gzip raises EOFError
    assert sysclone(state, "image", "verify", "web@1") == 1
    captured = capsys.readouterr()
    assert f"damaged: {m1}: damaged, cannot be read" in captured.out
    # Version 2's manifest is a delta on 1's: damaged too, and named.
    assert sysclone(state, "image", "diff", "web@1", "web@2") == 2
    assert f"sysclone: error: {m1}: damaged" in error_line(capsys)


def test_a_garbage_manifest_makes_diff_one_line(state, capsys):
    new_version(state, "web", "a\n")
    new_version(state, "db", "b\n")
    m = Versions(state).version_dir("db", 1) / "manifest.jsonl.gz"
    with gzip.open(m, "wt") as f:
        f.write("this is not json\n")
    assert sysclone(state, "image", "diff", "web", "db") == 2
    assert error_line(capsys).startswith(f"sysclone: error: {m}: damaged, cannot be read")


# -- 2: numbers never given twice ---------------------------------------------------

def test_a_deleted_version_number_is_never_given_again(state):
    store = ImageStore(state)
    for i in range(3):
        new_version(state, "web", f"{i}\n")
    store.rollback("web", 2)
    store.delete("web@3")
    assert new_version(state, "web", "new\n") == 4
    store.prune("web", 1)
    assert store.versions.numbers("web") == [4]
    assert new_version(state, "web", "newer\n") == 5


def test_a_deleted_or_renamed_image_does_not_give_its_numbers_again(state):
    store = ImageStore(state)
    new_version(state, "web", "a\n")
    new_version(state, "web", "b\n")
    store.delete("web")
    assert new_version(state, "web", "c\n") == 3
    store.rename("web", "www")
    assert new_version(state, "web", "d\n") == 4  # web@3 is www@3 now
    assert new_version(state, "www", "e\n") == 4


def test_a_store_from_before_the_mark_counts_from_its_highest_version(state):
    new_version(state, "web", "a\n")
    new_version(state, "web", "b\n")
    marks = state.images / ".versions" / ".numbers"
    (marks / "web").unlink()
    assert new_version(state, "web", "c\n") == 3
    assert (marks / "web").read_text() == "3\n"
    assert not list(marks.glob(".*.tmp"))  # written atomically


# -- 3: exit statuses of diff and verify ---------------------------------------------

@pytest.mark.parametrize("argv", [
    ["image", "diff", "nope", "web"], ["image", "diff", "web", "web@9"],
    ["image", "diff", "web", "bad/ref"], ["image", "verify", "nope"],
    ["image", "verify", "web@0"], ["image", "verify", "web@9"],
])
def test_errors_of_diff_and_verify_exit_2(state, capsys, argv):
    new_version(state, "web", "a\n")
    assert sysclone(state, *argv) == 2
    error_line(capsys)


def test_differences_exit_1_and_none_0(state, capsys):
    new_version(state, "web", "a\n")
    new_version(state, "web", "b\n")
    assert sysclone(state, "image", "diff", "web@1", "web@1") == 0
    assert sysclone(state, "image", "diff", "web@1", "web@2") == 1
    assert sysclone(state, "image", "verify", "web") == 0
    (state.images / "web/etc/hostname").write_text("edited\n")
    assert sysclone(state, "image", "verify", "web") == 1


@pytest.mark.parametrize("action", ["diff", "verify"])
def test_help_of_diff_and_verify_gives_the_exit_statuses(action, capsys):
    with pytest.raises(SystemExit):
        main(["image", action, "--help"])
    assert "2 on error" in " ".join(capsys.readouterr().out.split())


# -- 4: rename to the same name --------------------------------------------------------

def test_rename_to_the_same_name_is_refused_in_one_line(state, capsys):
    new_version(state, "web2", "a\n")
    assert sysclone(state, "image", "rename", "web2", "web2") == 1
    line = error_line(capsys)
    assert "same name" in line and "another sysclone" not in line


# -- 5: a capture of nothing -----------------------------------------------------------

def test_a_capture_of_nothing_is_refused(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    with pytest.raises(ConfigError, match="nothing was captured") as e:
        capture_mod._check_captured(tree, "web", LocalSource(tmp_path))
    assert "--exclude-from" in (e.value.hint or "")
    (tree / "etc").mkdir()  # what the rules kept: directories only, say
    capture_mod._check_captured(tree, "web", LocalSource(tmp_path))


# -- 6: reads write nothing --------------------------------------------------------------

def test_a_legacy_image_is_read_without_writing(state, capsys):
    tree = state.images / "old"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("old\n")
    before = sorted(p.name for p in state.images.iterdir())
    assert sysclone(state, "image", "list") == 0
    listed = capsys.readouterr().out.splitlines()[1].split()
    assert listed[:3] == ["old", "-", "1"]  # no number, one version
    assert sysclone(state, "image", "versions", "old") == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 1 and rows[0].startswith("- *")
    assert sysclone(state, "image", "show", "old") == 0
    assert sorted(p.name for p in state.images.iterdir()) == before == ["old"]


# -- 7: the store is never captured into itself -------------------------------------------

def rule_paths(rules: list[ex.Rule]) -> set[str]:
    return {r.text for r in rules}


def test_the_state_root_as_source_leaves_sysclones_parts_out(state):
    state.root.mkdir(parents=True)
    rules = capture_mod._store_rules(state, LocalSource(state.root), "self")
    texts = rule_paths(rules)
    for part in ("images", "cache", "run", "kernels", "log", "scripts"):
        assert f"- /{part}/**" in texts


def test_a_source_above_the_state_root_leaves_it_out(state, tmp_path):
    rules = capture_mod._store_rules(state, LocalSource(tmp_path), "self")
    assert rule_paths(rules) == {"- /root/**"}


def test_the_image_store_as_source_is_refused(state):
    state.images.mkdir(parents=True)
    with pytest.raises(ConfigError, match="sysclone's own image store"):
        capture_mod._store_rules(state, LocalSource(state.images), "self")


def test_another_images_tree_may_be_captured(state):
    new_version(state, "web", "a\n")
    assert capture_mod._store_rules(state, LocalSource(state.images / "web"), "copy") == []


# -- 8: messages -------------------------------------------------------------------------

def test_si_getimage_names_golden_client(monkeypatch, capsys):
    monkeypatch.setattr(sicompat.cli, "main", lambda a: pytest.fail("ran sysclone"))
    assert sicompat.si_getimage(["--golden-client", "/local/path", "--image", "sg"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("si_getimage: --golden-client '/local/path' is not a host name")
    assert "rsync module" not in err and "--from DIR" in err


@pytest.mark.parametrize("text", ["root@10.0.0.5:/", "golden:/srv", "[fd00::5]:/"])
def test_an_rsync_style_host_path_is_recognised(text):
    with pytest.raises(ConfigError, match="does not take host:path") as e:
        parse_source(text)
    assert "[ssh://][user@]host[:port]" in (e.value.hint or "")


def test_a_local_directory_with_a_colon_is_still_one(tmp_path, monkeypatch):
    d = tmp_path / "a:b"
    d.mkdir()
    monkeypatch.chdir(tmp_path)
    assert isinstance(parse_source("a:b/"), LocalSource)


def test_rollback_of_an_unknown_image(state, capsys):
    new_version(state, "web", "a\n")
    assert sysclone(state, "image", "rollback", "nope", "1") == 1
    assert "unknown image 'nope'" in error_line(capsys)
    assert not (state.run / "locks" / "image-nope.lock").exists()


def test_the_name_hint_states_the_rule():
    assert not is_name("-x") and not is_name(".x") and not is_name("a..b")
    assert not is_name("a" * 65) and is_name("9a_b+c-d.e")
    for words in ("letter or digit first", "64", "'..'"):
        assert words in NAME_HINT


# -- 9: sicompat passes positionals after -- ---------------------------------------------

@pytest.mark.parametrize(("fn", "argv", "bad"), [
    (sicompat.si_rmimage, ["--", "-x"], "-x"),
    (sicompat.si_cpimage, ["--", "web", "--root=/tmp/evil"], "--root=/tmp/evil"),
    (sicompat.si_mvimage, ["--", "web", "-q"], "-q"),
])
def test_si_positionals_are_never_options(state, monkeypatch, capsys, fn, argv, bad):
    new_version(state, "web", "a\n")
    monkeypatch.setenv("SYSCLONE_ROOT", str(state.root))
    assert fn(argv) == 1
    assert f"image name {bad!r} is not valid" in error_line(capsys)
    assert ImageStore(state).names() == ["web"]


# -- 10: updateclient ---------------------------------------------------------------------

def test_updateclient_bad_usage_exits_2(tmp_path, capsys):
    assert main(["--root", str(tmp_path), "updateclient", "--kexec"]) == 2
    assert "go with --autoinstall" in error_line(capsys)


def test_a_refused_rollback_writes_nothing(tmp_path, monkeypatch, capsys):
    system = tmp_path / "system"
    system.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert main(["--root", str(tmp_path / "state"), "updateclient", "--rollback",
                 "--system-root", str(system)]) == 1
    assert "there is no rollback point" in error_line(capsys)
    assert list(system.iterdir()) == []


# -- 12: the TOML hint ---------------------------------------------------------------------

def test_a_toml_parse_error_points_where_the_form_is_described():
    from agent.storage.tomlread import parse_toml

    with pytest.raises(ConfigError) as e:
        parse_toml("a = \n", "x.toml")
    hint = e.value.hint or ""
    assert "sysclone layout convert" in hint and "[[disk]]" in hint
    # and where it points, the form is described
    assert "`sysclone layout --help`" in hint


def test_layout_help_describes_the_toml_form(capsys):
    from sysclone.cli import main

    with pytest.raises(SystemExit):
        main(["layout", "--help"])
    out = capsys.readouterr().out
    for table in ("[[disk]]", "[[disk.part]]", "[[raid_disk]]", "[[lvm_group]]", "[[fsinfo]]",
                  "[bootloader]"):
        assert table in out
