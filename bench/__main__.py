"""sysclone benchmarks, each printed as a ratio against a baseline measured
in the same run:

  size     initrd.img (compressed, unpacked) vs Debian's initramfs-tools
           image for the same kernel (MODULES=most, from the golden image)
  build    boot environment build time, from scratch (agent frozen anew),
           and whether a second build is byte-identical
  boot     VM start to "agent ready" vs VM start to userspace with a bare
           busybox initramfs, same kernel, same VM
  install  a full install (agent phases) vs a plain `rsync -aHAX` of the
           same image onto a fresh filesystem, in the same VM

    python -m bench [--only size,build,boot,install] [--runs N]

State lives in $SYSCLONE_ROOT (default .state); downloads in $SYSCLONE_CACHE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from sysclone.paths import StateRoot
from sysclone.ui import Ui

RESULTS: dict[str, Any] = {}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def bench_build(state: StateRoot, ui: Ui) -> Path:
    from bootenv.standard import build_bootenv

    times, shas = [], []
    out = state.bootenvs / "standard"
    for i in range(2):
        t0 = time.monotonic()
        res = build_bootenv(state, ui, output=out if i == 0 else state.bootenvs / "bench-rebuild",
                            use_cache=False)
        times.append(time.monotonic() - t0)
        shas.append(_sha(res.initrd))
    RESULTS["build"] = {"seconds": [round(t, 1) for t in times],
                        "byte_identical": shas[0] == shas[1], "sha256": shas[0]}
    print(f"build: {times[0]:.1f}s from scratch (agent frozen anew), rebuild {times[1]:.1f}s, "
          f"byte-identical: {shas[0] == shas[1]}")
    return out


def bench_size(state: StateRoot, bootenv: Path, image: str) -> None:
    m = json.loads((bootenv / "manifest.json").read_text())
    kver = m["kernel"]["version"]
    ours, unpacked = m["initrd"]["size"], m["initrd"]["uncompressed_size"]
    debian = state.images / image / "boot" / f"initrd.img-{kver}"
    row: dict[str, Any] = {"initrd": ours, "unpacked": unpacked, "kernel": kver,
                           "contents": m["contents"]}
    if debian.is_file():
        row["debian_initramfs_tools"] = debian.stat().st_size
        row["ratio"] = round(ours / debian.stat().st_size, 3)
        print(f"size: initrd.img {ours / 2**20:.1f} MiB ({unpacked / 2**20:.1f} MiB unpacked) vs "
              f"Debian initramfs-tools {debian.stat().st_size / 2**20:.1f} MiB "
              f"-> ratio {row['ratio']:.2f}")
    else:
        print(f"size: initrd.img {ours / 2**20:.1f} MiB; no Debian initrd for {kver} in image "
              f"{image} to compare with")
    print("      contents (unpacked): " + ", ".join(
        f"{k} {v / 2**20:.1f} MiB" for k, v in m["contents"].items()))
    RESULTS["size"] = row


def bench_boot(bootenv: Path, runs: int) -> None:
    from bench.boot import run

    res = run(bootenv, runs)
    RESULTS["boot"] = {"busybox": res.baseline, "agent_ready": res.agent,
                       "ratio": round(res.ratio, 3)}
    print(f"boot: agent ready after {statistics.median(res.agent):.1f}s, busybox userspace "
          f"after {statistics.median(res.baseline):.1f}s -> ratio {res.ratio:.2f} "
          f"(median of {runs})")


def bench_install(state: StateRoot, ui: Ui, bootenv: Path, image: str) -> None:
    from ci.qemu import blank_disk
    from sysclone.demo import DemoOptions, install_vm

    got: dict[str, Any] = {}

    def keep(ev: dict[str, Any]) -> None:
        if ev.get("kind") in ("done", "bench"):
            got[ev["kind"]] = ev

    quiet = Ui(quiet=True)
    opts = DemoOptions(image=image, hostname="bench-node")
    disk = blank_disk(state.vms / "bench-node.img", 4 << 30)
    install_vm(state, quiet, opts, bootenv, disk, on_event=keep)
    disk = blank_disk(state.vms / "bench-node.img", 4 << 30)
    from ci.qemu import Vm, VmSpec
    from imageserver.serve import ServeConfig, free_port, serving
    from mkmedia.pxe import PxeSpec, write_tree
    from sysclone.demo import install_append

    cfg = ServeConfig(rsync_port=free_port(), http_port=free_port(), default_image=image)
    with serving(state, cfg) as srv:
        srv.monitor.subscribe(keep)
        tftp = state.pxe / "bench-rsync"
        append = install_append("bench-rsync", image, cfg.http_port, cfg.rsync_port, "poweroff",
                                "sysclone.bench=rsync")
        write_tree(tftp, PxeSpec(bootenv / "kernel", bootenv / "initrd.img", append))
        spec = VmSpec(name="bench-rsync", workdir=state.vms, disks=(disk,), tftp_root=tftp,
                      bootfile="pxelinux.0", boot="n")
        with Vm(spec) as vm:
            vm.wait_for("SYSCLONE-BENCH-RSYNC", 3600, fail="SYSCLONE-INSTALL-FAILED")
            vm.wait_exit(120)
    timings = got["done"]["timings"]
    install_s = got["done"]["seconds"]  # wall clock, start of the agent to the end
    rsync_s = got["bench"]["seconds"]
    RESULTS["install"] = {"agent_phases": timings, "install_seconds": round(install_s, 1),
                          "raw_rsync_seconds": rsync_s, "ratio": round(install_s / rsync_s, 2)}
    print(f"install: {install_s:.0f}s (agent, start to finish) vs raw rsync -aHAX {rsync_s:.0f}s "
          f"-> ratio {install_s / rsync_s:.2f}")
    print("      phases: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="size,build,boot,install")
    ap.add_argument("--runs", type=int, default=3, help="boot benchmark repetitions")
    ap.add_argument("--image", default="demo")
    ap.add_argument("--json", help="also write the results here")
    a = ap.parse_args()
    only = set(a.only.split(","))
    state = StateRoot.from_options(os.environ.get("SYSCLONE_ROOT") or Path(".state"))
    ui = Ui(quiet=True)
    from sysclone.demo import DemoOptions, prepare

    bootenv = prepare(state, ui, DemoOptions(image=a.image))
    if "build" in only:
        bootenv = bench_build(state, ui)
    if "size" in only:
        bench_size(state, bootenv, a.image)
    if "boot" in only:
        bench_boot(bootenv, a.runs)
    if "install" in only:
        bench_install(state, ui, bootenv, a.image)
    if a.json:
        Path(a.json).write_text(json.dumps(RESULTS, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
