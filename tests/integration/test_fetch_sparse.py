"""The agent's fetch and fetch-rest phases (agent.flow.pull_image,
agent.restpull: after fetch or beside it) from a real rsync daemon into a
local directory: the bulk
without rsync -S, the image's sparse files (imageserver.sparsefiles) in a
run of their own with it, and -S everywhere when the server cannot name
them safely (a hard-linked sparse file).  Checked without the code under
test: st_blocks, and rsync's own checksummed, itemized dry run from the
image to the target."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pytest

from agent import flow
from agent.disks import Disk, NoProbe
from agent.phases import Steps
from agent.plan import InstallPlan
from agent.planner import make_plan
from agent.report import Reporter
from imageserver.instructions import ClientQuery, ServerPolicy, resolve
from imageserver.serve import ServeConfig, free_port, serving
from imageserver.store import ImageStore
from sysclone.paths import StateRoot

MiB = 1 << 20


def holes(path: Path, size: int) -> None:
    """Data at 1 MiB and at the end, holes elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.seek(MiB)
        f.write(b"middle")
        f.seek(size - 3)
        f.write(b"end")


def make_image(tree: Path, *, linked: bool) -> None:
    (tree / "etc").mkdir(parents=True)
    (tree / "etc/hostname").write_text("golden\n")
    (tree / "usr/bin").mkdir(parents=True)
    (tree / "usr/bin/tool").write_bytes(os.urandom(200_000))
    os.link(tree / "usr/bin/tool", tree / "usr/bin/tool-again")
    holes(tree / "var/log/lastlog", 32 * MiB)
    # Written zeros: every block allocated, and it must stay so.
    (tree / "var/lib").mkdir(parents=True)
    (tree / "var/lib/zeros").write_bytes(b"\0" * 8 * MiB)
    # A deferred directory (imageserver.fetchorder) holding a sparse file.
    (tree / "usr/share/doc/qemu").mkdir(parents=True)
    (tree / "usr/share/doc/qemu/copyright").write_text("GPL\n")
    holes(tree / "usr/share/doc/qemu/test.img", 64 * MiB)
    if linked:
        os.link(tree / "var/log/lastlog", tree / "var/log/lastlog.hardlink")
    # Directories' times are checked too: give them ones rsync must carry.
    for top, dirs, _ in os.walk(tree, topdown=False):
        for d in dirs:
            os.utime(os.path.join(top, d), (1_600_000_000, 1_600_000_000))


@pytest.fixture
def served(state: StateRoot, root_only: None):
    for name, linked in (("holes", False), ("linked", True)):
        make_image(state.images / name, linked=linked)
        ImageStore(state).record(name, origin="test")
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port())
    with serving(state, cfg) as srv:
        yield srv


def plan_for(state: StateRoot, served, image: str) -> InstallPlan:
    instr = resolve(state, ClientQuery("node7", None, image),
                    ServerPolicy(rsync_port=served.config.rsync_port))
    return make_plan(instructions=instr, server="127.0.0.1", hostname="node7",
                     targets=[Disk("vda", 20 << 30)], fw="bios", ram_bytes=1 << 30,
                     have_tool=lambda t: True, probe=NoProbe())


def fetch(plan: InstallPlan, root: Path, between=lambda: None, beside: bool = False
          ) -> list[str]:
    """The agent's two phases, as install() runs them (`beside`: fetch-rest
    from the start of fetch, in a thread of its own); what it said."""
    out = io.StringIO()
    rep = Reporter(console=out)
    s = flow.Session([], None, rep, Steps(rep))  # type: ignore[arg-type]
    rest = flow.rest_of_image(s, plan, root, 0, beside)
    rest.begin()
    try:
        flow.pull_image(s, plan, root, 0, rest)
        between()
        rest.finish()
    finally:
        rest.stop()
    return out.getvalue().splitlines()


def differences(image: Path, root: Path) -> list[str]:
    """rsync's checksummed dry run from the image to the target: every
    difference in content, type, links, owner, mode, times (directories'
    too), ACLs and xattrs, and every file on one side only."""
    r = subprocess.run(["rsync", "-naHAXc", "--numeric-ids", "--delete", "--itemize-changes",
                        f"{image}/", f"{root}/"], capture_output=True, text=True, check=True)
    return [line for line in r.stdout.splitlines() if line.strip()]


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


@pytest.mark.parametrize("beside", [False, True], ids=["rest-after", "rest-beside"])
def test_only_the_sparse_files_come_with_holes(state: StateRoot, served, tmp_path: Path,
                                               beside: bool) -> None:
    """Also with fetch-rest beside fetch: both runs (and the sparse run)
    then write /usr, /usr/share and /usr/share/doc/qemu at the same time,
    and the directories' times must still come out as the image's."""
    plan = plan_for(state, served, "holes")
    assert plan.image.deferred == ("usr/share/doc",)
    assert plan.image.sparse == ("usr/share/doc/qemu/test.img", "var/log/lastlog")
    root = tmp_path / "sysroot"
    root.mkdir()

    def after_fetch() -> None:
        # The sparse file of the deferred directory came with the sparse
        # run, before the rest of its directory.
        assert (root / "usr/share/doc/qemu/test.img").is_file()
        assert beside or not (root / "usr/share/doc/qemu/copyright").exists()
        assert (root / "var/log/lastlog").is_file()

    said = fetch(plan, root, after_fetch, beside)
    how = "beside it" if beside else "to follow"
    assert any(f"(2 sparse files apart), 1 directories {how}" in line for line in said), said
    assert differences(state.images / "holes", root) == []
    for sparse in ("var/log/lastlog", "usr/share/doc/qemu/test.img"):
        size = os.stat(root / sparse).st_size
        assert allocated(root / sparse) < MiB < size, sparse
    assert allocated(root / "var/lib/zeros") >= 8 * MiB  # written zeros stay written
    assert os.stat(root / "usr/bin/tool").st_ino == os.stat(root / "usr/bin/tool-again").st_ino


def test_a_hard_linked_sparse_file_keeps_holes_everywhere(state: StateRoot, served,
                                                          tmp_path: Path) -> None:
    instr = resolve(state, ClientQuery("node7", None, "linked"),
                    ServerPolicy(rsync_port=served.config.rsync_port))
    assert instr["image"]["sparse"] == "all"
    plan = plan_for(state, served, "linked")
    assert plan.image.sparse is None
    root = tmp_path / "sysroot"
    root.mkdir()
    said = fetch(plan, root)
    assert any("(every file checked for holes)" in line for line in said), said
    assert differences(state.images / "linked", root) == []
    # One file under two names, still sparse.
    st, again = os.stat(root / "var/log/lastlog"), os.stat(root / "var/log/lastlog.hardlink")
    assert st.st_ino == again.st_ino and st.st_nlink == 2
    assert allocated(root / "var/log/lastlog") < MiB < st.st_size
    assert allocated(root / "usr/share/doc/qemu/test.img") < MiB
