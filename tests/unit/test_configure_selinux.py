"""si.selinux-relabel: the installed system relabels itself on first boot
when its image runs SELinux (agent/configure/selinux.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.configure.selinux import (
    mark_autorelabel,
    relabel_on_first_boot,
    selinux_mode,
    selinux_relabel_wanted,
)

RHEL_CONFIG = """\
# This file controls the state of SELinux on the system.
# SELINUX= can take one of these three values:
#     enforcing - SELinux security policy is enforced.
SELINUX={mode}
# SELINUXTYPE= can take one of these three values:
SELINUXTYPE=targeted
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "sysroot"
    (r / "etc").mkdir(parents=True)
    return r


def with_config(root: Path, text: str) -> Path:
    (root / "etc/selinux").mkdir(parents=True, exist_ok=True)
    (root / "etc/selinux/config").write_text(text)
    return root


@pytest.mark.parametrize(("line", "mode", "wanted"), [
    ("SELINUX=enforcing", "enforcing", True),
    ("SELINUX=permissive", "permissive", True),
    ("SELINUX=disabled", "disabled", False),
    ('SELINUX="Enforcing"  # quoted, commented', "enforcing", True),
    ("  SELINUX = permissive", "permissive", True),
])
def test_mode_from_the_images_config(root: Path, line: str, mode: str, wanted: bool) -> None:
    with_config(root, RHEL_CONFIG.replace("SELINUX={mode}", line))
    assert selinux_mode(root) == mode
    assert selinux_relabel_wanted(root) is wanted


def test_no_selinux_config(root: Path) -> None:
    assert selinux_mode(root) is None
    assert not selinux_relabel_wanted(root)
    with_config(root, "# SELINUX=enforcing\nSELINUXTYPE=targeted\n")
    assert selinux_mode(root) is None


def test_mark_autorelabel(root: Path) -> None:
    assert mark_autorelabel(root) == ["/.autorelabel"]
    assert (root / ".autorelabel").read_text() == ""


@pytest.mark.parametrize(("mode", "param", "written"), [
    ("enforcing", True, ["/.autorelabel"]),
    ("enforcing", False, []),  # si.selinux-relabel=no
    ("disabled", True, []),
])
def test_relabel_on_first_boot(root: Path, mode: str, param: bool, written: list[str]) -> None:
    with_config(root, RHEL_CONFIG.format(mode=mode))
    assert relabel_on_first_boot(root, param) == written
    assert (root / ".autorelabel").exists() is bool(written)


def test_an_image_without_selinux_is_left_alone(root: Path) -> None:
    assert relabel_on_first_boot(root, True) == []
    assert list(root.iterdir()) == [root / "etc"]
