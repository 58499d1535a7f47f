"""`sysclone media iso|usb|pxe` (and `pxe build`), `sysclone bootserver` and
`sysclone clients reinstall`: everything that makes machines boot the
boot environment, and the boot server that hands it out."""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sysclone import checks
from sysclone.errors import ConfigError
from sysclone.paths import StateRoot
from sysclone.ui import Ui

Add = Callable[..., argparse.ArgumentParser]
APPEND_HELP = ("install parameters and kernel options, as on SystemImager's --append "
               "(IMAGESERVER=10.0.0.3 IMAGENAME=web console=ttyS0,115200); repeatable")


def _append(a: argparse.Namespace, ui: Ui) -> str:
    """The kernel command line: --append words (and a positional list for
    `pxe build`), checked as the agent will read them."""
    from agent.params import parse_cmdline
    from mkmedia.menus import check_append

    words = [*(a.append or ()), *(getattr(a, "words", None) or ())]
    append = check_append(" ".join(words))
    for w in parse_cmdline(append, name="the APPEND line").warnings:
        ui.info(f"warning: {w}")
    return append


def _local_cfg(a: argparse.Namespace, ui: Ui) -> str | None:
    from mkmedia.localcfg import read_checked

    if not a.local_cfg:
        return None
    text, warnings = read_checked(Path(a.local_cfg))
    for w in warnings:
        ui.info(f"warning: {w}")
    return text


def check_install_params(append: str, local_cfg: str | None = None,
                         what: str = "the APPEND line", cfg_name: str = "local.cfg") -> None:
    """The parameters a boot entry or medium gives, resolved and checked
    as the agent will at its start (agent.params.checked): a refused
    parameter, an unknown si.break step or static addressing that does not
    fit is one error here, not a stopped install on every client."""
    from agent.params import parse_cmdline, parse_local_cfg
    from agent.params.checked import checked

    layers = [parse_cmdline(append, name=what)]
    if local_cfg is not None:
        layers.append(parse_local_cfg(local_cfg, name=cfg_name))
    checked(layers)


def _medium(a: argparse.Namespace, state: StateRoot, ui: Ui) -> Any:
    from mkmedia.iso import MediumSpec

    bootenv = checks.bootenv_dir(a.bootenv, state)
    _timeout(a.timeout)
    append, local_cfg = _append(a, ui), _local_cfg(a, ui)
    check_install_params(append, local_cfg, cfg_name=f"local.cfg at {a.local_cfg}")
    return MediumSpec(bootenv / "kernel", bootenv / "initrd.img", append, local_cfg,
                      a.timeout)


def _warn_unsigned(kernel: Path, ui: Ui) -> None:
    """One line, after what was made, when its UEFI path (shim + GRUB)
    would refuse the kernel under Secure Boot."""
    from mkmedia.secureboot import unsigned_warning

    if kernel.is_file():
        warning = unsigned_warning(kernel)
        if warning:
            ui.info(warning)


def _timeout(seconds: int) -> None:
    if not 0 <= seconds <= 3600:
        raise ConfigError(f"--timeout {seconds}: seconds from 0 to 3600")


def _output_file(value: str, state: StateRoot, option: str = "--output") -> Path:
    """A file sysclone writes: not a directory, in a directory, and never
    inside the image store (named as given: the user typed the file)."""
    path = Path(value).absolute()
    if path.is_dir():
        raise ConfigError(f"{option} {value} is a directory", hint="name the file to write")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"{option} {value}: {path.parent} is not a directory")
    checks.outside_images(path, value, option, state)
    return path


# -------------------------------------------------------------------- media ---

def cmd_media_iso(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from mkmedia.iso import build_iso

    if not a.output:
        raise ConfigError("media iso: --output FILE is required (the ISO to write)")
    out = _output_file(a.output, state)
    spec = _medium(a, state, ui)
    with ui.step(f"hybrid ISO {out}"), tempfile.TemporaryDirectory(
            prefix="sysclone-iso.") as work:
        build_iso(out, spec, Path(work))
    ui.info(f"{out}: {out.stat().st_size / 2**20:.0f} MiB; boots BIOS (isolinux) and UEFI "
            "(shim + GRUB, Secure Boot too) from a disc, or written raw to a USB stick")
    _warn_unsigned(spec.kernel, ui)
    return 0


def cmd_media_usb(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from mkmedia import usb

    if a.output and a.device:
        raise ConfigError("media usb: --output and --device exclude each other",
                          hint="give --output FILE for a disk image, or --device DEV for a stick")
    if not a.output and not a.device:
        raise ConfigError("media usb: give --output FILE (a disk image) or --device DEV")
    checks.positive(a.max_size, "--max-size")
    usb.check_data_size(a.data_size)
    facts = None
    if a.device:
        facts = usb.device_facts(a.device)
        usb.check_device(facts, max_bytes=a.max_size * 10**9, force=a.force)
    spec = _medium(a, state, ui)
    if a.output:
        out = _output_file(a.output, state)
        with ui.step(f"USB disk image {out}"):
            usb.build_image(out, spec, data_mib=a.data_size)
        ui.info(f"{out}: {out.stat().st_size / 2**20:.0f} MiB; write it to a stick with "
                f"`sysclone media usb --device DEV` or dd; edit local.cfg on its "
                f"{usb.DATA_LABEL} partition")
        _warn_unsigned(spec.kernel, ui)
        return 0
    assert facts is not None
    with tempfile.TemporaryDirectory(prefix="sysclone-usb.") as work:
        image = Path(work) / "usb.img"
        with ui.step(f"USB disk for {facts.path}"):
            usb.build_image(image, spec, data_mib=a.data_size)
        with ui.step(f"write {facts.path} ({facts.size / 1e9:.1f} GB)"):
            usb.write_device(image, facts)
    ui.info(f"{facts.path} boots BIOS and UEFI machines; local.cfg is on its "
            f"{usb.DATA_LABEL} partition")
    _warn_unsigned(spec.kernel, ui)
    return 0


def _client_entries(a: argparse.Namespace, default: str) -> list[Any]:
    """--client SELECTOR APPEND and --local SELECTOR as tree entries; a
    client's words come after the default's, so they win (the last
    occurrence counts).  One client given two different entries is
    refused: which one was meant cannot be guessed."""
    from mkmedia.clientkeys import parse_selector
    from mkmedia.menus import check_append
    from mkmedia.pxe import ClientEntry

    entries: list[tuple[str, Any]] = []  # (the option as typed, its entry)
    for selector, words in a.client or ():
        key = parse_selector(selector).name
        append = f"{default} {check_append(words)}".strip()
        check_install_params(append, what=f"--client {selector}")
        entries.append((f"--client {selector} {words!r}", ClientEntry(key, "install", append)))
    for selector in a.local or ():
        entries.append((f"--local {selector}", ClientEntry(parse_selector(selector).name,
                                                           "local")))
    out: dict[str, tuple[str, Any]] = {}
    for option, entry in entries:
        first = out.setdefault(entry.key, (option, entry))
        if first[1] != entry:
            raise ConfigError(f"{first[0]} and {option} name the same client: give it one "
                              "entry", hint="--client for its own parameters, or --local")
    return [entry for _, entry in out.values()]


def cmd_media_pxe(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver.netboot import register_tree
    from mkmedia.pxe import LOADERS, TreeInfo, build_tree, ipxe_unmatched

    bootenv = checks.bootenv_dir(a.bootenv, state)
    out = checks.output_dir(a.output, "--output", state) if a.output else state.pxe
    if out.resolve() == bootenv.resolve():
        raise ConfigError(f"the PXE tree {out} is the boot environment itself",
                          hint="write it to another directory with --output")
    loaders = tuple(x for x in (a.loaders or ",".join(LOADERS)).replace(" ", ",").split(",")
                    if x)
    for x in loaders:
        if x not in LOADERS:
            raise ConfigError(f"--loaders: unknown loader {x!r}",
                              hint="choose from " + ", ".join(LOADERS))
    _timeout(a.timeout)
    append = _append(a, ui)
    check_install_params(append)
    clients = _client_entries(a, append)
    info = TreeInfo(append, loaders, switch=not a.no_switch, timeout=a.timeout)
    tree = build_tree(out, bootenv / "kernel", bootenv / "initrd.img", info, clients)
    register_tree(state, tree)
    files = {"pxelinux": "pxelinux.0 (BIOS)", "grub": "bootx64.efi (UEFI, shim + GRUB)",
             "ipxe": "ipxe.efi / undionly.kpxe (iPXE), then boot.ipxe"}
    ui.info(f"PXE tree in {tree}: boot files " + ", ".join(files[x] for x in loaders))
    unmatched = ipxe_unmatched(info, clients)
    if unmatched:
        ui.info(f"warning: {unmatched}")
    if info.switch:
        ui.info("    clients that finish an install boot their disk next time "
                "(sysclone clients reinstall NAME to undo)")
    ui.info("    serve it with `sysclone bootserver --run`, or any TFTP server")
    if "grub" in loaders:
        _warn_unsigned(tree / "kernel", ui)
    return 0


def reinstall_client(name: str, state: StateRoot, ui: Ui) -> int:
    """`sysclone clients reinstall NAME`."""
    from imageserver.netboot import reinstall

    changed = reinstall(state, name)
    if not changed:
        ui.info(f"{name} already installs at its next network boot")
    for tree, key in changed:
        ui.info(f"{name}: {tree} entry {key} installs at the next network boot")
    return 0


# -------------------------------------------------------------- bootserver ---

def cmd_bootserver(a: argparse.Namespace, state: StateRoot, ui: Ui) -> int:
    from imageserver import bootserver

    cfg = bootserver.config_from_options(state, a)
    conf = _output_file(a.output, state) if a.output else state.run / "dnsmasq.conf"
    snippet = _output_file(a.dhcpd, state, "--dhcpd") if a.dhcpd else None
    text = bootserver.render_dnsmasq(cfg)
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(text)
    # Only what the file holds: proxy mode sends boot files, no option 140.
    if cfg.mode == "full":
        what = f"full DHCP on {cfg.interface}, option 140 = {cfg.image_server}"
    else:
        what = f"proxy DHCP on {cfg.interface}: boot files only, the site's server the rest"
    ui.info(f"dnsmasq configuration in {conf} ({what}; TFTP from {cfg.tree})")
    for w in cfg.warnings:
        ui.info(f"warning: {w}")
    if snippet is not None:
        snippet.write_text(bootserver.render_dhcpd(cfg))
        ui.info(f"ISC dhcpd configuration in {snippet} (include it from dhcpd.conf)")
    if a.run:
        ui.info(f"running dnsmasq on {cfg.interface}; Ctrl-C stops it")
        return bootserver.run_dnsmasq(conf, cfg)
    return 0


# ------------------------------------------------------------------ parser ---

def _medium_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bootenv", help="boot environment directory (default: "
                                     "ROOT/bootenv/standard)")
    p.add_argument("--append", action="append", metavar="STRING", help=APPEND_HELP)
    p.add_argument("--timeout", type=int, default=0,
                   help="seconds the boot menu waits (default 0: boot at once)")


def _pxe_options(p: argparse.ArgumentParser) -> None:
    _medium_options(p)
    p.add_argument("--output", help="TFTP root to write (default: ROOT/pxe)")
    p.add_argument("--loaders", help="comma-separated: pxelinux (BIOS), grub (UEFI, Secure "
                                     "Boot), ipxe (UEFI HTTP boot, iPXE); default: all")
    p.add_argument("--client", nargs=2, action="append", metavar=("CLIENT", "STRING"),
                   help="a client's own entry: CLIENT is a MAC, an IPv4 address or a network "
                        "(10.0.0.0/24); STRING is added to the default kernel command line")
    p.add_argument("--local", action="append", metavar="CLIENT",
                   help="CLIENT boots its local disk instead of installing")
    p.add_argument("--no-switch", action="store_true",
                   help="do not switch clients to their local disk after an install "
                        "(they install at every network boot)")
    p.add_argument("words", nargs="*", metavar="PARAM",
                   help="more kernel command line words (as `pxe build` took them)")


def add_media_commands(sub: Any, add: Add) -> None:
    m = sub.add_parser("media", help="boot media: ISO, USB disk, PXE tree",
                       description="Make boot media for the boot environment "
                                   "(si_mkautoinstallcd, si_mkautoinstalldisk, "
                                   "si_mkclientnetboot).")
    msub = m.add_subparsers(dest="media_command", metavar="KIND", required=True)
    p = add(msub, "iso", cmd_media_iso,
            "a hybrid ISO booting BIOS (isolinux) and UEFI (shim + GRUB, Secure Boot) machines "
            "from a disc or written raw to a USB stick")
    p.add_argument("--output", metavar="FILE", help="the ISO file to write (required)")
    _medium_options(p)
    p.add_argument("--local-cfg", metavar="FILE",
                   help="a local.cfg the agent reads (over DHCP and the kernel command line)")
    p = add(msub, "usb", cmd_media_usb,
            "a USB boot disk (BIOS and UEFI) with a writable partition for local.cfg and logs, "
            "as a disk image or written to a device")
    p.add_argument("--output", metavar="FILE", help="write a disk image")
    p.add_argument("--device", metavar="DEV", help="write this disk (a USB stick)")
    p.add_argument("--force", action="store_true",
                   help="write --device even if it is not removable or larger than --max-size")
    p.add_argument("--max-size", type=int, default=64, metavar="GB",
                   help="refuse a larger --device without --force (default 64)")
    p.add_argument("--data-size", type=int, default=64, metavar="MiB",
                   help="size of the local.cfg and logs partition, 8 to 32768 (default 64)")
    _medium_options(p)
    p.add_argument("--local-cfg", metavar="FILE",
                   help="the local.cfg to put on the writable partition (default: a "
                        "commented template)")
    p = add(msub, "pxe", cmd_media_pxe,
            "a boot-server tree: pxelinux (BIOS), shim + GRUB (UEFI), iPXE (UEFI HTTP boot), "
            "with per-client entries by MAC or IP")
    _pxe_options(p)

    x = sub.add_parser("pxe", help="PXE boot trees (media pxe)",
                       description="PXE boot trees (the same as `sysclone media pxe`).")
    xsub = x.add_subparsers(dest="pxe_command", metavar="ACTION", required=True)
    p = add(xsub, "build", cmd_media_pxe,
            "write a boot-server tree (pxelinux, GRUB EFI, iPXE) with the boot environment and "
            "install parameters; the same as `sysclone media pxe`")
    _pxe_options(p)

    p = add(sub, "bootserver", cmd_bootserver,
            "configure (and with --run, run) dnsmasq as the boot server: DHCP (full, with "
            "static leases, or proxy), TFTP, option 140 and boot files by firmware; also an "
            "ISC dhcpd snippet (si_mkbootserver, si_mkdhcpserver)")
    from imageserver.bootserver import add_arguments

    add_arguments(p)

