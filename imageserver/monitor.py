"""The monitor: collects the events clients report while they install.

Each client's events are appended to ROOT/log/<client>.jsonl (the install's
permanent record) and handed to subscribers, such as the console printer of
`sysclone serve` and `sysclone demo`.  The machine inventory an event
carries (agent.inventory, in the agent's `inventory` event) is also kept
on its own, the last one per client, in ROOT/log/<client>.inventory.json:
`sysclone clients show NAME` and `sysclone bootenv check --client NAME`
read it.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

Event = dict[str, Any]
Subscriber = Callable[[Event], None]

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def client_id(ev: Event) -> str:
    name = ev.get("hostname") or ev.get("mac") or ev.get("ip") or "unknown"
    return _SAFE.sub("_", str(name))[:64]


@dataclass
class ClientState:
    client: str
    phase: str = ""
    status: str = ""
    percent: int | None = None
    updated: float = 0.0
    error: str | None = None
    inventory_at: float | None = None  # when the last inventory arrived


@dataclass
class Monitor:
    log_dir: Path
    clients: dict[str, ClientState] = field(default_factory=dict)
    _subs: list[Subscriber] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def subscribe(self, fn: Subscriber) -> None:
        self._subs.append(fn)

    def record(self, ev: Event) -> None:
        ev = {**ev, "received": round(time.time(), 3)}
        cid = client_id(ev)
        with self._lock:
            st = self.clients.setdefault(cid, ClientState(cid))
            st.updated = ev["received"]
            if ev.get("phase"):
                st.phase = ev["phase"]
            if ev.get("status"):
                st.status = ev["status"]
            if "percent" in ev:
                st.percent = ev["percent"]
            if ev.get("kind") == "failed":
                st.error = ev.get("message")
            self.log_dir.mkdir(parents=True, exist_ok=True)
            if isinstance(ev.get("inventory"), dict):
                st.inventory_at = ev["received"]
                self._keep_inventory(cid, ev)
            with (self.log_dir / f"{cid}.jsonl").open("a") as f:
                f.write(json.dumps(ev, sort_keys=True) + "\n")
        for fn in list(self._subs):
            fn(ev)

    def _keep_inventory(self, cid: str, ev: Event) -> None:
        inv = {**ev["inventory"], "received": ev["received"],
               "install_nic": ev["inventory"].get("install_nic") or ev.get("mac")}
        path = inventory_path(self.log_dir, cid)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(inv, indent=1, sort_keys=True) + "\n")
        tmp.replace(path)

    def inventory(self, client: str) -> dict[str, Any] | None:
        return read_inventory(self.log_dir, client)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return [vars(s).copy() for s in self.clients.values()]


def read_events(path: Path) -> tuple[list[Event], int]:
    """A client's event log: its events, and how many lines are not one (a
    line cut short by a full disk or a crash while it was written, or one
    edited by hand): those are skipped, not fatal."""
    events: list[Event] = []
    bad = 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            ev = None
        if isinstance(ev, dict):
            events.append(ev)
        elif line.strip():
            bad += 1
    return events, bad


def inventory_path(log_dir: Path, client: str) -> Path:
    return log_dir / f"{_SAFE.sub('_', client)[:64]}.inventory.json"


def read_inventory(log_dir: Path, client: str) -> dict[str, Any] | None:
    """A client's last inventory, or None."""
    if not client:
        return None
    try:
        data = json.loads(inventory_path(log_dir, client).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def format_event(ev: Event) -> str | None:
    """One console line for an event, or None for noise."""
    who = client_id(ev)
    kind = ev.get("kind")
    if kind == "phase":
        if ev.get("status") == "start":
            return f"[{who}] {ev.get('phase')}: {ev.get('title', '')}".rstrip()
        if ev.get("status") == "done":
            return f"[{who}] {ev.get('phase')}: done in {ev.get('seconds', 0):.1f}s"
        return None
    if kind == "progress":
        pct = ev.get("percent")
        mib = ev.get("bytes", 0) / 2**20
        rate = ev.get("rate", 0) / 2**20
        p = f"{pct:3d}% " if pct is not None else ""
        return f"[{who}] {ev.get('phase')}: {p}{mib:,.0f} MiB at {rate:.1f} MiB/s"
    if kind == "failed":
        return f"[{who}] FAILED in {ev.get('phase')}: {ev.get('message')}"
    if kind in ("hello", "done", "info"):
        return f"[{who}] {ev.get('message', kind)}"
    return None
