"""What a client is told to install: image, disk layout, overrides, params.

Per-client files are looked up the way SystemImager 4.9 does: by host name,
then group name, then base host name (node01 -> node), then image name,
then `default` (see shared/compat/README.md); a layout is NAME.xml
(SystemImager XML) or NAME.toml (its TOML form), XML first.  A captured
image brings its golden client's layout (its version's layout.xml): it
comes after the scripts directory's `<image>.xml` and before `default.xml`.
No layout at all means the agent uses its built-in default layout for its
firmware.

Pre-/post-install scripts and the network configuration come along, chosen
by the same names (imageserver.clientfiles).

A client gets the image's current version unless it names one (IMAGENAME=
web@3); the instructions name the version and the rsync module that holds
exactly it (`web@3`), so a rollback during an install cannot mix versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageserver.lookup import candidates, find_file
from imageserver.names import ImageRef
from imageserver.store import ImageStore
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

LAYOUT_DIR = "disks-layouts"
# A layout is SystemImager XML or its TOML form; for one name, XML first.
LAYOUT_SUFFIXES = (".xml", ".toml")
API_VERSION = 1


def layout_file(path: Path) -> dict[str, Any]:
    """A layout as the instructions carry it: the agent parses `text` in
    `format` (agent.storage.layoutfile)."""
    fmt = "toml" if path.suffix == ".toml" else "systemimager-xml"
    return {"name": path.name, "format": fmt, "text": path.read_text()}


@dataclass(frozen=True)
class ClientQuery:
    hostname: str | None
    mac: str | None
    image: str | None
    layout: str | None = None  # si.disks-layout asked by the client
    network_config: str | None = None  # si.network-config asked by the client
    script: str | None = None  # si.script-name: an extra class of scripts


@dataclass(frozen=True)
class ServerPolicy:
    rsync_port: int
    default_image: str | None = None
    post_action: str | None = None  # overrides the client's when set


def resolve(state: StateRoot, q: ClientQuery, policy: ServerPolicy,
            store: ImageStore | None = None) -> dict[str, Any]:
    """The instructions for one client, or ConfigError (sent as 404/400)."""
    from imageserver import cluster as clusterlib

    store = store or ImageStore(state)
    # cluster.xml: the client's groups, the image its group names, overrides.
    cluster = clusterlib.load(state.scripts)
    groups = cluster.group_names(q.hostname)
    wanted = q.image or cluster.image_for(q.hostname) or policy.default_image
    if not wanted:
        raise ConfigError("no image named for this client",
                          hint="pass IMAGENAME= on the kernel command line, name one for its "
                               "group in cluster.xml or set a default image on the server")
    ref = ImageRef.parse(wanted)
    image = ref.name
    info = store.info(ref)  # raises "unknown image" with the known ones
    version = info.version
    layout_dir = state.scripts / LAYOUT_DIR
    layout: dict[str, Any] | None = None
    if q.layout:
        p = layout_dir / Path(q.layout).name
        found = p if p.is_file() else find_file(layout_dir, [q.layout], LAYOUT_SUFFIXES)
        if not found:
            raise ConfigError(f"disks layout {q.layout!r} not found in {layout_dir}")
        layout = layout_file(found)
    else:
        names = [n for n in candidates(q.hostname, groups, image) if n != "default"]
        found = find_file(layout_dir, names, LAYOUT_SUFFIXES)
        captured = store.versions.version_dir(image, version) / "layout.xml" \
            if version is not None else None
        if found is None and captured is not None and captured.is_file():
            layout = {"name": f"{image}@{version}/layout.xml", "format": "systemimager-xml",
                      "text": captured.read_text()}
        else:
            found = found or find_file(layout_dir, ["default"], LAYOUT_SUFFIXES)
            if found:
                layout = layout_file(found)
    usage = info.usage
    # Pre/post-install scripts and the network configuration, chosen by the
    # same names (imageserver.clientfiles), cluster.xml's groups among them.
    from imageserver import clientfiles, fetchorder, sparsefiles

    scripts = clientfiles.scripts_for(state.scripts, q.hostname, groups, image, q.script)
    network = clientfiles.network_config_for(state.scripts, q.hostname, groups, image,
                                             q.network_config, store.tree(ref))
    return {
        "version": API_VERSION,
        "hostname": q.hostname,
        "image": {
            "name": image, "version": version,
            "module": image if version is None else f"{image}@{version}",
            "rsync_port": policy.rsync_port,
            "bytes": usage.bytes if usage else None, "files": usage.files if usage else None,
            "transfer_bytes": usage.transfer if usage else None,
            "usage": usage.by_dir if usage else {},
            # What the agent may fetch while it configures (imageserver.fetchorder).
            "deferred": list(fetchorder.deferred(store.tree(ref)) if version is None
                             else fetchorder.deferred_of_version(store.tree(ref))),
            # The only files the agent fetches with rsync -S, or "all"
            # (imageserver.sparsefiles).
            "sparse": (sparsefiles.sparse_files(store.tree(ref)) if version is None
                       else sparsefiles.sparse_of_version(store.tree(ref))).instructions(),
        },
        "layout": layout,
        # Most important first; each is served as rsync module override.NAME.
        "overrides": list(clusterlib.overrides_for(cluster, q.hostname, image,
                                                   state.overrides)),
        "groups": list(groups),
        "scripts": scripts,
        "network_config": network,
        "params": {"si.post-action": policy.post_action} if policy.post_action else {},
    }
