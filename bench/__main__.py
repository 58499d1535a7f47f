"""sysclone benchmarks, each a ratio against a baseline measured in the same
run, printed with its target and PASS/MISS:

  size      initrd.img vs Debian's initramfs-tools image for the same kernel
            (MODULES=most, the same firmware packages; bench.debianinitrd
            builds it when the golden image does not carry that kernel) <= 1.0
  uyok      sizes and build times of standard, UYOK-all (the golden
            image's own kernel, every module) and UYOK-loaded (its kernel,
            the golden client's loaded modules), each next to Debian's
            initrd for the same kernel (bench.uyok):
              UYOK-loaded initrd / Debian's                       <= 0.8
              UYOK-loaded module+firmware bytes / standard's      <= 0.25
              UYOK-loaded boot environment / standard, unpacked   <  1.0
  build     boot environment build from scratch, and whether a second
            build is byte-identical                               identical
  boot      VM start to "agent ready" (imported, parameters read, its
            first phase starting) vs VM start to userspace with a bare
            busybox initramfs, same kernel and VM                 <= 1.5
  install   the agent's whole install, from its process's start (imports
            included) vs a raw `rsync -aHAX` of the same image in the
            same VM                                               <= 1.5
  transfer  the agent's fetch phases (fetch and fetch-rest: its rsync runs,
            side by side or one after the other, from the first's start
            to the last's end) vs its rsync command lines for the whole
            image run bare, one after the other: the bulk without -S, the
            sparse files the server names with it
            (bench.install.agent_rsyncs) (speed: bare time / fetch time)
                                                                  >= 0.9
  overhead  the agent from network up vs a scripted install (sfdisk, mkfs,
            rsync, grub-install, update-grub) from network up     <= 1.2
  storage   the agent's plan + partition + assemble + format phases for a
            RAID1 + LVM layout on two disks vs a shell script of the bare
            commands (sfdisk, mdadm, lvm, mkfs), same VM, same run
            (bench.storage; the image `bench-storage`, with mdadm and lvm2,
            is bootstrapped when missing)                         <= 1.2
  capture   `image capture` over SSH vs a plain rsync -aHAX of the same
            tree over the same SSH, the golden client behind a 1 Gbit/s
            link (bench.capture)                                  <= 1.1
            and, reported: the same with both ends on this machine's
            CPUs, over loopback
            an incremental capture of a 1 % change vs a full one  <= 1.0
            disk use of 10 versions, 1 % changed each, vs one     <= 1.2
              in the store where the state root is (sysclone's count), and
              on a loop-mounted btrfs (snapshots), xfs and ext4 (hard
              links), by what each filesystem reports used          <= 1.2
  update    updateclient on a client already on the version (no-op) vs a
            plain `rsync -aHAXS --delete` of the same trees, same excludes,
            in the same run (bench.update; no VM, needs root; the served
            zipapp, and the plain script reported beside it):
              bytes on the wire per file                          <= 50
              time / the plain rsync's (the median of the ratios
              of 11 alternated pairs; --runs N for more)        <= 1.1
            and, reported: the same for a 1 % change of the image

    python -m bench [--only build,size,uyok,boot,install,storage,capture,update] [--runs N]
                    [--json FILE]

Timings under emulation are noisy: only ratios from one run mean anything,
and --runs N repeats the VM measurements (min and median are printed; the
ratio uses the medians).  State lives in $SYSCLONE_ROOT (default .state);
downloads in $SYSCLONE_CACHE.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sysclone.paths import StateRoot
from sysclone.ui import Ui


@dataclass(frozen=True)
class Target:
    name: str
    limit: float
    higher_is_better: bool = False

    def check(self, ratio: float) -> bool:
        return ratio >= self.limit if self.higher_is_better else ratio <= self.limit

    def __str__(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {self.limit:g}"


TARGETS = {
    "size": Target("initrd / Debian initramfs-tools", 1.0),
    "boot": Target("agent ready / busybox userspace", 1.5),
    "install": Target("install / raw rsync -aHAX", 1.5),
    "transfer": Target("the same rsyncs bare / fetch phases", 0.9, higher_is_better=True),
    "overhead": Target("install from network up / scripted install", 1.2),
    "uyok": Target("UYOK-loaded initrd / Debian initramfs-tools, same kernel", 0.8),
    "uyok-drivers": Target("UYOK-loaded module+firmware bytes / standard's", 0.25),
    "uyok-total": Target("UYOK-loaded boot environment / standard, unpacked", 0.999),
    "storage": Target("RAID1+LVM plan+partition+assemble+format / bare-command script", 1.2),
    "capture": Target("capture / plain rsync -aHAX over the same SSH, 1 Gbit/s link", 1.1),
    "incremental": Target("capture of a 1 % change / a full capture", 1.0),
    "versions": Target("disk use of 10 versions (1 % change each) / one", 1.2),
    **{f"versions-{fs}": Target(f"the same on a {fs.replace('-', ' -O ')} store, as the "
                                "filesystem counts it", 1.2)
       for fs in ("btrfs", "xfs", "ext4", "ext4-inline_data")},
    "update-bytes": Target("no-op update: bytes on the wire per file", 50.0),
    "update-time": Target("no-op update / plain rsync -aHAXS --delete", 1.1),
}
SECTIONS = ("build", "size", "uyok", "boot", "install", "storage", "capture", "update")
# The sections that measure (or boot) the boot environment; the others
# need neither the demo image nor a boot environment build (storage builds
# the standard one itself when missing, and uses its own image).
NEED_BOOTENV = frozenset(("build", "size", "uyok", "boot", "install"))


class Results:
    def __init__(self) -> None:
        self.data: dict[str, Any] = {"machine": _machine(), "results": {}}
        self.verdicts: list[tuple[str, float | None, str, bool | None]] = []

    def record(self, key: str, row: dict[str, Any]) -> None:
        self.data["results"][key] = row

    def ratio(self, key: str, ratio: float, detail: str) -> None:
        t = TARGETS[key]
        ok = t.check(ratio)
        self.data["results"].setdefault(key, {}).update(
            {"ratio": round(ratio, 3), "target": str(t), "pass": ok})
        self.verdicts.append((t.name, ratio, str(t), ok))
        print(f"{key:<9} {ratio:6.2f}  target {t}  {'PASS' if ok else 'MISS'}   {detail}")

    def flag(self, key: str, name: str, ok: bool, detail: str) -> None:
        self.data["results"].setdefault(key, {}).update({"pass": ok})
        self.verdicts.append((name, None, "yes", ok))
        print(f"{key:<9} {'yes' if ok else 'no':>6}  target yes  {'PASS' if ok else 'MISS'}   "
              f"{detail}")


def _machine() -> dict[str, Any]:
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "kernel": platform.release(), "accel": os.environ.get("SYSCLONE_QEMU_ACCEL", "tcg"),
            "date": time.strftime("%Y-%m-%d %H:%M:%S")}


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}s"
    return f"min {min(values):.1f}s median {statistics.median(values):.1f}s"


def bench_build(state: StateRoot, ui: Ui, res: Results) -> Path:
    from bootenv.standard import build_bootenv

    times, shas = [], []
    out = state.bootenvs / "standard"
    for i in range(2):
        t0 = time.monotonic()
        r = build_bootenv(state, ui, output=out if i == 0 else state.bootenvs / "bench-rebuild",
                          use_cache=False)
        times.append(time.monotonic() - t0)
        shas.append(_sha(r.initrd))
    res.record("build", {"seconds": [round(t, 1) for t in times], "sha256": shas})
    res.flag("build", "byte-identical rebuild", shas[0] == shas[1],
             f"from scratch {times[0]:.0f}s (agent frozen anew), rebuild {times[1]:.0f}s")
    res.data["results"]["build"]["standard_seconds"] = times[0]
    return out


def _debian_initrd(state: StateRoot, m: dict[str, Any], image: str) -> Path:
    """Debian's initrd for the boot environment's kernel: the golden
    image's own when it carries that kernel, else built like for like."""
    from bench.debianinitrd import debian_initrd
    from imageserver.store import ImageStore
    from kernels.tree import find

    kver = m["kernel"]["version"]
    own = ImageStore(state).path(image) / "boot" / f"initrd.img-{kver}"
    if own.is_file():
        return own
    return debian_initrd(state, find(state.kernels, m["kernel"]["name"]))


def bench_size(state: StateRoot, bootenv: Path, image: str, res: Results) -> None:
    m = json.loads((bootenv / "manifest.json").read_text())
    kver = m["kernel"]["version"]
    ours, unpacked = m["initrd"]["size"], m["initrd"]["uncompressed_size"]
    debian = _debian_initrd(state, m, image)
    row: dict[str, Any] = {"initrd": ours, "unpacked": unpacked, "kernel": kver,
                           "packing": m["initrd"].get("packing"), "contents": m["contents"]}
    res.record("size", row)
    if not debian.is_file():
        print(f"size: no Debian initrd for {kver} in image {image} to compare with")
        return
    row["debian_initramfs_tools"] = debian.stat().st_size
    res.ratio("size", ours / debian.stat().st_size,
              f"{ours / 2**20:.1f} MiB ({unpacked / 2**20:.1f} MiB unpacked at boot) vs "
              f"{debian.stat().st_size / 2**20:.1f} MiB")
    print("          contents: " + ", ".join(
        f"{k} {v / 2**20:.1f} MiB" for k, v in m["contents"].items()))


def bench_uyok(state: StateRoot, ui: Ui, image: str, res: Results,
               standard: Path | None, standard_seconds: float | None) -> None:
    from bench import uyok

    built = None
    if standard is not None and standard_seconds is not None:
        built = uyok.Built("standard", standard, standard_seconds,
                           json.loads((standard / "manifest.json").read_text()))
    r = uyok.run(state, ui, image, built)
    std, all_, loaded = r["standard"], r["uyok_all"], r["uyok_loaded"]
    rows = [(std, r["debian_standard"]), (all_, r["debian_uyok"]), (loaded, r["debian_uyok"])]
    res.record("uyok", {
        b.name: {"initrd": b.initrd, "seconds": round(b.seconds, 1), "driver_bytes":
                 b.driver_bytes, "total": b.total, "modules": b.manifest["modules"]["count"],
                 "firmware": b.manifest["firmware"]["count"], "kernel":
                 b.manifest["kernel"]["version"], "debian_initrd": d}
        for b, d in rows} | {"listing": r["listing"],
                             "debian_standard_seconds": round(r["debian_standard_seconds"], 1)})
    for b, d in rows:
        vs = f"{b.initrd / d:.2f}x Debian's {d / 2**20:.1f} MiB" if d else "no Debian initrd"
        print(f"          {b.name:<11} {b.initrd / 2**20:5.1f} MiB in {b.seconds:4.0f}s, "
              f"{b.manifest['modules']['count']} modules, {b.manifest['firmware']['count']} "
              f"firmware files ({b.manifest['kernel']['version']}): {vs}")
    if r["debian_uyok"]:
        res.ratio("uyok", loaded.initrd / r["debian_uyok"],
                  f"UYOK-loaded {loaded.initrd / 2**20:.1f} MiB vs Debian's "
                  f"{r['debian_uyok'] / 2**20:.1f} MiB for {loaded.manifest['kernel']['version']}")
    res.ratio("uyok-drivers", loaded.driver_bytes / std.driver_bytes,
              f"{loaded.driver_bytes / 2**20:.1f} MiB of modules and firmware vs "
              f"{std.driver_bytes / 2**20:.1f} MiB")
    res.ratio("uyok-total", loaded.total / std.total,
              f"{loaded.total / 2**20:.1f} MiB unpacked vs {std.total / 2**20:.1f} MiB")


def bench_boot(bootenv: Path, runs: int, res: Results) -> None:
    from bench.boot import run

    b = run(bootenv, runs)
    res.record("boot", {"busybox": b.baseline, "agent_ready": b.agent,
                        "busybox_init": b.baseline_init, "agent_init": b.agent_init})
    res.ratio("boot", b.ratio, f"agent ready {_stats(b.agent)}, busybox {_stats(b.baseline)}")
    med = statistics.median
    print(f"          kernel to /init: agent {med(b.agent_init):.1f}s, busybox "
          f"{med(b.baseline_init):.1f}s; /init to ready: agent "
          f"{med(b.agent) - med(b.agent_init):.1f}s, busybox "
          f"{med(b.baseline) - med(b.baseline_init):.1f}s")


def bench_install(state: StateRoot, bootenv: Path, image: str, runs: int,
                  res: Results) -> None:
    from bench.install import build_baseline_bootenv, run_agent, run_baseline

    base_env = build_baseline_bootenv(state, state.bootenvs / "bench-baseline")
    agent, raw, same, scripted = [], [], [], []
    for _ in range(runs):
        agent.append(run_agent(state, bootenv, image))
        raw.append(run_baseline(state, base_env, image, "rsync"))
        same.append(run_baseline(state, base_env, image, "rsync-agent-flags"))
        scripted.append(run_baseline(state, base_env, image, "scripted"))

    def med(f: Callable[[Any], float], xs: list[Any]) -> float:
        return statistics.median(f(x) for x in xs)

    install_s, raw_s = med(lambda r: r.seconds, agent), med(lambda r: r.rsync, raw)
    fetch_s = med(lambda r: r.fetch_span, agent)
    same_s = med(lambda r: r.rsync, same)
    netup_s, scripted_s = med(lambda r: r.from_network, agent), med(lambda r: r.seconds, scripted)
    res.record("install", {
        "agent": [{"seconds": r.seconds, "from_network": r.from_network, "timings": r.timings,
                   "fetch_span": round(r.fetch_span, 2), "initrd": r.initrd,
                   "vm_seconds": round(r.vm_seconds, 1)} for r in agent],
        "raw_rsync": [r.rsync for r in raw], "same_rsync": [r.rsync for r in same],
        "scripted": [{"seconds": r.seconds, "rsync": r.rsync} for r in scripted]})
    res.ratio("install", install_s / raw_s,
              f"agent {_stats([r.seconds for r in agent])} vs raw rsync "
              f"{_stats([r.rsync for r in raw])}")
    res.ratio("transfer", same_s / fetch_s,
              f"bare, one after the other {_stats([r.rsync for r in same])} vs the agent's "
              f"fetch phases {_stats([r.fetch_span for r in agent])}")
    res.ratio("overhead", netup_s / scripted_s,
              f"agent from network up {_stats([r.from_network for r in agent])} vs scripted "
              f"{_stats([r.seconds for r in scripted])}")
    last = agent[-1]
    print("          agent phases: " + ", ".join(f"{k} {v:.1f}s" for k, v in last.timings.items()))
    print(f"          initrd: {last.initrd.get('action')} "
          f"({'; '.join(last.initrd.get('reasons') or [])})")


def bench_storage(state: StateRoot, runs: int, res: Results) -> None:
    from bench import storage

    r = storage.run(state, None, runs)
    res.record("storage", r)
    res.ratio("storage", r["agent_s"] / r["script_s"],
              f"agent {_stats([a['seconds'] for a in r['agent']])} (plan+partition+assemble+"
              f"format) vs script {_stats(r['script'])}")
    last = r["agent"][-1]["timings"]
    print(f"          without the plan phase {r['ratio_without_plan']:.2f}; agent phases: "
          + ", ".join(f"{k} {v:.1f}s" for k, v in last.items()))


def bench_capture(runs: int, res: Results) -> None:
    import tempfile

    from bench import capture, golden

    cache = Path(os.environ.get("SYSCLONE_CACHE") or "/var/cache/sysclone")
    with tempfile.TemporaryDirectory(prefix="sysclone-bench-capture.") as work, \
            golden.golden_over_ssh(Path(work), cache) as g:
        with golden.over_link(g) as lan:
            sp = capture.speed(lan, Path(work), max(runs, 4))
        res.record("capture", sp)
        res.ratio("capture", sp["ratio"], f"capture {sp['capture_s']:.2f}s vs plain rsync "
                  f"{sp['plain_rsync_s']:.2f}s over a {sp['link']} link (best of each; "
                  f"ratio: median of pairs), {sp['tree']}, into {sp['store']}")
        loop = capture.speed(g, Path(work), max(runs, 4))
        res.record("capture-loopback", loop)
        print(f"          over loopback, both ends on this machine's CPUs: {loop['ratio']:.2f} "
              f"(capture {loop['capture_s']:.2f}s vs plain rsync {loop['plain_rsync_s']:.2f}s; "
              "the manifest's hashing and the sealing compete with ssh and rsync)")
        inc = capture.incremental(g)
        res.record("incremental", inc)
        res.ratio("incremental", inc["ratio"], f"{inc['incremental_s']:.1f}s vs "
                  f"{inc['full_s']:.1f}s")
        ver = capture.versions(g)
        res.record("versions", ver)
        res.ratio("versions", ver["ratio"], capture.describe_versions(ver))
        for fs in capture.FILESYSTEMS:
            key = f"versions-{fs}"
            row = capture.versions_on(g, fs, Path(work))
            res.record(key, row)
            if "skipped" in row:
                print(f"{key:<9} {capture.describe_versions(row)}")
            else:
                res.ratio(key, row["ratio"], capture.describe_versions(row))


def bench_update(runs: int, res: Results) -> None:
    from bench import update

    cache = Path(os.environ.get("SYSCLONE_CACHE") or "/var/cache/sysclone")
    r = update.run_all(cache, max(runs, 11))
    n, c = r["noop"], r["change"]
    res.record("update", r)
    res.ratio("update-bytes", n["update_bytes_per_file"],
              f"B/file, plain rsync {n['rsync_bytes_per_file']:.1f}; {n['files']} files, "
              f"{n['tree']}")
    res.ratio("update-time", n["time_ratio"],
              f"median of {n['rounds']} alternated pairs; medians: no-op update "
              f"{n['update_s']:.3f}s vs plain rsync {n['rsync_s']:.3f}s; best of each "
              f"{n['best_ratio']:.2f}x; the served zipapp, the plain script "
              f"{n['script_ratio']:.2f}x)")
    print(f"          1 % change ({c['changed_files']} files): update {c['update_s']:.2f}s, "
          f"{c['update_bytes_per_file']:.1f} B/file vs plain rsync {c['rsync_s']:.2f}s, "
          f"{c['rsync_bytes_per_file']:.1f} B/file ({c['time_ratio']:.2f}x time; the update "
          f"also keeps a rollback point and stages before applying)")


def bench_bootenv(a: argparse.Namespace, only: set[str], res: Results) -> None:
    """The sections on the boot environment: the demo image and a boot
    environment first (each reused when there)."""
    from sysclone.demo import DemoOptions, prepare

    state = StateRoot.from_options(os.environ.get("SYSCLONE_ROOT") or Path(".state"))
    ui = Ui(quiet=True)
    bootenv = prepare(state, ui, DemoOptions(image=a.image))
    if "build" in only:
        bootenv = bench_build(state, ui, res)
    if "size" in only:
        bench_size(state, bootenv, a.image, res)
    if "uyok" in only:
        seconds = res.data["results"].get("build", {}).get("standard_seconds")
        bench_uyok(state, ui, a.image, res, bootenv if seconds else None, seconds)
    if "boot" in only:
        bench_boot(bootenv, a.runs, res)
    if "install" in only:
        bench_install(state, bootenv, a.image, a.runs, res)


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(SECTIONS),
                    help="comma-separated: " + ", ".join(SECTIONS))
    ap.add_argument("--runs", type=int, default=1,
                    help="repeat each VM measurement N times (min/median; default 1)")
    ap.add_argument("--image", default="demo")
    ap.add_argument("--json", help="also write the results here as JSON")
    a = ap.parse_args()
    only = set(a.only.split(","))
    unknown = only - set(SECTIONS)
    if unknown:
        ap.error(f"--only: unknown benchmark(s) {', '.join(sorted(unknown))}")
    if a.runs < 1:
        ap.error("--runs must be at least 1")
    res = Results()
    print(f"sysclone benchmarks on {res.data['machine']['host']} "
          f"({res.data['machine']['cpus']} CPUs, QEMU {res.data['machine']['accel']})")
    if only & NEED_BOOTENV:
        bench_bootenv(a, only, res)
    if "storage" in only:
        bench_storage(StateRoot.from_options(os.environ.get("SYSCLONE_ROOT") or Path(".state")),
                      a.runs, res)
    if "capture" in only:
        bench_capture(a.runs, res)
    if "update" in only:
        bench_update(a.runs, res)
    missed = [v for v in res.verdicts if v[3] is False]
    print(f"{len(res.verdicts) - len(missed)} of {len(res.verdicts)} targets met")
    if a.json:
        Path(a.json).write_text(json.dumps(res.data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
