"""Read a golden client's facts (disks, mounts, modules) before capturing.

Over SSH the fact script of prepare.golden runs in one session with the
client's own /bin/sh; from a `client prepare` export the facts it wrote
are fetched from its `MODULE-facts` module; a local directory has only the
server's own mount list, for what is mounted below it.  Either way a
source that cannot be reached fails here, before any staging exists.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from pathlib import Path
from typing import Any

from imageserver.prepare.golden import fact_script, parse_fact_stream
from imageserver.sources import DaemonSource, LocalSource, Source, SshSource
from imageserver.transfer import CaptureError, explain, run_rsync
from sysclone.run import run

PROBE_TIMEOUT = 180


def ssh_facts(src: SshSource) -> dict[str, Any]:
    nonce = secrets.token_hex(8)
    argv = [*src.ssh_argv(master=True), src.host, "/bin/sh", "-s"]
    res = run(argv, input=fact_script(nonce), check=False, timeout=PROBE_TIMEOUT)
    if res.returncode == 255 or f"@@{nonce} out" not in res.stdout:
        raise explain(res.returncode, (res.stderr or res.stdout).splitlines(),
                      f"cannot read the golden client {src.describe()}")
    facts = parse_fact_stream(res.stdout, nonce)
    if (facts.get("rsync") or {}).get("rc") != 0 and not src.rsync_path:
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


def read_facts(src: Source, password_file: Path | None) -> dict[str, Any]:
    if isinstance(src, SshSource):
        return ssh_facts(src)
    if isinstance(src, DaemonSource):
        assert password_file is not None
        return daemon_facts(src, password_file)
    return local_facts(src)
