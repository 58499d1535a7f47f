"""imageserver.instructions: what a client is told to install, and the
SystemImager lookup order for per-client files."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver.instructions import (
    API_VERSION,
    LAYOUT_DIR,
    ClientQuery,
    ServerPolicy,
    resolve,
)
from imageserver.lookup import base_hostname, candidates, find_file
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

POLICY = ServerPolicy(rsync_port=8873)


@pytest.fixture
def state(tmp_path: Path) -> StateRoot:
    s = StateRoot(tmp_path / "root", tmp_path / "cache")
    s.images.mkdir(parents=True)
    for name in ("deb12", "rhel9"):
        (s.images / name / "etc").mkdir(parents=True)
        (s.images / name / "etc/hostname").write_text("golden\n")
        ImageStore(s).record(name, origin="bootstrap")
    (s.scripts / LAYOUT_DIR).mkdir(parents=True)
    return s


def layout(state: StateRoot, name: str, text: str | None = None) -> Path:
    p = state.scripts / LAYOUT_DIR / name
    p.write_text(text or f"<config><!-- {name} --></config>\n")
    return p


def q(hostname: str | None = "node01.cluster", image: str | None = "deb12",
      layout: str | None = None) -> ClientQuery:
    return ClientQuery(hostname=hostname, mac="52:54:00:12:34:56", image=image, layout=layout)


@pytest.mark.parametrize(("host", "base"), [
    ("node01", "node"), ("node01.cluster.example", "node"), ("web", "web"),
    ("rack2-node017", "rack2-node"), ("007", ""),
])
def test_base_hostname(host, base):
    assert base_hostname(host) == base


def test_candidates_order_is_systemimager_4_9():
    assert candidates("node01.cluster", ("compute", "gpu"), "deb12") == [
        "node01.cluster", "node01", "compute", "gpu", "node", "deb12", "default"]


def test_candidates_drop_duplicates_and_empties():
    assert candidates("web", (), "web") == ["web", "default"]
    assert candidates("007", (), None) == ["007", "default"]  # base name "" dropped
    assert candidates(None, (), None) == ["default"]
    assert candidates(None, ("g",), "img") == ["g", "img", "default"]


def test_find_file_first_name_then_suffix(tmp_path):
    (tmp_path / "node.xml").write_text("n")
    (tmp_path / "default.xml").write_text("d")
    (tmp_path / "default").write_text("plain")
    assert find_file(tmp_path, ["node01", "node", "default"], (".xml",)) == tmp_path / "node.xml"
    assert find_file(tmp_path, ["default"], ("", ".xml")) == tmp_path / "default"
    assert find_file(tmp_path, ["nothing"], (".xml",)) is None
    (tmp_path / "dir.xml").mkdir()
    assert find_file(tmp_path, ["dir"], (".xml",)) is None


def test_find_file_never_leaves_the_directory(tmp_path):
    inner = tmp_path / "layouts"
    inner.mkdir()
    (tmp_path / "secret.xml").write_text("s")
    assert find_file(inner, ["../secret", "default"], (".xml",)) is None


def test_instructions_without_layout(state):
    got = resolve(state, q(), POLICY)
    assert got["version"] == API_VERSION
    assert got["hostname"] == "node01.cluster"
    assert got["layout"] is None
    assert got["overrides"] == []
    assert got["params"] == {}
    img = got["image"]
    assert img["name"] == img["module"] == "deb12"
    assert img["rsync_port"] == 8873
    assert img["files"] == 1
    assert img["bytes"] > 0 and img["usage"]["/"] == img["bytes"]
    assert "/etc" in img["usage"]


@pytest.mark.parametrize(("present", "chosen"), [
    (["node01.cluster.xml", "node01.xml", "node.xml", "deb12.xml", "default.xml"],
     "node01.cluster.xml"),
    (["node01.xml", "node.xml", "deb12.xml", "default.xml"], "node01.xml"),
    (["node.xml", "deb12.xml", "default.xml"], "node.xml"),
    (["deb12.xml", "default.xml", "rhel9.xml"], "deb12.xml"),
    (["default.xml", "rhel9.xml"], "default.xml"),
])
def test_layout_lookup_order(state, present, chosen):
    for name in present:
        layout(state, name)
    got = resolve(state, q(), POLICY)["layout"]
    assert got == {"name": chosen, "format": "systemimager-xml",
                   "text": f"<config><!-- {chosen} --></config>\n"}


def test_layout_named_by_client(state):
    layout(state, "default.xml")
    layout(state, "raid1.xml")
    for asked in ("raid1", "raid1.xml"):
        assert resolve(state, q(layout=asked), POLICY)["layout"]["name"] == "raid1.xml"


def test_layout_named_by_client_but_missing(state):
    layout(state, "default.xml")
    with pytest.raises(ConfigError, match="disks layout 'raid5' not found in"):
        resolve(state, q(layout="raid5"), POLICY)


def test_layout_named_by_client_cannot_escape(state):
    (state.scripts / "secret.xml").write_text("<secret/>")
    (state.root / "passwd").write_text("root:x:0:0")
    with pytest.raises(ConfigError, match="not found"):
        resolve(state, q(layout="../secret"), POLICY)
    with pytest.raises(ConfigError, match="not found"):
        resolve(state, q(layout="../../passwd"), POLICY)


def test_hostname_cannot_pick_a_file_outside_the_layouts(state):
    (state.scripts / "secret.xml").write_text("<secret/>")
    got = resolve(state, q(hostname="../secret", image="deb12"), POLICY)
    assert got["layout"] is None


def test_default_image_and_post_action_from_the_server(state):
    policy = ServerPolicy(rsync_port=873, default_image="rhel9", post_action="poweroff")
    got = resolve(state, q(image=None), policy)
    assert got["image"]["name"] == "rhel9"
    assert got["params"] == {"si.post-action": "poweroff"}
    # the client's own choice wins over the default
    assert resolve(state, q(image="deb12"), policy)["image"]["name"] == "deb12"


def test_no_image_at_all(state):
    with pytest.raises(ConfigError, match="no image named for this client") as e:
        resolve(state, q(image=None), POLICY)
    assert e.value.hint and "IMAGENAME=" in e.value.hint


def test_unknown_image_names_the_known_ones(state):
    with pytest.raises(ConfigError, match="unknown image 'sles'") as e:
        resolve(state, q(image="sles"), POLICY)
    assert e.value.hint == "known images: deb12, rhel9"


def test_bad_image_name(state):
    with pytest.raises(ConfigError, match="is not valid"):
        resolve(state, q(image="../../etc"), POLICY)


def test_image_without_metadata_is_measured(state):
    (state.images / "fresh/etc").mkdir(parents=True)
    (state.images / "fresh/etc/a").write_text("a")
    (state.images / "fresh/etc/b").write_text("b")
    got = resolve(state, q(image="fresh"), POLICY)
    assert got["image"]["files"] == 2


CLUSTER = """<xml>
  <name>all</name>
  <override>all</override>
  <group>
    <name>compute</name>
    <priority>10</priority>
    <image>rhel9</image>
    <override>compute</override>
    <node>node01-node16</node>
  </group>
</xml>
"""


def test_cluster_xml_groups_image_and_overrides(state):
    """cluster.xml's group names the image when the client names none, joins
    the lookup of layouts, scripts and network configurations, and brings
    its overrides: the host's own, the group's, the global one."""
    (state.scripts / "cluster.xml").write_text(CLUSTER)
    for o in ("all", "compute", "node01", "deb12"):
        (state.overrides / o).mkdir(parents=True)
    layout(state, "compute.xml")
    (state.scripts / "post-install").mkdir()
    (state.scripts / "post-install" / "10compute.tune").write_text("#!/bin/sh\n")
    got = resolve(state, q(image=None), ServerPolicy(rsync_port=8873, default_image="deb12"))
    assert got["image"]["name"] == "rhel9"  # the group's, not the server's default
    assert got["groups"] == ["compute"]
    assert got["layout"]["name"] == "compute.xml"
    assert [s["name"] for s in got["scripts"]["post-install"]] == ["10compute.tune"]
    assert got["overrides"] == ["node01", "compute", "all"]
    # The client's own IMAGENAME= wins over the group's image.
    assert resolve(state, q(image="deb12"), POLICY)["image"]["name"] == "deb12"
    # A client no group names: its image's override, no global ones.
    other = resolve(state, q(hostname="web1", image="deb12"), POLICY)
    assert other["groups"] == [] and other["overrides"] == ["deb12"]


def test_cluster_xml_mistake_is_one_error(state):
    (state.scripts / "cluster.xml").write_text("<xml><group><name>a/b</name></group></xml>")
    with pytest.raises(ConfigError) as e:
        resolve(state, q(), POLICY)
    assert e.value.message.startswith(f"{state.scripts / 'cluster.xml'}:1: group name 'a/b'")
