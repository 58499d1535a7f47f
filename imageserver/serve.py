"""`sysclone serve`: the rsync daemon plus the HTTP API, run together."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from imageserver.api import ApiServer
from imageserver.instructions import ServerPolicy
from imageserver.monitor import Monitor
from imageserver.rsyncd import Rsyncd, RsyncdConfig
from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot

log = logging.getLogger(__name__)
WATCH_SECONDS = 1.0


@dataclass(frozen=True)
class ServeConfig:
    address: str = "127.0.0.1"
    rsync_port: int = 873
    http_port: int = 8181
    default_image: str | None = None
    post_action: str | None = None
    hosts_allow: tuple[str, ...] = ()


@dataclass(frozen=True)
class Running:
    config: ServeConfig
    monitor: Monitor
    api: ApiServer
    rsyncd: Rsyncd


def free_port(address: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and the demo)."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


@contextmanager
def _serve_lock(state: StateRoot) -> Iterator[None]:
    """One server per state root: two would rewrite each other's rsyncd.conf
    (their ports differ) every second."""
    import fcntl

    state.run.mkdir(parents=True, exist_ok=True)
    with (state.run / "serve.lock").open("w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SyscloneError(f"another `sysclone serve` already serves {state.root}",
                                hint="stop it, or use another --root") from None
        yield


@contextmanager
def serving(state: StateRoot, cfg: ServeConfig, monitor: Monitor | None = None
            ) -> Iterator[Running]:
    with _serve_lock(state), _serving(state, cfg, monitor) as running:
        yield running


@contextmanager
def _serving(state: StateRoot, cfg: ServeConfig, monitor: Monitor | None
             ) -> Iterator[Running]:
    monitor = monitor or Monitor(state.logs)
    policy = ServerPolicy(rsync_port=cfg.rsync_port, default_image=cfg.default_image,
                          post_action=cfg.post_action)
    try:
        api = ApiServer((cfg.address, cfg.http_port), state, policy, monitor)
    except OSError as e:
        raise SyscloneError(f"cannot listen on {cfg.address}:{cfg.http_port}: {e.strerror}",
                            hint="choose another port with --http-port") from None
    rsyncd = Rsyncd(state, RsyncdConfig(cfg.address, cfg.rsync_port, cfg.hosts_allow))
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_store, args=(rsyncd, stop), name="store-watch",
                               daemon=True)
    try:
        rsyncd.start()
        api.start()
        watcher.start()
        yield Running(cfg, monitor, api, rsyncd)
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join(5)
        api.stop()
        rsyncd.stop()


def _watch_store(rsyncd: Rsyncd, stop: threading.Event) -> None:
    """Keep rsyncd.conf in step with the store: a capture, rollback, prune
    or rename while serving is exported (NAME, NAME@N) within a second."""
    while not stop.wait(WATCH_SECONDS):
        try:
            if rsyncd.refresh():
                log.info("image store changed: rsyncd.conf rewritten")
        except OSError as e:  # a store half-way through a rename: next time
            log.debug("rsyncd.conf not refreshed: %s", e)
