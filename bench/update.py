"""updateclient benchmarks, each next to a plain rsync of the same trees in
the same run:

  noop     updating a client that is already on the version: bytes on the
           wire per file and time, vs `rsync -aHAXS --delete` of the same
           module with the same excludes     <= 50 bytes per file, <= 1.1x
           (time: the median of alternated pairs' ratios; updateclient as
           a machine that updates regularly runs it: the served zipapp,
           /v1/client/updateclient.pyz; the plain script's time, compiled
           at every run, is reported beside it)
  change   updating a client to a version with 1 % of its files changed:
           bytes per file and time, vs the same plain rsync (reported; the
           update also keeps a rollback point and stages before applying)

    python -m bench.update [--rounds N] [--json FILE]

The image is the debootstrapped demo image from $SYSCLONE_CACHE if one is
cached, else a copy of /usr/share (bench.golden.realistic_tree), stored
twice with `capture` (the second time with 1 % of its files changed); the
image server (rsync daemon + API) runs on loopback and the clients are
local trees (updateclient --root).  Needs root.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imageserver.capture import CaptureOptions, capture
from imageserver.names import ImageRef
from imageserver.serve import Running, ServeConfig, free_port, serving
from imageserver.sources import LocalSource
from imageserver.store import ImageStore
from imageserver.updateclient import SCRIPT, ZIPAPP_PATH, client
from sysclone.paths import StateRoot
from sysclone.run import run

IMAGE = "bench-update"
CHANGE = 0.01
TARGETS = {"noop_bytes_per_file": 50.0, "noop_time": 1.1}
# Kernel files are left alone: a changed kernel makes the update rebuild
# initrds, which is not what this measures.
_UNTOUCHED = re.compile(r"^(boot|(usr/)?lib/modules)/")


@dataclass(frozen=True)
class UpdateLab:
    state: StateRoot
    server: Running
    app: Path  # the served zipapp, as the client keeps it
    updated: Path  # the client updateclient updates
    plain: Path  # the client plain rsync updates
    files: int  # entries in the image (what rsync lists)
    tree: str  # what the image is, for the report
    changed: int  # files changed in version 2


def _files(tree: Path) -> int:
    return sum(len(f) + len(d) for _, d, f in os.walk(tree))


def change_files(tree: Path, share: float = CHANGE, seed: int = 42) -> int:
    """Append to `share` of the regular files (not kernels); their times
    move on, as a package upgrade's would."""
    files = [p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
             and not _UNTOUCHED.match(str(p.relative_to(tree)))]
    rnd = random.Random(seed)
    chosen = rnd.sample(files, max(1, int(len(files) * share)))
    later = time.time() + 86400
    for p in chosen:
        if p.stat().st_nlink > 1:
            continue  # a hard link's other names would change with it
        with p.open("ab") as f:
            f.write(rnd.randbytes(64))
        os.utime(p, (later, later))
    return len(chosen)


@contextmanager
def update_lab(work: Path, cache: Path) -> Iterator[UpdateLab]:
    from bench.golden import realistic_tree

    state = StateRoot.from_options(work / "state", cache)
    src = work / "src"
    src.mkdir()
    what = realistic_tree(src, cache)
    capture(state, CaptureOptions(IMAGE, LocalSource(src)))
    changed = change_files(src)
    capture(state, CaptureOptions(IMAGE, LocalSource(src)))
    v1 = ImageStore(state).tree(ImageRef(IMAGE, 1))
    clients = []
    for name in ("updated", "plain"):
        c = work / name
        run(["rsync", "-aHAXS", "--numeric-ids", f"{v1}/", f"{c}/"])
        clients.append(c)
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port())
    with serving(state, cfg) as srv:
        app = work / "updateclient.pyz"
        with urllib.request.urlopen(f"http://127.0.0.1:{srv.api.port}{ZIPAPP_PATH}",
                                    timeout=30) as resp:
            app.write_bytes(resp.read())
        yield UpdateLab(state, srv, app, clients[0], clients[1], _files(v1), what, changed)


def excludes() -> list[str]:
    """The plain rsync gets updateclient's default excludes: the same trees."""
    return [f"--exclude={p}" for p, _ in client.DEFAULT_EXCLUDES]


# The client's own Python, as a client runs the served script.
CLIENT_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def updateclient(lab: UpdateLab, version: int, program: Path | None = None
                 ) -> tuple[float, int, dict[str, Any]]:
    """One run of the zipapp (or `program`, the plain script)."""
    argv = [CLIENT_PYTHON, str(program or lab.app), "--server", "127.0.0.1", "--port",
            str(lab.server.api.port), "--image", f"{IMAGE}@{version}", "--root",
            str(lab.updated), "--hostname", "bench", "--no-health-check", "--no-report",
            "--json"]
    t0 = time.monotonic()
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - t0
    if r.returncode != 0:
        raise RuntimeError(f"updateclient failed: {r.stderr.strip()}")
    result = json.loads(r.stdout.strip().splitlines()[-1])
    return seconds, int(result["bytes_sent"]) + int(result["bytes_received"]), result


def plain_rsync(lab: UpdateLab, version: int) -> tuple[float, int]:
    url = f"rsync://127.0.0.1:{lab.server.config.rsync_port}/{IMAGE}@{version}/"
    t0 = time.monotonic()
    r = run(["rsync", "-aHAXS", "--numeric-ids", "--delete", "--stats", *excludes(), url,
             f"{lab.plain}/"])
    seconds = time.monotonic() - t0
    wire = client.Wire()
    wire.add(r.stdout)
    return seconds, wire.sent + wire.received


def noop(lab: UpdateLab, rounds: int = 11) -> dict[str, Any]:
    """Both clients on version 1 already.  The runs alternate in pairs, the
    pair's order swapped every round (A B, B A, ...), and the time ratio is
    the median of the pairs' ratios: neighbours in time share the machine's
    state, and one lucky or unlucky run cannot move a median (the ratio of
    the two bests, which it can, is reported beside it).  Bytes are the
    last run's."""
    ours, theirs, script = [], [], []
    for i in range(rounds):
        if i % 2:
            theirs.append(plain_rsync(lab, 1))
        ours.append(updateclient(lab, 1)[:2])
        if not i % 2:
            theirs.append(plain_rsync(lab, 1))
        script.append(updateclient(lab, 1, SCRIPT)[0])
    u_best, p_best = min(t for t, _ in ours), min(t for t, _ in theirs)
    p_median, s_median = statistics.median(t for t, _ in theirs), statistics.median(script)
    u_b, p_b = ours[-1][1], theirs[-1][1]
    pairs = sorted(u / p for (u, _), (p, _) in zip(ours, theirs, strict=True))
    return {"files": lab.files, "tree": lab.tree, "rounds": rounds,
            "update_s": round(statistics.median(t for t, _ in ours), 3),
            "rsync_s": round(p_median, 3),
            "time_ratio": round(statistics.median(pairs), 3),
            "pair_ratios": [round(r, 3) for r in pairs],
            "best_update_s": round(u_best, 3), "best_rsync_s": round(p_best, 3),
            "best_ratio": round(u_best / p_best, 3),
            "script_s": round(s_median, 3), "script_ratio": round(s_median / p_median, 3),
            "update_bytes_per_file": round(u_b / lab.files, 1),
            "rsync_bytes_per_file": round(p_b / lab.files, 1)}


def change(lab: UpdateLab) -> dict[str, Any]:
    """Both clients from version 1 to 2 (1 % of the files changed)."""
    u_s, u_b, result = updateclient(lab, 2)
    p_s, p_b = plain_rsync(lab, 2)
    return {"files": lab.files, "changed_files": lab.changed, "changes": result["changes"],
            "update_s": round(u_s, 3), "rsync_s": round(p_s, 3),
            "time_ratio": round(u_s / p_s, 3),
            "update_bytes_per_file": round(u_b / lab.files, 1),
            "rsync_bytes_per_file": round(p_b / lab.files, 1)}


def run_all(cache: Path, rounds: int = 11) -> dict[str, Any]:
    """Both rows, in one run; for `python -m bench`."""
    with tempfile.TemporaryDirectory(prefix="sysclone-bench-update.") as work, \
            update_lab(Path(work), cache) as lab:
        return {"noop": noop(lab, rounds), "change": change(lab)}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.update", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=11,
                    help="no-op pairs, alternated (default 11)")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    cache = Path(os.environ.get("SYSCLONE_CACHE") or "/var/cache/sysclone")
    res = run_all(cache, max(1, a.rounds))
    n, c = res["noop"], res["change"]
    ok_b = n["update_bytes_per_file"] <= TARGETS["noop_bytes_per_file"]
    ok_t = n["time_ratio"] <= TARGETS["noop_time"]
    print(f"update no-op   {n['update_bytes_per_file']:6.1f} B/file (rsync "
          f"{n['rsync_bytes_per_file']:.1f})  target <= 50  {'PASS' if ok_b else 'MISS'}")
    print(f"update no-op   {n['time_ratio']:6.2f}x time (median of {n['rounds']} pairs; "
          f"medians {n['update_s']:.3f}s vs rsync {n['rsync_s']:.3f}s, best of each "
          f"{n['best_ratio']:.2f}x)  target <= 1.1  {'PASS' if ok_t else 'MISS'}   "
          f"{n['files']} files, {n['tree']}")
    print(f"update no-op   {n['script_ratio']:6.2f}x time as the plain script "
          f"({n['script_s']:.2f}s: compiled at every run)")
    print(f"update 1 %     {c['time_ratio']:6.2f}x time ({c['update_s']:.2f}s vs rsync "
          f"{c['rsync_s']:.2f}s), {c['update_bytes_per_file']:.1f} B/file (rsync "
          f"{c['rsync_bytes_per_file']:.1f}), {c['changes']} changes")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
