"""Read a golden client's facts (disks, mounts, modules) before capturing.

Over SSH the fact script of prepare.golden runs in one session with the
client's own /bin/sh; from a `client prepare` export the facts it wrote
are fetched from its `MODULE-facts` module; a local directory has only the
server's own mount list, for what is mounted below it.  Either way a
source that cannot be reached fails here, before any staging exists.
"""

from __future__ import annotations

import functools
import json
import secrets
import tempfile
from collections.abc import Collection
from pathlib import Path
from typing import Any

from imageserver.prepare.golden import FACTS, fact_script, parse_fact_stream
from imageserver.sources import DaemonSource, LocalSource, Source, SshSource
from imageserver.transfer import CaptureError, explain, run_rsync
from sysclone.background import in_background
from sysclone.run import run

PROBE_TIMEOUT = 180

# What a capture over SSH needs before its pull: that rsync is there, the
# mounts (what to skip) and the disks' use (is there room).  The rest of
# FACTS (partition tables, blkid, RAID, LVM, modules...) is read beside the
# pull over the same connection (RestOfFacts): over a 1 Gbit/s link, the
# first session took 0.19 s instead of 0.22 (the login is 0.18 of either).
BEFORE_PULL = ("rsync", "lsblk", "findmnt")


def ssh_facts(src: SshSource, names: Collection[str] | None = None, *, master: bool = True
              ) -> dict[str, Any]:
    """The facts (those `names`, else all) from the client's own /bin/sh;
    `master`: this login is the connection the capture's others share."""
    nonce = secrets.token_hex(8)
    argv = [*src.ssh_argv(master=master), src.host, "/bin/sh", "-s"]
    res = run(argv, input=fact_script(nonce, names), check=False, timeout=PROBE_TIMEOUT)
    if res.returncode == 255 or f"@@{nonce} out" not in res.stdout:
        raise explain(res.returncode, (res.stderr or res.stdout).splitlines(),
                      f"cannot read the golden client {src.describe()}")
    facts = parse_fact_stream(res.stdout, nonce)
    if (names is None or "rsync" in names) and (facts.get("rsync") or {}).get("rc") != 0 \
            and not src.rsync_path:
        raise CaptureError(f"rsync is not installed on the golden client {src.describe()}",
                           hint="install it there (apt-get install rsync)")
    return facts


def daemon_facts(src: DaemonSource, password_file: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="sysclone-facts.") as tmp:
        argv = ["rsync", f"--password-file={password_file}", "--timeout=60",
                src.url(src.facts_module, "facts.json"), f"{tmp}/"]
        run_rsync(argv, f"cannot read the golden client {src.describe()}")
        try:
            facts: dict[str, Any] = json.loads(Path(tmp, "facts.json").read_text())
        except (OSError, ValueError) as e:
            raise CaptureError(f"{src.describe()}: the facts it exports are unreadable: "
                               f"{e}") from None
    return facts


def local_facts(src: LocalSource) -> dict[str, Any]:
    """This machine's mounts below the directory, as if it were a client's /."""
    res = run(["findmnt", "-J", "-l", "-o", "TARGET,SOURCE,FSTYPE,OPTIONS,FSROOT,MAJ:MIN"],
              check=False)
    mounts = json.loads(res.stdout or "{}").get("filesystems") or [] \
        if res.returncode == 0 else []
    base = str(src.path).rstrip("/")
    below = []
    for m in mounts:
        t = str(m.get("target") or "")
        if t == base or t.startswith(base + "/"):
            below.append({**m, "target": t[len(base):] or "/"})
    if not any(m["target"] == "/" for m in below):
        # Not a mount point itself: its root is a plain directory.
        below.insert(0, {"target": "/", "source": "none", "fstype": "none", "fsroot": "/"})
    return {"findmnt": {"rc": 0, "out": json.dumps({"filesystems": below}), "err": ""}}


class RestOfFacts:
    """The facts of an SSH client that BEFORE_PULL left out, read in a
    thread while the pull runs; result() waits for them."""

    def __init__(self, src: SshSource, have: Collection[str]) -> None:
        self.names = [n for n, _ in FACTS if n not in have]
        # Through the first login's connection, never a master itself: a
        # second one would log in again, and one made after the capture
        # closed the first would stay behind.
        self.result = in_background(
            functools.partial(ssh_facts, src, self.names, master=False), "facts")


def read_facts(src: Source, password_file: Path | None, *, before_pull: bool = False
               ) -> dict[str, Any]:
    """The client's facts; `before_pull`: over SSH only BEFORE_PULL's."""
    if isinstance(src, SshSource):
        return ssh_facts(src, BEFORE_PULL if before_pull else None)
    if isinstance(src, DaemonSource):
        assert password_file is not None
        return daemon_facts(src, password_file)
    return local_facts(src)
