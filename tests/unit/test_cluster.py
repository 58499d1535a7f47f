"""SystemImager's cluster.xml: groups, their images and overrides, and what
the install instructions make of them (imageserver.cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from imageserver import cluster
from imageserver.cluster import overrides_for, parse
from sysclone.errors import ConfigError

# The format of SystemImager 4's si_clusterconfig: a global group and
# override, groups with a priority, an image, overrides and node lists.
SITE = """<?xml version='1.0' standalone='yes'?>
<!-- written for sysclone's tests, in si_clusterconfig's format -->
<xml>
  <master>master1</master>
  <name>all</name>
  <override>all</override>
  <override>site</override>
  <group>
    <name>Local</name>
    <image>Local</image>
    <override>Local</override>
    <node>localhost</node>
  </group>
  <group>
    <name>Storage</name>
    <priority>20</priority>
    <image>RHEL4</image>
    <override>Storage</override>
    <node>node001,node1293-node1308</node>
  </group>
  <group>
    <name>Login</name>
    <priority>10</priority>
    <image>SuSE10</image>
    <override>SuSE10_frontend</override>
    <override>SuSE10</override>
    <node>node001</node>
    <node>node002</node>
  </group>
  <group>
    <name>Compute</name>
    <priority>30</priority>
    <override>Compute</override>
    <node>cn-rack1, node003-node010</node>
  </group>
</xml>
"""


def test_groups_by_priority_then_file_order():
    c = parse(SITE, "cluster.xml")
    assert c.name == "all" and c.overrides == ("all", "site")
    # Numbered priorities first (lower first), then the group without one.
    assert [g.name for g in c.groups] == ["Login", "Storage", "Compute", "Local"]
    assert [g.name for g in c.groups_of("node001")] == ["Login", "Storage"]
    # The manual's example: node001 gets Login's image.
    assert c.image_for("node001") == "SuSE10"
    assert c.image_for("node1300") == "RHEL4"
    assert c.image_for("node005") is None  # Compute names no image
    assert c.image_for("stranger") is None


@pytest.mark.parametrize("host, member", [
    ("node1293", True), ("node1308", True), ("node1309", False), ("node1292", False),
    ("node003", True), ("node010", True), ("node3", False),  # the width is kept
    ("NODE004.cluster.org", True),  # by the first label, as host names compare
    ("cn-rack1", True),  # a '-' in a name is not a range
])
def test_node_ranges(host, member):
    c = parse(SITE, "cluster.xml")
    assert bool(c.groups_of(host)) is member


def test_overrides_most_important_first(tmp_path):
    for o in ("all", "site", "Storage", "SuSE10_frontend", "SuSE10", "node001", "RHEL4"):
        (tmp_path / o).mkdir()
    c = parse(SITE, "cluster.xml")
    # The manual: node001 gets "SuSE10_frontend, SuSE10, Storage" from its
    # groups; its own override wins over them, the global ones lose.
    assert overrides_for(c, "node001", "SuSE10", tmp_path) == (
        "node001", "SuSE10_frontend", "SuSE10", "Storage", "all", "site")
    # Only those that exist are sent.
    assert overrides_for(c, "node005", "RHEL4", tmp_path) == ("all", "site")
    # A client no group names: its own, then its image's (SystemImager's
    # default OVERRIDES=$IMAGENAME); never the global ones.
    assert overrides_for(c, "stranger", "RHEL4", tmp_path) == ("RHEL4",)
    assert overrides_for(cluster.EMPTY, None, "RHEL4", tmp_path) == ("RHEL4",)


def test_no_file_no_groups(tmp_path):
    assert cluster.load(tmp_path) == cluster.EMPTY


@pytest.mark.parametrize("text, message", [
    ("<xml><group><name>a</name></group><group><name>a</name></group></xml>",
     "cluster.xml:1: group 'a' is defined twice"),
    ("<xml><group><image>x</image></group></xml>", "cluster.xml:1: a <group> has no <name>"),
    ("<xml><group><name>../etc</name></group></xml>",
     "cluster.xml:1: group name '../etc' is not a plain name"),
    ("<xml><override>a/b</override></xml>", "cluster.xml:1: override name 'a/b' is not a plain"),
    ("<xml><group><name>g</name><image>-x</image></group></xml>",
     "cluster.xml:1: image name '-x' is not a plain name"),
    ("<xml><group><name>g</name><priority>high</priority></group></xml>",
     "cluster.xml:1: group 'g': priority 'high' is not a whole number"),
    ("<xml><group><name>g</name>\n<node>node10-node1</node></group></xml>",
     "cluster.xml:2: node range 'node10-node1' runs backwards"),
    ("<xml><group><name>g</name><node>n1-n9999999</node></group></xml>",
     "cluster.xml:1: node range 'n1-n9999999' names more than 100,000 hosts"),
    ("<xml><group><name>g</name><node>bad_host</node></group></xml>",
     "cluster.xml:1: node 'bad_host' is not a host name"),
    ("<xml><group><name>g</name><nodes>x</nodes></group></xml>",
     "cluster.xml:1: <nodes> is not expected in <group>"),
    ("<xml><name>a</name><name>b</name></xml>", "cluster.xml:1: <xml> has more than one <name>"),
    ("<config/>", "cluster.xml:1: the document element is <config>, not <xml>"),
    ("<xml><group>", "cluster.xml:1: not well-formed XML"),
    ('<!DOCTYPE xml [<!ENTITY x "y">]><xml/>', "cluster.xml:1: a <!DOCTYPE xml> declaration "
                                               "is not allowed in cluster.xml"),
])
def test_bad_files(text, message):
    with pytest.raises(ConfigError) as e:
        parse(text, "cluster.xml")
    assert e.value.message.startswith(message)
    assert "\n" not in e.value.message


def test_systemimager_sample(compat: Path):
    """SystemImager's own sample file, as si_clusterconfig ships it."""
    c = parse((compat / "cluster.xml").read_bytes(), "cluster.xml")
    assert [g.name for g in c.groups] == ["Login", "Storage", "Local"]
    assert c.image_for("node001") == "SuSE10" and c.image_for("node1300") == "RHEL4"
    assert c.overrides == ("all",)
