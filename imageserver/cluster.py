"""SystemImager's cluster.xml: which clients form which groups, and the image
and overrides each group gets (si_clusterconfig's file, kept here as
ROOT/scripts/cluster.xml).

    <xml>
      <master>master1</master>          the image server (read, not used)
      <name>all</name>                  the global group: every client
      <override>all</override>          global overrides, most important first
      <group>
        <name>Login</name>
        <priority>10</priority>         lower is more important
        <image>RHEL5</image>
        <override>Login</override>      ...
        <node>node001,node003-node010</node>
      </group>
    </xml>

What a client gets, as SystemImager 4 gives it:
- its groups, most important first: by <priority> (lower first; a group
  without one comes after those with one), then in the file's order.  They
  join the names scripts, network configurations and layouts are looked up
  by (imageserver.lookup.candidates);
- the image of its most important group that names one, when the client
  names none itself (IMAGENAME=/si.image-name wins over the file);
- its overrides, most important first: the host's own (overrides/HOSTNAME,
  the "node override"), each group's in order, then the global ones.  A
  client that no group names gets its host's and then its image's override
  (SystemImager's default OVERRIDES=$IMAGENAME).  Only overrides that exist
  as directories are sent.

A node is a host name or a range of them, `node1293-node1308` (one prefix,
numbered ends; the width of the first end's number is kept, as in
node001-node010), several in one <node> separated by commas.  A client
matches by its full name or its first label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from agent.params.kinds import is_hostname
from agent.storage.xmltree import Node, read_tree
from imageserver.names import NAME_HINT, is_name
from sysclone.errors import ConfigError

FILE_NAME = "cluster.xml"
HINT = "see the cluster.xml section of the README (SystemImager's si_clusterconfig format)"
# A range larger than this is a typo (node1-node1000000), not a cluster.
MAX_RANGE = 100_000
_RANGE_END = re.compile(r"(.*?)(\d+)\Z")


@dataclass(frozen=True)
class Group:
    name: str
    priority: int | None  # lower is more important; None: after every numbered one
    image: str | None
    overrides: tuple[str, ...]  # most important first
    nodes: frozenset[str]


@dataclass(frozen=True)
class Cluster:
    name: str  # the global group's
    overrides: tuple[str, ...]  # global, most important first
    groups: tuple[Group, ...]  # most important first

    def groups_of(self, hostname: str | None) -> tuple[Group, ...]:
        if not hostname:
            return ()
        names = {hostname.lower(), hostname.split(".")[0].lower()}
        return tuple(g for g in self.groups if names & g.nodes)

    def group_names(self, hostname: str | None) -> tuple[str, ...]:
        """What the per-client lookups take (imageserver.lookup.candidates)."""
        return tuple(g.name for g in self.groups_of(hostname))

    def image_for(self, hostname: str | None) -> str | None:
        return next((g.image for g in self.groups_of(hostname) if g.image), None)


EMPTY = Cluster("all", (), ())


def load(scripts_dir: Path) -> Cluster:
    """ROOT/scripts/cluster.xml, or no groups when there is none."""
    path = scripts_dir / FILE_NAME
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return EMPTY
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read: {e.strerror}") from None
    return parse(data, str(path))


def parse(data: str | bytes, source: str) -> Cluster:
    root = read_tree(data, source, what="cluster.xml", hint=HINT)
    if root.tag != "xml":
        raise _error(source, root, f"the document element is <{root.tag}>, not <xml>")
    _only(source, root, {"master", "name", "override", "group"})
    name = _one_text(source, root, "name") or "all"
    groups: list[Group] = []
    for node in (c for c in root.children if c.tag == "group"):
        g = _group(source, node)
        if any(g.name == other.name for other in groups):
            raise _error(source, node, f"group {g.name!r} is defined twice")
        groups.append(g)
    ordered = sorted(enumerate(groups), key=lambda ig: (ig[1].priority is None,
                                                        ig[1].priority or 0, ig[0]))
    return Cluster(name, _overrides(source, root), tuple(g for _, g in ordered))


def overrides_for(cluster: Cluster, hostname: str | None, image: str,
                  existing: Path) -> tuple[str, ...]:
    """The client's overrides, most important first, as far as `existing`
    (ROOT/overrides) has them."""
    groups = cluster.groups_of(hostname)
    wanted: list[str] = []
    if hostname:
        wanted += [hostname, hostname.split(".")[0]]
    if groups:
        for g in groups:
            wanted.extend(g.overrides)
        wanted.extend(cluster.overrides)
    else:
        wanted.append(image)
    out: list[str] = []
    for o in wanted:
        if o not in out and is_name(o) and (existing / o).is_dir():
            out.append(o)
    return tuple(out)


def _group(source: str, node: Node) -> Group:
    _only(source, node, {"name", "priority", "image", "override", "node", "ip-range",
                         "domain"})
    name = _one_text(source, node, "name")
    if not name:
        raise _error(source, node, "a <group> has no <name>")
    _plain(source, node, name, "group name")
    priority = None
    raw = _one_text(source, node, "priority")
    if raw is not None:
        if not raw.isdigit():
            raise _error(source, node, f"group {name!r}: priority {raw!r} is not a whole "
                                       "number (lower is more important)")
        priority = int(raw)
    image = _one_text(source, node, "image")
    if image is not None:
        _plain(source, node, image, "image name")
    nodes: set[str] = set()
    for n in (c for c in node.children if c.tag == "node"):
        for item in n.text.split(","):
            if item.strip():
                nodes.update(_expand(source, n, item.strip()))
    return Group(name, priority, image, _overrides(source, node), frozenset(nodes))


def _expand(source: str, node: Node, item: str) -> list[str]:
    """One host name, or a numbered range of them."""
    first, sep, last = item.partition("-")
    a, b = _RANGE_END.match(first), _RANGE_END.match(last) if sep else None
    # node-a (a name with a '-') is a name, not a range: only two numbered
    # ends with one prefix make a range.
    if sep and a and b and a.group(1) == b.group(1) and "-" not in last:
        start, end = int(a.group(2)), int(b.group(2))
        if end < start:
            raise _error(source, node, f"node range {item!r} runs backwards")
        if end - start >= MAX_RANGE:
            raise _error(source, node, f"node range {item!r} names more than {MAX_RANGE:,} "
                                       "hosts")
        width = len(a.group(2)) if a.group(2).startswith("0") else 0
        names = [f"{a.group(1)}{i:0{width}d}" for i in range(start, end + 1)]
    else:
        names = [item]
    for h in names:
        if not is_hostname(h):
            raise _error(source, node, f"node {item!r} is not a host name or a range of "
                                       "them (node001-node010)")
    return [h.lower() for h in names]


def _overrides(source: str, node: Node) -> tuple[str, ...]:
    out = []
    for o in (c for c in node.children if c.tag == "override"):
        name = o.text.strip()
        if name:
            _plain(source, o, name, "override name")
            out.append(name)
    return tuple(out)


def _one_text(source: str, node: Node, tag: str) -> str | None:
    found = [c for c in node.children if c.tag == tag]
    if len(found) > 1:
        raise _error(source, found[1], f"<{node.tag}> has more than one <{tag}>")
    return found[0].text.strip() if found else None


def _only(source: str, node: Node, allowed: set[str]) -> None:
    for c in node.children:
        if c.tag not in allowed:
            raise _error(source, c, f"<{c.tag}> is not expected in <{node.tag}> (known: "
                                    f"{', '.join(sorted(allowed))})")


def _plain(source: str, node: Node, value: str, what: str) -> None:
    # Group, image and override names name directories and files on the
    # server: the image store's rule keeps them inside theirs.
    if not is_name(value):
        raise _error(source, node, f"{what} {value!r} is not a plain name ({NAME_HINT})")


def _error(source: str, node: Node, message: str) -> ConfigError:
    return ConfigError(f"{source}:{node.line}: {message}", hint=HINT)
