"""Network boot switching, SystemImager's netbootmond: once a client reports
a finished install, its entry in every managed boot tree says "boot from
the local disk", so a machine left on network boot does not install again
at its next start.  `sysclone clients reinstall NAME` switches it back.

Managed trees are ROOT/pxe and those `sysclone media pxe --output DIR`
registered (ROOT/run/pxe-trees.json); trees made with --no-switch are
left alone, as are the demo's and the tests' (mkmedia.pxe.write_tree).
A finished install is a `done` event whose timings include the `finish`
phase (a dry run ends with `done` too, but never gets there), from a
client whose MAC the monitor knows.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkmedia import pxe
from mkmedia.clientkeys import mac_key
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot

log = logging.getLogger(__name__)

REGISTRY = "pxe-trees.json"
FINISH_PHASE = "finish"


def _registry(state: StateRoot) -> Path:
    return state.run / REGISTRY


def register_tree(state: StateRoot, tree: Path) -> None:
    """Have the switch manage `tree` (ROOT/pxe always is)."""
    path = tree.absolute()
    if path == state.pxe.absolute():
        return
    known = _registered(state)
    if str(path) in known:
        return
    state.run.mkdir(parents=True, exist_ok=True)
    tmp = _registry(state).with_name(f".{REGISTRY}.tmp")
    tmp.write_text(json.dumps(sorted({*known, str(path)}), indent=1) + "\n")
    os.replace(tmp, _registry(state))


def _registered(state: StateRoot) -> list[str]:
    f = _registry(state)
    if not f.is_file():
        return []
    try:
        data = json.loads(f.read_text())
    except ValueError:
        log.warning("%s is not JSON; no extra PXE trees are managed", f)
        return []
    return [str(p) for p in data if isinstance(p, str)] if isinstance(data, list) else []


def managed_trees(state: StateRoot) -> list[Path]:
    """Every managed tree that exists and says it switches."""
    out = []
    for p in [state.pxe, *map(Path, _registered(state))]:
        try:
            info = pxe.read_info(p)
        except Exception as e:  # one broken tree must not stop the others
            log.warning("PXE tree %s: %s", p, e)
            continue
        if info is not None and info.switch and p not in out:
            out.append(p)
    return out


def switch_to_local(state: StateRoot, mac: str, name: str | None) -> list[Path]:
    """Point the client's entries at the local disk; the trees changed."""
    key = mac_key(mac).name
    changed = []
    for tree in managed_trees(state):
        info = pxe.read_info(tree)
        assert info is not None
        old = info.clients.get(key)
        if old is not None and old.mode == "local":
            continue
        entry = pxe.ClientEntry(key, "local", old.append if old else None,
                                name or (old.name if old else None),
                                auto=old.auto if old else True)
        pxe.set_client(tree, entry, key)
        changed.append(tree)
    return changed


def client_macs(state: StateRoot, name: str) -> list[str]:
    """The MACs the monitor heard from client NAME (as `sysclone clients`
    lists it), or ConfigError naming the known clients."""
    from imageserver.monitor import client_id

    logs = state.logs
    known = sorted(p.name.removesuffix(".jsonl") for p in logs.glob("*.jsonl")) \
        if logs.is_dir() else []
    f = logs / f"{client_id({'hostname': name})}.jsonl"
    if client_id({"hostname": name}) != name or not f.is_file():
        raise ConfigError(f"unknown client {name!r}",
                          hint="known clients: " + (", ".join(known) or "none yet"))
    macs: list[str] = []
    for ev in _events(f):
        mac = ev.get("mac")
        if isinstance(mac, str) and mac.lower() not in macs:
            try:
                macs.append(mac_key(mac).mac or mac.lower())
            except ConfigError:
                continue
    if not macs:
        raise ConfigError(f"client {name!r} never reported its MAC address",
                          hint="its entries can be set by MAC with `sysclone media pxe --client`")
    return macs


def _events(f: Path) -> Iterator[dict[str, Any]]:
    for line in f.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict):
            yield ev


def reinstall(state: StateRoot, name: str) -> list[tuple[Path, str]]:
    """Make client NAME install again at its next network boot: (tree,
    entry key) for each entry changed."""
    macs = client_macs(state, name)
    trees = managed_trees(state)
    if not trees:
        raise ConfigError("no PXE tree switches clients to their local disk",
                          hint="write one with `sysclone media pxe`")
    changed = []
    for tree in trees:
        info = pxe.read_info(tree)
        assert info is not None
        for mac in macs:
            key = mac_key(mac).name
            old = info.clients.get(key)
            if old is None or old.mode == "install":
                continue
            if old.auto and old.append is None:
                pxe.set_client(tree, None, key)  # the default entry applies again
            else:
                pxe.set_client(tree, pxe.ClientEntry(key, "install", old.append, old.name,
                                                     old.auto), key)
            changed.append((tree, key))
    return changed


class NetbootSwitch:
    """Subscribed to the monitor by the API server: acts on finished installs."""

    def __init__(self, state: StateRoot) -> None:
        self.state = state

    def on_event(self, ev: dict[str, Any]) -> None:
        if ev.get("kind") != "done" or FINISH_PHASE not in (ev.get("timings") or {}):
            return
        mac = ev.get("mac")
        if not isinstance(mac, str):
            return
        try:
            trees = switch_to_local(self.state, mac, ev.get("hostname"))
        except Exception as e:  # the install succeeded; never fail the monitor for this
            log.warning("network boot switch for %s failed: %s", mac, e)
            return
        for t in trees:
            log.info("client %s (%s): network boot now boots its local disk (%s)",
                     ev.get("hostname") or "?", mac, t)
