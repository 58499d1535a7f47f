"""Install benchmark: the agent's install of an image, next to the same
work done without it, in the same VM (same kernel, CPU, memory, disk,
network), in the same run:

  raw rsync    `rsync -aHAX` of the image onto a fresh ext4 (the limit)
  same rsync   the agent's own rsync command lines for the whole image, bare,
               one after the other: the bulk without -S, then the image's
               sparse files with it (or one -S run of everything when the
               server names none) (transfer ratio)
  scripted     sfdisk, mkfs, rsync -aHAX, grub-install, update-grub: what
               an admin types by hand (sysclone's own overhead)

The baselines boot environments whose /init is a shell script
(bench.baseline.SCRIPT_INIT); the agent never has a benchmark mode.
"""

from __future__ import annotations

import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.markers import DONE_MARKER
from bench.baseline import BENCH_DONE, BENCH_FAILED, SCRIPT_INIT
from bench.pagecache import warm_tree
from ci.qemu import INSTALLER_ARGS, Vm, blank_disk
from sysclone.demo import INSTALL_FAILED, install_append, pxe_vm
from sysclone.paths import StateRoot

DISK_BYTES = 4 << 30
TIMEOUT = 3600


@dataclass(frozen=True)
class InstallRun:
    seconds: float  # wall clock, agent start to done
    from_network: float  # from the network being up to done
    timings: dict[str, float]
    initrd: dict[str, Any]
    vm_seconds: float
    fetch_span: float  # from the first rsync's start to the last one's end


FETCH_PHASES = ("fetch", "fetch-rest")


def fetch_span(events: list[dict[str, Any]]) -> float:
    """The agent's transfer, by the clock: from the start of its first
    fetch phase to the end of its last (fetch-rest may run beside fetch,
    or after it beside the configuration), from the phases' own events."""
    marks = [(e["status"], float(e["ts"])) for e in events
             if e.get("kind") == "phase" and e.get("phase") in FETCH_PHASES]
    starts = [t for status, t in marks if status == "start"]
    ends = [t for status, t in marks if status == "done"]
    if not starts or len(ends) != len(starts):
        raise RuntimeError(f"the agent's fetch phases did not all end: {marks}")
    return max(ends) - min(starts)


@dataclass(frozen=True)
class BaselineRun:
    mode: str
    seconds: float  # from the network being up
    rsync: float


def build_baseline_bootenv(state: StateRoot, out: Path) -> Path:
    from bootenv import tools
    from bootenv.standard import build_bootenv
    from sysclone.ui import Ui

    build_bootenv(state, Ui(quiet=True), output=out, init_script=SCRIPT_INIT,
                  tool_groups=(*tools.DEFAULT_TOOLS, "debug"))
    return out


def warm_image(state: StateRoot, image: str) -> None:
    """Read the served image once on the host, before each VM run: each
    then starts with it in the server's page cache.  The agent ran first in
    each round, and its fetch phase took 8.2 s where back-to-back installs
    took 5.9-6.8 s: reading what the baselines after it then found cached
    (bench.pagecache says why it goes cold in between)."""
    from imageserver.names import ImageRef
    from imageserver.store import ImageStore

    warm_tree(ImageStore(state).tree(ImageRef.parse(image)))


def run_agent(state: StateRoot, bootenv: Path, image: str, memory: int = 512) -> InstallRun:
    from imageserver.serve import ServeConfig, free_port, serving

    events: list[dict[str, Any]] = []
    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port(), default_image=image)
    disk = blank_disk(state.vms / "bench-agent.img", DISK_BYTES)
    warm_image(state, image)
    with serving(state, cfg) as srv:
        srv.monitor.subscribe(events.append)
        append = install_append("bench-node", image, cfg.http_port, cfg.rsync_port, "poweroff")
        spec = pxe_vm(state, "bench-agent", bootenv, disk, append, memory_mib=memory)
        t0 = time.monotonic()
        with Vm(spec) as vm:
            vm.wait_for(DONE_MARKER, TIMEOUT, fail=INSTALL_FAILED)
            vm.wait_exit(300)
        vm_s = time.monotonic() - t0
    done = next(e for e in events if e.get("kind") == "done")
    timings = done["timings"]
    before = timings.get("hardware", 0) + timings.get("network", 0)
    initrd = next((e for e in events if e.get("kind") == "initrd"), {})
    return InstallRun(done["seconds"], done["seconds"] - before, timings,
                      {k: initrd.get(k) for k in ("action", "reasons")}, vm_s,
                      fetch_span(events))


def agent_rsyncs(url: str, sparse: tuple[str, ...] | None, target: str = "/sysroot"
                 ) -> list[list[str]]:
    """The rsync command lines the agent runs for the whole image at `url`,
    built by agent.fetch as the agent's are, one after the other: the
    bulk, without -S when the server named the sparse files (`sparse`),
    then those with -S.  The agent leaves its deferred directories out of
    the bulk and fetches them beside the configuration: here they come
    with the bulk, as one transfer."""
    from agent import fetch

    runs = [fetch.all_but((), sparse)] + ([fetch.sparse_only(url, sparse)] if sparse else [])
    return [r.argv(url, target) for r in runs]


def rsyncs_disk(path: Path, argvs: list[list[str]]) -> Path:
    """`argvs` as shell lines on a small raw disk, padded with NULs (the
    baseline's /init strips them): too long for a kernel command line."""
    text = "".join(f"{shlex.join(a)} >/dev/null || fail rsync\n" for a in argvs).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text + b"\0" * (-len(text) % 512))
    return path


def _agent_rsyncs(state: StateRoot, image: str, rsync_port: int) -> list[list[str]]:
    """agent_rsyncs() of what the server's instructions say of `image`."""
    from agent.fetch import rsync_url
    from agent.plan import SPARSE_ALL
    from imageserver.instructions import ClientQuery, ServerPolicy, resolve

    img = resolve(state, ClientQuery("bench-node", None, image),
                  ServerPolicy(rsync_port=rsync_port))["image"]
    sparse = img.get("sparse")
    return agent_rsyncs(rsync_url("10.0.2.2", rsync_port, img["module"]),
                        None if sparse in (None, SPARSE_ALL) else tuple(sparse))


def run_baseline(state: StateRoot, bootenv: Path, image: str, mode: str,
                 memory: int = 512) -> BaselineRun:
    from agent.plan import default_swap_mib
    from imageserver.serve import ServeConfig, free_port, serving

    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port(), default_image=image)
    disk = blank_disk(state.vms / f"bench-{mode}.img", DISK_BYTES)
    swap = default_swap_mib(DISK_BYTES, memory << 20)
    more: tuple[Path, ...] = ()
    if mode == "rsync-agent-flags":
        more = (rsyncs_disk(state.vms / f"bench-{mode}.rsyncs.img",
                            _agent_rsyncs(state, image, cfg.rsync_port)),)
    warm_image(state, image)
    with serving(state, cfg):
        url = f"rsync://10.0.2.2:{cfg.rsync_port}/{image}"
        append = (f"console=ttyS0,115200 panic=5 {INSTALLER_ARGS} bench.mode={mode} "
                  f"bench.url={url} bench.swap={swap}")
        spec = pxe_vm(state, f"bench-{mode}", bootenv, disk, append, memory_mib=memory,
                      more_disks=more)
        with Vm(spec) as vm:
            _, line = vm.wait_for(BENCH_DONE, TIMEOUT, fail=BENCH_FAILED, partial=False)
            vm.wait_exit(120)
    m = re.search(r"seconds=([\d.]+) rsync=([\d.]+)", line)
    if not m:
        raise RuntimeError(f"cannot read the baseline's result from {line!r}")
    return BaselineRun(mode, float(m.group(1)), float(m.group(2)))
