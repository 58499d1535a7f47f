"""`sysclone`: the one command, with subcommands.

Every subcommand works on the state root (--root / SYSCLONE_ROOT, default
/var/lib/sysclone); heavy downloads are cached in --cache / SYSCLONE_CACHE.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sysclone import checks, imagecli, layoutcli, mediacli, updatecli
from sysclone.errors import ConfigError, SyscloneError
from sysclone.paths import StateRoot
from sysclone.ui import Ui, print_table

log = logging.getLogger("sysclone")

Handler = Callable[[argparse.Namespace, StateRoot, Ui], int]


# ----------------------------------------------------------------- images ---

def cmd_image_bootstrap(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.bootstrap import BootstrapSpec, bootstrap_image, package_set
    from imageserver.store import check_name
    from kernels.aptsources import find_debian_mirror

    check_name(a.name)  # a bad name is one line of error, before any step starts
    # Suite and architecture name cache files; packages go to debootstrap.
    checks.debian_name(a.suite, "--suite", "Debian suite")
    checks.debian_name(a.arch, "--arch", "Debian architecture")
    for pkg in a.include:
        checks.debian_name(pkg, "--include", "package name")
    if a.mirror:
        checks.mirror_url(a.mirror)
    mirror, suite = a.mirror, a.suite
    if not mirror:
        m = find_debian_mirror()
        mirror = m.uri
        ui.info(f"mirror {mirror} (from {m.where})")
    packages = package_set(a.include)
    spec = BootstrapSpec(mirror=mirror, suite=suite, arch=a.arch, packages=packages,
                         serial_console=not a.no_serial_console)
    with ui.step(f"bootstrap image {a.name} ({suite}, {len(packages)} packages)") as update:
        info = bootstrap_image(state, a.name, spec, force=a.force, use_cache=not a.no_cache,
                               on_line=update)
    assert info.usage
    ui.info(f"image {a.name} version {info.version}: {info.usage.bytes / 2**20:,.0f} MiB, "
            f"{info.usage.files:,} files in {state.images / a.name}")
    return 0


def cmd_image_list(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.store import ImageStore

    store = ImageStore(state)
    rows, damage = [], []
    for n in store.names():
        try:
            rows.append(_image_row(state, store, n))
        except SyscloneError as e:  # one damaged image hides none of the others
            damage.append(e)
            rows.append({"name": n, "version": "?",
                         "versions": len(store.versions.numbers(n)) or 1,
                         "origin": "DAMAGED", "size": "?", "files": "?"})
    print_table(rows, ["name", "version", "versions", "origin", "source", "size", "files",
                       "storage"])
    for problem in damage:
        print(f"sysclone: error: {problem}", file=sys.stderr)
    return 1 if damage else 0


def _image_row(state: StateRoot, store: Any, n: str) -> dict[str, Any]:
    from imageserver.verify import disk_use

    info = store.info(n)
    count = len(store.versions.numbers(n))
    return {"name": n, "version": info.version or "-", "versions": count or 1,
            "origin": info.origin, "source": info.source or "",
            # every version, files they share counted once
            "size": f"{disk_use(state, n) / 2**20:,.0f} MiB",
            "files": f"{info.usage.files:,}" if info.usage else "?",
            # how versions share files: hardlink or btrfs-snapshot
            "storage": store.storage(n)}


def cmd_image_show(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.store import ImageStore

    print(json.dumps(ImageStore(state).describe(a.name), indent=2, sort_keys=True))
    return 0


def cmd_image_delete(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.store import ImageStore

    ImageStore(state).delete(a.name)
    ui.info(f"deleted {'version' if '@' in a.name else 'image'} {a.name}")
    return 0


# ---------------------------------------------------------------- kernels ---

def cmd_kernel_fetch(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from kernels.standard import fetch_standard

    checks.debian_name(a.flavor, "--flavor", "kernel flavor")
    _check_archive_options(a)
    with ui.progress(f"linux-image-{a.flavor}", None) as update:
        tree = fetch_standard(state, flavor=a.flavor, suite=a.suite, mirror=a.mirror,
                              arch=a.arch, progress=update, firmware=not a.no_firmware)
    _say_kernel(ui, tree)
    return 0


def _check_archive_options(a: argparse.Namespace) -> None:
    checks.debian_name(a.arch, "--arch", "Debian architecture")
    if a.suite:
        checks.debian_name(a.suite, "--suite", "Debian suite")
    if a.mirror:
        checks.mirror_url(a.mirror)


def _say_kernel(ui: Ui, tree: object) -> None:
    from kernels.tree import KernelTree

    assert isinstance(tree, KernelTree)
    ui.info(f"kernel {tree.name}: {tree.kver} ({tree.describe_source()}), {tree.modules} "
            f"modules, {tree.firmware} firmware files, in {tree.path}")


def cmd_kernel_add(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.names import NAME_HINT, is_name
    from kernels import fromtree, standard

    if not is_name(a.name):
        raise ConfigError(f"kernel name {a.name!r} is not valid", hint=NAME_HINT)
    sources = [x for x in (a.from_image, a.from_host or None, a.package, a.flavor) if x]
    if len(sources) != 1:
        raise ConfigError("kernel add: give exactly one of --from-image, --from-host, "
                          "--package, --flavor")
    if a.version and not (a.from_image or a.from_host):
        raise ConfigError("--version goes with --from-image or --from-host")
    _check_archive_options(a)
    with ui.step(f"kernel {a.name}") as update:
        if a.from_image:
            update(f"from image {a.from_image}")
            tree = fromtree.add_from_image(state, a.from_image, a.name, a.version, a.replace)
        elif a.from_host:
            update("from this host")
            tree = fromtree.add_from_host(state, a.name, a.version, a.replace)
        elif a.package:
            update(f"from {a.package}")
            tree = standard.add_package(state, a.package, a.name, suite=a.suite,
                                        mirror=a.mirror, arch=a.arch,
                                        firmware=not a.no_firmware, replace=a.replace)
        else:
            checks.debian_name(a.flavor, "--flavor", "kernel flavor")
            update(f"linux-image-{a.flavor}")
            tree = standard.fetch_standard(state, flavor=a.flavor, suite=a.suite,
                                           mirror=a.mirror, arch=a.arch, name=a.name,
                                           firmware=not a.no_firmware, replace=a.replace)
    _say_kernel(ui, tree)
    return 0


def cmd_kernel_list(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from kernels.tree import list_kernels

    rows = [{"name": k.name, "version": k.kver, "source": k.describe_source(),
             "modules": k.modules or "?", "firmware": k.firmware} for k in list_kernels(
                 state.kernels)]
    print_table(rows, ["name", "version", "source", "modules", "firmware"])
    return 0


# --------------------------------------------------------------- bootenv ---

def cmd_bootenv_build(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from bootenv.standard import build_bootenv

    output = checks.output_dir(a.output, "--output", state) if a.output else None
    checks.debian_name(a.flavor, "--flavor", "kernel flavor")
    if a.local_cfg:
        _check_local_cfg(Path(a.local_cfg), ui)
    result = build_bootenv(state, ui, output=output,
                           kernel=a.kernel, flavor=a.flavor,
                           modules_arg=a.modules, add_modules=_split(a.add_modules) or (),
                           modules_from=Path(a.modules_from) if a.modules_from else None,
                           tool_groups=_split(a.tools), compression=a.compression,
                           local_cfg=Path(a.local_cfg) if a.local_cfg else None,
                           use_cache=not a.no_cache, packing=a.packing)
    d = result.data
    ui.info(f"kernel     {result.kernel} ({d['kernel']['version']}, {d['kernel']['name']})")
    ui.info(f"initrd.img {result.initrd} ({d['initrd']['size'] / 2**20:.1f} MiB "
            f"{d['initrd']['compression']}, {d['initrd']['uncompressed_size'] / 2**20:.1f} MiB "
            "unpacked)")
    fw = d["firmware"]
    ui.info(f"drivers    {d['modules']['count']} modules ({d['modules']['how']}), "
            f"{fw['count']} firmware files"
            + (f"; declared but not in the kernel tree: {len(fw['missing'])}"
               if fw["missing"] else ""))
    ui.info(f"manifest   {result.manifest}")
    return 0


def cmd_bootenv_check(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from bootenv import check
    from imageserver.monitor import read_inventory

    if a.inventory and a.client:
        raise ConfigError("bootenv check: --inventory and --client exclude each other",
                          hint="give one: the inventory file, or the client whose last "
                               "inventory to check")
    if not a.inventory and not a.client:
        raise ConfigError("bootenv check: give --inventory FILE or --client NAME")
    bootenv = Path(a.bootenv)
    carried = check.Carried.from_manifest(check.load_manifest(bootenv),
                                          str(bootenv / "manifest.json"))
    if a.client:
        inv = read_inventory(state.logs, a.client)
        if inv is None:
            raise ConfigError(f"no inventory from client {a.client!r}",
                              hint="clients send theirs when they boot; see sysclone clients")
        devices, notes = check.from_inventory(inv, f"client {a.client}")
    else:
        try:
            text = Path(a.inventory).read_text(errors="replace")
        except OSError as e:
            raise ConfigError(f"--inventory {a.inventory}: {e.strerror}") from None
        devices, notes = check.parse_machine(text, a.inventory)
    full, where = check.full_kernel_aliases(carried, state.kernels, a.kernel)
    if full is None:
        notes.append(where)
    result = check.check(devices, carried, full)
    for row in result.rows:
        print(row.describe())
    for n in notes:
        print(f"note: {n}")
    if not any(r.device.kind == "storage" for r in result.rows):
        print("note: no storage controller in the inventory")
    if result.ok:
        print(f"ok: {bootenv} drives every disk controller and the install NIC")
        return 0
    for p in result.problems:
        print(f"FAIL: {p}")
    return 1


def _check_local_cfg(path: Path, ui: Ui) -> None:
    """A local.cfg to embed is read now, as the agent will: a mistake in it
    is found at build time, not on every client at install time."""
    from agent.params import read_local_cfg
    from agent.params.checked import checked

    if not path.is_file():
        raise ConfigError(f"--local-cfg {path}: no such file")
    layer = read_local_cfg(path)
    for w in layer.warnings:
        ui.info(f"warning: {w}")
    # What each parameter says on its own; how they fit together depends on
    # the command lines of the media and PXE entries that boot it.
    checked([layer], partial=True)


def _split(v: str | None) -> tuple[str, ...] | None:
    if v is None:
        return None
    return tuple(x for x in v.replace(" ", ",").split(",") if x)


# ----------------------------------------------------------------- serve ---

def cmd_serve(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    import signal
    import threading

    from imageserver.serve import ServeConfig, serving

    checks.port(a.rsync_port, "--rsync-port")
    checks.port(a.http_port, "--http-port")
    if a.default_image:
        checks.image_name(a.default_image)
    for entry in a.hosts_allow or ():
        checks.rsync_host_pattern(entry)
    cfg = ServeConfig(address=a.address, rsync_port=a.rsync_port, http_port=a.http_port,
                      default_image=a.default_image, post_action=a.post_action,
                      hosts_allow=tuple(a.hosts_allow or ()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with serving(state, cfg) as srv:
        srv.monitor.subscribe(lambda ev: _print_event(ui, ev))
        ui.info(f"serving images {', '.join(_image_names(state)) or '(none yet)'}: "
                f"rsync://{a.address}:{a.rsync_port}/  http://{a.address}:{srv.api.port}/")
        served = _image_names(state)
        try:
            while not stop.wait(2.0):
                # rsync reads its config per connection: images added or
                # removed while serving are picked up by rewriting it.
                names = _image_names(state)
                if names != served:
                    srv.rsyncd.reload()
                    ui.info(f"now serving images {', '.join(names) or '(none)'}")
                    served = names
        except KeyboardInterrupt:
            pass
    return 0


def _print_event(ui: Ui, ev: dict[str, object]) -> None:
    from imageserver.monitor import format_event

    line = format_event(ev)
    if line:
        ui.info(line)


def _image_names(state: StateRoot) -> list[str]:
    from imageserver.store import ImageStore

    return ImageStore(state).names()


# ------------------------------------------------------------------- demo ---

def cmd_demo(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from sysclone.demo import DemoOptions, run_demo

    # The host name names the VM's disk file (ROOT/vms/<hostname>.img).
    checks.host_name(a.hostname, "--hostname")
    checks.image_name(a.image)
    checks.debian_name(a.flavor, "--flavor", "kernel flavor")
    for value, option in ((a.memory, "--memory"), (a.disk_size, "--disk-size"),
                          (a.timeout, "--timeout")):
        checks.positive(value, option)
    opts = DemoOptions(image=a.image, hostname=a.hostname, memory_mib=a.memory,
                       disk_gib=a.disk_size, timeout=a.timeout, flavor=a.flavor)
    return run_demo(state, ui, opts)


def cmd_params(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from agent.params import render_docs

    print(render_docs("markdown" if a.markdown else "text"))
    return 0


def cmd_clients(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    """Last known state of every client from the monitor's logs."""
    if a.show:
        if len(a.show) == 2 and a.show[0] == "reinstall":
            return mediacli.reinstall_client(a.show[1], state, ui)
        if len(a.show) != 2 or a.show[0] != "show":
            raise ConfigError(f"clients: expected `clients`, `clients show NAME` or `clients "
                              f"reinstall NAME`, got {' '.join(a.show)!r}")
        return cmd_clients_show(a.show[1], a.json, state)
    from imageserver.monitor import read_events

    rows = []
    for f in sorted(state.logs.glob("*.jsonl")) if state.logs.is_dir() else []:
        last: dict[str, Any] = {}
        phase = ""
        events, bad = read_events(f)
        if bad:
            ui.info(f"warning: {f}: {bad} line{'s' if bad > 1 else ''} not an event, skipped")
        for ev in events:
            last = ev
            phase = ev.get("phase") or phase
        rows.append({"client": f.stem, "last": last.get("kind", ""), "phase": phase,
                     "message": str(last.get("message", ""))[:60]})
    print_table(rows, ["client", "last", "phase", "message"])
    return 0


def cmd_clients_show(name: str, as_json: bool, state: StateRoot) -> int:
    from imageserver.monitor import inventory_path, read_inventory
    from sysclone.inventorycli import render

    inv = read_inventory(state.logs, name)
    path = inventory_path(state.logs, name)
    if inv is None and path.is_file():
        raise ConfigError(f"the inventory of client {name!r} ({path}) is not a JSON object",
                          hint="the client sends a new one at its next install")
    if inv is None:
        known = sorted(p.name.removesuffix(".inventory.json")
                       for p in state.logs.glob("*.inventory.json")) \
            if state.logs.is_dir() else []
        raise ConfigError(f"no inventory from client {name!r}",
                          hint="clients with one: " + (", ".join(known) or "none yet"))
    print(json.dumps(inv, indent=1, sort_keys=True) + "\n" if as_json else render(name, inv),
          end="")
    return 0


# ----------------------------------------------------------------- parser ---

def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="sysclone",
        description="Capture a golden Linux machine as an image and install it, unattended, "
                    "onto bare metal (or QEMU machines standing in for it).")
    ap.add_argument("--root", help="state directory (default: $SYSCLONE_ROOT or "
                                   "/var/lib/sysclone)")
    ap.add_argument("--cache", help="download cache (default: $SYSCLONE_CACHE or ROOT/cache)")
    ap.add_argument("--debug", action="store_true", help="log every command; show tracebacks")
    ap.add_argument("-q", "--quiet", action="store_true", help="only errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(parent: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
            fn: Handler, help: str) -> argparse.ArgumentParser:
        p = parent.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    img = sub.add_parser("image", help="manage images (golden system trees)",
                         description="Manage the images in the image store.")
    isub = img.add_subparsers(dest="image_command", metavar="ACTION", required=True)
    p = add(isub, "bootstrap", cmd_image_bootstrap,
            "build a golden Debian image from scratch with debootstrap and store it")
    p.add_argument("name", help="image name")
    p.add_argument("--suite", default="bookworm", help="Debian suite (default: bookworm)")
    p.add_argument("--mirror", help="Debian mirror URL (default: from the apt sources)")
    p.add_argument("--arch", default="amd64")
    p.add_argument("--include", action="append", default=[], metavar="PKG",
                   help="extra package (repeatable); dracut replaces initramfs-tools, and "
                        "systemd-networkd (part of systemd) enables networkd in place of "
                        "ifupdown")
    p.add_argument("--no-serial-console", action="store_true",
                   help="do not put the console on ttyS0 too")
    p.add_argument("--force", action="store_true",
                   help="accepted for old scripts: an existing image gets a new version")
    p.add_argument("--no-cache", action="store_true", help="debootstrap even if cached")
    add(isub, "list", cmd_image_list,
        "list images: current version, versions, origin, source, disk use of all versions")
    p = add(isub, "show", cmd_image_show,
            "show what is known about an image or one version, NAME[@N] (JSON)")
    p.add_argument("name", metavar="NAME[@N]")
    p = add(isub, "delete", cmd_image_delete,
            "delete an image with all its versions, or one old version (NAME@N)")
    p.add_argument("name", metavar="NAME[@N]")
    imagecli.add_image_actions(isub, add)
    imagecli.add_client_commands(sub, add)
    layoutcli.add_layout_commands(sub, add)

    k = sub.add_parser("kernel", help="kernels for boot environments",
                       description="Add and list kernels for boot environments: Debian's, "
                                   "an image's own (UYOK) or this host's, with their "
                                   "modules and firmware.")
    ksub = k.add_subparsers(dest="kernel_command", metavar="ACTION", required=True)

    def archive_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--suite", help="Debian suite (default: the machine's)")
        p.add_argument("--mirror", help="Debian mirror URL (default: from the apt sources)")
        p.add_argument("--arch", default="amd64")
        p.add_argument("--no-firmware", action="store_true",
                       help="without Debian's firmware packages")

    p = add(ksub, "add", cmd_kernel_add,
            "add a kernel with its modules and the firmware they declare: from an image "
            "(its newest /boot/vmlinuz-* by Debian version order), this host, a Debian "
            "kernel package, or a standard Debian flavor")
    p.add_argument("name", help="the kernel's name (bootenv build --kernel NAME)")
    p.add_argument("--from-image", metavar="IMAGE[@N]", help="an image's own kernel (UYOK)")
    p.add_argument("--from-host", action="store_true", help="the running kernel of this host")
    p.add_argument("--package", metavar="DEB|PACKAGE",
                   help="a linux-image .deb file, or a package name apt resolves")
    p.add_argument("--flavor", help="linux-image-<flavor> from Debian: amd64, cloud-amd64...")
    p.add_argument("--version", help="with --from-image/--from-host: this kernel version "
                                     "(uname -r) rather than the newest")
    p.add_argument("--replace", action="store_true", help="replace a kernel of that name")
    archive_options(p)
    p = add(ksub, "fetch", cmd_kernel_fetch,
            "download a standard kernel flavor from Debian (verified by apt) with Debian's "
            "firmware, as <flavor>-<version>")
    p.add_argument("--flavor", default="amd64",
                   help="linux-image-<flavor> (default: amd64, the generic kernel)")
    archive_options(p)
    add(ksub, "list", cmd_kernel_list,
        "list kernels: name, version, source, module and firmware counts")

    b = sub.add_parser("bootenv", help="boot environments (kernel + initramfs + agent)",
                       description="Build boot environments and check what they can drive.")
    bsub = b.add_subparsers(dest="bootenv_command", metavar="ACTION", required=True)
    p = add(bsub, "build", cmd_bootenv_build,
            "build kernel + initrd.img with the frozen agent, its tools and drivers, "
            "plus a manifest.json")
    p.add_argument("--output", help="output directory (default: ROOT/bootenv/standard)")
    p.add_argument("--kernel", metavar="NAME|DIR",
                   help="a kernel (sysclone kernel list) or kernel tree directory (default: "
                        "the newest of --flavor, fetched if needed)")
    p.add_argument("--flavor", default="amd64",
                   help="Debian kernel flavor when no --kernel (default: amd64)")
    p.add_argument("--modules", metavar="all|standard|loaded|LIST",
                   help="standard (default: storage, network, filesystems, watchdog groups "
                        "plus what the tools need); all; loaded (the golden client's, recorded "
                        "when its image was captured); or module groups, names and globs, "
                        "comma-separated")
    p.add_argument("--modules-from", metavar="FILE",
                   help="with loaded: a /proc/modules or lsmod listing")
    p.add_argument("--add-modules", metavar="LIST",
                   help="more modules by name or glob, comma-separated (dependencies follow)")
    p.add_argument("--tools", help="tool groups, comma-separated (default: core,ext4,xfs,"
                                   "vfat,btrfs,raid,lvm,crypt; also: fsck, debug)")
    p.add_argument("--compression", choices=("zstd", "xz", "gzip", "none"),
                   help="of the archive (stage 1 for squashfs packing); default zstd, xz "
                        "for --modules loaded when the kernel can unpack it")
    p.add_argument("--packing", default="auto", choices=("auto", "squashfs", "cpio"),
                   help="squashfs: a compressed root read on demand behind a tiny first "
                        "stage (less RAM, faster start); cpio: one archive unpacked whole, "
                        "for kernels without loop/squashfs/overlay; auto (default): squashfs "
                        "when the kernel can")
    p.add_argument("--local-cfg", help="embed this local.cfg in the initrd")
    p.add_argument("--no-cache", action="store_true", help="re-freeze the agent")
    p = add(bsub, "check", cmd_bootenv_check,
            "before any boot: can this boot environment drive this machine's storage "
            "controllers and NICs? (exit 1 when a disk controller or the install NIC "
            "cannot be driven)")
    p.add_argument("bootenv", metavar="BOOTENV", help="a boot environment directory")
    p.add_argument("--inventory", metavar="FILE",
                   help="an inventory (sysclone client inventory, the agent's) or modalias "
                        "lines (cat /sys/bus/*/devices/*/modalias)")
    p.add_argument("--client", metavar="NAME",
                   help="the last inventory client NAME sent (sysclone clients)")
    p.add_argument("--kernel", metavar="NAME|DIR",
                   help="the full kernel, to name missing drivers (default: the manifest's)")

    p = add(sub, "serve", cmd_serve,
            "run the image server: an rsync daemon exporting the images read-only and the "
            "HTTP API clients fetch instructions from and report progress to")
    p.add_argument("--address", default="127.0.0.1", help="address to listen on")
    p.add_argument("--rsync-port", type=int, default=873)
    p.add_argument("--http-port", type=int, default=8181)
    p.add_argument("--default-image", help="image for clients that name none")
    p.add_argument("--post-action", choices=("reboot", "poweroff", "shell"),
                   help="override the clients' post-install action")
    p.add_argument("--hosts-allow", action="append", metavar="NET",
                   help="rsync 'hosts allow' entry (repeatable)")

    # media iso|usb|pxe, pxe build (its old name), bootserver
    mediacli.add_media_commands(sub, add)
    # updateclient, push-update
    updatecli.add_update_commands(sub, add)

    p = add(sub, "demo", cmd_demo,
            "the whole job on a QEMU machine: bootstrap an image, build the boot environment, "
            "serve, PXE-install a blank VM, then boot it from its own disk")
    p.add_argument("--image", default="demo")
    p.add_argument("--hostname", default="demo-node1")
    p.add_argument("--memory", type=int, default=512, help="VM memory in MiB (default 512)")
    p.add_argument("--disk-size", type=int, default=4, help="VM disk in GiB (default 4)")
    p.add_argument("--timeout", type=int, default=1800, help="seconds before giving up")
    p.add_argument("--flavor", default="amd64",
                   help="kernel flavor of the boot environment (default: amd64)")

    p = add(sub, "params", cmd_params, "describe every install parameter the agent reads")
    p.add_argument("--markdown", action="store_true")
    p = add(sub, "clients", cmd_clients,
            "show what the monitor last heard from each client; `clients show NAME`: a "
            "client's last inventory (PCI devices, disks, NICs, CPU, memory, firmware, DMI); "
            "`clients reinstall NAME`: install it again at its next network boot (after an "
            "install its PXE entry boots its local disk)")
    p.add_argument("show", nargs="*", metavar="show NAME", help="one client's inventory")
    p.add_argument("--json", action="store_true", help="with show: the inventory as JSON")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    ui = Ui(quiet=args.quiet)
    try:
        state = StateRoot.from_options(args.root, args.cache)
        return int(args.fn(args, state, ui))
    except SyscloneError as e:
        if args.debug:
            raise
        print(f"sysclone: error: {e}", file=sys.stderr)
        # Some commands give errors their own status: 2 for bad usage, 3 for
        # an update rolled back (updateclient), 2 for diff and verify.
        status = e.fields.get("status")
        return status if isinstance(status, int) and status > 1 else 1
    except OSError as e:
        # A path the user gave that cannot be used (permissions, a full
        # disk, a file where a directory belongs): one line, like the rest.
        if args.debug:
            raise
        where = f": {e.filename}" if e.filename else ""
        print(f"sysclone: error: {e.strerror or e}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("sysclone: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
