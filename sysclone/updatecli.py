"""`sysclone updateclient` and `sysclone push-update`.

`updateclient` runs, on a machine where sysclone is installed, the same
code the image server hands to clients (imageserver/updateclient/client.py);
for --autoinstall it reads the live network with pyroute2 and, where they
run, NetworkManager or systemd-networkd over D-Bus (sysclone.livenet)
rather than with iproute2.  `push-update` (si_pushupdate) runs it on many
clients over SSH.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from sysclone.ui import Ui, print_table

Add = Callable[..., argparse.ArgumentParser]


def cmd_updateclient(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    import json

    from imageserver.updateclient import client

    problem = client.check_args(a)
    if problem:
        # 2, as the served client exits for bad usage (and the README says).
        raise ConfigError(problem, status=2)
    if a.rollback:
        _refuse_rollback_early(a)
    network = None
    check = None
    if a.autoinstall:
        from sysclone.livenet import read_live_network
        from sysclone.mediacli import check_install_params

        network = read_live_network().to_dict()
        check = check_install_params  # the installer's own parser, before any reboot
    try:
        result = client.dispatch(a, network, check)
    except client.UpdateError as e:
        raise SyscloneError(e.message, hint=e.hint or None, status=e.status) from None
    if a.json:
        print(json.dumps(result, sort_keys=True))
    return 0


def _refuse_rollback_early(a: argparse.Namespace) -> None:
    """A --rollback with nothing to roll back is refused before the client
    takes its lock: a refused command writes nothing (the lock would create
    var/lib/sysclone/updateclient under --system-root)."""
    import os

    from imageserver.updateclient import client

    root = os.path.abspath(a.system_root)
    point = os.path.join(root, client.STATE_DIR, "rollback")
    # Not root, or no such root: the client refuses that first, writing nothing.
    if os.geteuid() == 0 and os.path.isdir(root) \
            and not os.path.isfile(os.path.join(point, "point.json")):
        try:
            client.RollbackPoint.load(point)
        except client.UpdateError as e:
            raise SyscloneError(e.message, hint=e.hint or None, status=e.status) from None


def cmd_push_update(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from sysclone import pushupdate

    targets = [pushupdate.parse_target(t) for t in a.clients]
    if not a.server:
        raise ConfigError("--server SERVER is required: the image server as the clients "
                          "reach it")
    opts = pushupdate.PushOptions.from_namespace(a)
    ui.info(f"==> updating {len(targets)} clients, {opts.concurrency} at a time")
    results = pushupdate.push(targets, opts, on_result=lambda r: ui.info("    " + r.line()))
    print_table([r.row() for r in results], list(pushupdate.PushResult.COLUMNS))
    failed = [r for r in results if r.status != "ok"]
    ui.info(f"{len(results) - len(failed)} of {len(results)} clients updated"
            + (f"; failed: {', '.join(r.target.name for r in failed)}" if failed else ""))
    return 1 if failed else 0


def add_update_commands(sub: Any, add: Add) -> None:
    from imageserver.updateclient import client
    from sysclone.pushupdate import add_arguments as push_arguments

    p = add(sub, "updateclient", cmd_updateclient,
            client.DESCRIPTION + " Clients without sysclone get the same code from the image "
            "server: curl -fsS http://SERVER:8181/v1/client/updateclient.py | python3 - "
            "--server SERVER")
    client.add_arguments(p, root_flag="--system-root")
    p = add(sub, "push-update", cmd_push_update,
            "run updateclient on many clients over SSH, some at a time, and summarize "
            "(SystemImager's si_pushupdate)")
    push_arguments(p)
