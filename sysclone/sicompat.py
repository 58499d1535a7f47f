"""SystemImager's command names, as thin front ends to `sysclone image`.

    si_getimage --golden-client HOST --image NAME   -> image capture NAME --from ...
    si_prepareclient --server HOST                  -> client prepare --server HOST
    si_lsimage                                      -> image list
    si_rmimage NAME                                 -> image delete NAME
    si_cpimage SRC DEST                             -> image copy SRC DEST
    si_mvimage SRC DEST                             -> image rename SRC DEST
    si_updateclient --server HOST [--image NAME]    -> updateclient --server HOST ...
    si_pushupdate --client HOSTS --server HOST      -> push-update HOSTS... --server HOST
    si_mkbootserver --interface IFACE               -> bootserver --interface IFACE
    si_mkautoinstallcd --out-file FILE              -> media iso --output FILE
    si_mkautoinstalldisk --device DEV|--out-file F  -> media usb --device DEV|--output F
    si_mkclientnetboot --netboot|--localboot --clients C  -> media pxe --client/--local C

Options are SystemImager 4.x's, with its single-dash spellings and unique
abbreviations (-golden-client, -im).  Options for things sysclone does
differently are accepted and ignored with a note (listed in DROPPED and in
the README), so old scripts keep running.  Those that would do something
else than asked if ignored (leave a disk out of the layout, skip the
export, act on another server) are refused with one line naming what to
use instead (REFUSED).  The state root is
$SYSCLONE_ROOT (default /var/lib/sysclone), as for `sysclone`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sysclone import cli
from sysclone.errors import ConfigError

# option -> why it is accepted but does nothing
DROPPED = {
    "--update-script": "there are no .master scripts: the layout is recorded with each "
                       "version and found by the usual lookup",
    "--autodetect-disks": "the agent always maps the layout's disks to the client's",
    "--ip-assignment": "clients configure their network from the install parameters",
    "--post-install": "use the install parameter si.post-action (or `serve --post-action`)",
    "--listing": "rsync progress is shown instead of a file listing",
    "--directory": "images live in $SYSCLONE_ROOT/images",
    "--log": "sysclone logs to stderr; --debug shows every command",
    "--overrides": "overrides are chosen per client by the server",
    "--my-modules": "UYOK boot environments are not built on the golden client",
    "--no-uyok": "UYOK boot environments are not built on the golden client",
    "--yes": "sysclone asks no questions",
    "--force": "nothing to confirm; an image is never overwritten",
    "--verbose": "sysclone is verbose by default (-q for less)",
    "--server": "si_lsimage lists this server's own store",
    "--configure-from": "--autoinstall reads the live network of the default route's NIC",
    "--no-bootloader": "the boot loader is refreshed only when a kernel changed",
    "--reboot": "--autoinstall reboots (kexec with --kexec); an update asks for no reboot",
    "--override": "overrides are chosen per client by the server",
    "--updateclient-options": "give push-update's own options (--dry-run, --exclude...)",
    "--range": "name each client",
    "--continue-install": "updateclient never reinstalls; see --autoinstall",
    "--kernel": "the boot environment comes from `sysclone bootenv build`",
    "--initrd": "the boot environment comes from `sysclone bootenv build`",
    "--flavor": "the boot environment comes from `sysclone bootenv build`",
    "--ssh-key": "UYOK boot environments are not built on the golden client",
    "--authorized-keys": "UYOK boot environments are not built on the golden client",
    "--modules-dir": "UYOK boot environments are not built on the golden client",
    "--filesystem": "UYOK boot environments are not built on the golden client",
    "--image": "UYOK boot environments are not built on the golden client",
}

# option -> why it is refused, and what does the job
REFUSED = {
    "--no-rsyncd": "the one-shot export is what si_prepareclient is for; to capture "
                   "without it: si_getimage --ssh-user USER",
    "--explicit-geometry": "give it to the capture: sysclone image capture "
                           "--explicit-geometry (every disk's sizes kept exactly)",
    "--exclude-disk": "the layout records every disk; capture, then record an edited "
                      "one: sysclone image capture --layout FILE",
}
# si_cpimage's --server and --ssh-user
COPY_ELSEWHERE = "sysclone copies within this server's store; run si_cpimage there"


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 epilog="Single-dash spellings (-image) and unique "
                                        "abbreviations (-im) work as in SystemImager.")
    ap.add_argument("-q", "--quiet", "-quiet", action="store_true")
    # Where _refusal finds the command's name and why each refused option is.
    ap.set_defaults(prog=prog, refusal_reasons={})
    return ap


def _opt(ap: argparse.ArgumentParser, name: str, **kw: object) -> None:
    ap.add_argument(f"--{name}", f"-{name}", **kw)  # type: ignore[arg-type]


def _special(ap: argparse.ArgumentParser, kind: str, reasons: dict[str, str],
             flag: bool) -> None:
    """4.x options sysclone does not act on: `kind` dropped (accepted, a
    note) or refused (one line, nothing run), each with its reason."""
    for n, why in reasons.items():
        kw: dict[str, object] = {} if flag else {"metavar": "VALUE"}
        ap.add_argument(n, "-" + n.lstrip("-"), dest=f"{kind}_{n.strip('-')}",
                        action="store_true" if flag else "store",
                        help=f"{'ignored' if kind == 'dropped' else 'refused'}: {why}",
                        **kw)  # type: ignore[arg-type]


def _dropped(ap: argparse.ArgumentParser, *names: str, flag: bool = False) -> None:
    _special(ap, "dropped", {n: DROPPED[n] for n in names}, flag)


def _refused(ap: argparse.ArgumentParser, *names: str, flag: bool = False,
             why: str | None = None) -> None:
    reasons = {n: why or REFUSED[n] for n in names}
    ap.set_defaults(refusal_reasons={**ap.get_default("refusal_reasons"), **reasons})
    _special(ap, "refused", reasons, flag)


def _refusal(a: argparse.Namespace) -> str | None:
    """The one line saying why an option given is refused, if one is."""
    for opt, why in a.refusal_reasons.items():
        if getattr(a, f"refused_{opt.strip('-')}") not in (None, False):
            return f"{a.prog}: {opt} is not supported: {why}"
    return None


def _notes(a: argparse.Namespace) -> None:
    for k, v in vars(a).items():
        if k.startswith("dropped_") and v not in (None, False):
            opt = "--" + k.removeprefix("dropped_")
            print(f"{opt}: ignored ({DROPPED.get(opt, 'not used by sysclone')})",
                  file=sys.stderr)


def _run(argv: list[str], a: argparse.Namespace) -> int:
    """Run `sysclone ARGV`.  Values the user gave as positionals go after a
    `--` in ARGV (callers put it there): `si_rmimage -- -x` deletes an
    image named '-x' (refused as a name), it never becomes an option."""
    refusal = _refusal(a)
    if refusal:
        print(refusal, file=sys.stderr)
        return 2
    _notes(a)
    return cli.main([*(["-q"] if a.quiet else []), *argv])


def si_getimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_getimage", "Pull a golden client into an image "
                                "(sysclone image capture).")
    _opt(ap, "golden-client", required=True, metavar="HOST")
    _opt(ap, "image", required=True, metavar="NAME")
    _opt(ap, "ssh-user", metavar="USER",
         help="pull over SSH as USER (default: from a si_prepareclient export)")
    _opt(ap, "ssh-key", metavar="FILE")
    _opt(ap, "secret-file", metavar="FILE",
         help="the secret si_prepareclient printed (sysclone's exports have one)")
    _opt(ap, "exclude", action="append", default=[], metavar="PATH")
    _opt(ap, "exclude-file", action="append", default=[], metavar="FILE")
    _dropped(ap, "--update-script", "--ip-assignment", "--post-install", "--directory",
             "--log", "--overrides")
    _dropped(ap, "--autodetect-disks", "--listing", flag=True)
    a = ap.parse_args(args)
    host = a.golden_client
    problem = _golden_client_problem(host)
    if problem:
        print(f"si_getimage: {problem}", file=sys.stderr)
        return 2
    argv = ["image", "capture"]
    if (a.ssh_user or a.ssh_key) and a.secret_file:
        print("si_getimage: --secret-file is for a si_prepareclient export, not with "
              "--ssh-user or --ssh-key (SSH)", file=sys.stderr)
        return 2
    if a.ssh_user or a.ssh_key:
        argv += ["--from", f"ssh://{a.ssh_user or 'root'}@{host}"]
        argv += ["--ssh-key", a.ssh_key] if a.ssh_key else []
    else:
        argv += ["--from", f"rsync://{host}/sysclone"]
        argv += ["--secret-file", a.secret_file] if a.secret_file else []
    for e in a.exclude:
        argv += ["--exclude", e]
    for f in a.exclude_file:
        argv += ["--exclude-from", f]
    return _run([*argv, "--", a.image], a)


def _golden_client_problem(host: str) -> str | None:
    """--golden-client is a host as this server reaches it, nothing else:
    it goes into an ssh:// or rsync:// source."""
    from imageserver.sources import check_host

    try:
        check_host(host)
    except ConfigError:
        local = " (for a local directory: sysclone image capture NAME --from DIR)" \
            if "/" in host else ""
        return (f"--golden-client {host!r} is not a host name or an IP address: the golden "
                f"client, as this server reaches it{local}")
    return None


def si_prepareclient(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_prepareclient", "Export this golden client once to the image server "
                                     "(sysclone client prepare).")
    _opt(ap, "server", required=True, metavar="HOST")
    _opt(ap, "timeout", type=int, default=3600, metavar="SECONDS")
    _opt(ap, "port", type=int, default=873)
    _opt(ap, "secret-file", metavar="FILE")
    _dropped(ap, "--my-modules", "--no-uyok", "--yes", flag=True)
    _dropped(ap, "--ssh-key", "--authorized-keys", "--modules-dir", "--filesystem", "--image")
    _refused(ap, "--no-rsyncd", flag=True)
    _refused(ap, "--explicit-geometry", "--exclude-disk")
    ap.add_argument("-e", dest="refused_exclude-disk", metavar="DEVICE", help=argparse.SUPPRESS)
    a = ap.parse_args(args)
    argv = ["client", "prepare", "--server", a.server, "--timeout", str(a.timeout),
            "--port", str(a.port)]
    argv += ["--secret-file", a.secret_file] if a.secret_file else []
    return _run(argv, a)


def si_lsimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_lsimage", "List the images (sysclone image list).")
    _dropped(ap, "--server")
    _dropped(ap, "--verbose", flag=True)
    return _run(["image", "list"], ap.parse_args(args))


def si_rmimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_rmimage", "Delete an image (sysclone image delete).")
    ap.add_argument("image")
    _dropped(ap, "--force", "--verbose", flag=True)
    a = ap.parse_args(args)
    return _run(["image", "delete", "--", a.image], a)


def si_cpimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_cpimage", "Copy an image (sysclone image copy).")
    ap.add_argument("source")
    ap.add_argument("destination")
    _dropped(ap, "--directory")
    _dropped(ap, "--verbose", "--force", flag=True)
    _refused(ap, "--server", "--ssh-user", why=COPY_ELSEWHERE)
    a = ap.parse_args(args)
    return _run(["image", "copy", "--", a.source, a.destination], a)


def si_mvimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mvimage", "Rename an image (sysclone image rename).")
    ap.add_argument("source")
    ap.add_argument("destination")
    _dropped(ap, "--verbose", "--force", flag=True)
    a = ap.parse_args(args)
    return _run(["image", "rename", "--", a.source, a.destination], a)


def _words(values: list[str]) -> list[str]:
    """SystemImager took lists as one quoted string: "node1 node2" or "a,b"."""
    return [w for v in values for w in v.replace(",", " ").split()]


def si_updateclient(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_updateclient", "Update this client to its image, or reinstall it "
                                    "(sysclone updateclient).")
    _opt(ap, "server", metavar="HOST")
    _opt(ap, "image", metavar="NAME[@N]")
    _opt(ap, "dry-run", action="store_true")
    _opt(ap, "autoinstall", action="store_true")
    _opt(ap, "rollback", action="store_true")
    _opt(ap, "exclude", action="append", default=[], metavar="PATTERN")
    _dropped(ap, "--configure-from", "--override", "--directory", "--log", "--flavor")
    _dropped(ap, "--no-bootloader", "--reboot", "--yes", flag=True)
    a = ap.parse_args(args)
    argv = ["updateclient"]
    argv += ["--server", a.server] if a.server else []
    argv += ["--image", a.image] if a.image else []
    argv += [f for f, on in (("--dry-run", a.dry_run), ("--autoinstall", a.autoinstall),
                             ("--rollback", a.rollback)) if on]
    for e in a.exclude:
        argv += ["--exclude", e]
    return _run(argv, a)


def si_pushupdate(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_pushupdate", "Update many clients over SSH (sysclone push-update).")
    ap.add_argument("--client", "-client", "--clients", "-clients", dest="client",
                    action="append", required=True, metavar="HOSTS",
                    help="clients, space- or comma-separated (repeatable)")
    _opt(ap, "server", required=True, metavar="HOST",
         help="the image server, as the clients reach it")
    _opt(ap, "image", metavar="NAME[@N]")
    _opt(ap, "ssh-user", metavar="USER")
    _opt(ap, "concurrency", type=int, metavar="N")
    _dropped(ap, "--updateclient-options", "--range")
    _dropped(ap, "--continue-install", flag=True)
    a = ap.parse_args(args)
    clients = [f"{a.ssh_user}@{c}" if a.ssh_user and "@" not in c else c
               for c in _words(a.client)]
    argv = ["push-update", "--server", a.server]
    argv += ["--image", a.image] if a.image else []
    argv += ["--concurrency", str(a.concurrency)] if a.concurrency else []
    return _run([*argv, "--", *clients], a)


def si_mkbootserver(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mkbootserver", "Configure and run the boot server: dnsmasq for DHCP "
                                    "and TFTP (sysclone bootserver).")
    _opt(ap, "interface", required=True, metavar="IFACE")
    _opt(ap, "address", metavar="ADDR/PREFIX")
    _opt(ap, "mode", choices=("full", "proxy"), default="full")
    _opt(ap, "dhcpd", metavar="FILE", help="also write an ISC dhcpd fragment")
    _opt(ap, "run", action="store_true", help="run dnsmasq in the foreground")
    a = ap.parse_args(args)
    argv = ["bootserver", "--interface", a.interface, "--mode", a.mode]
    argv += ["--address", a.address] if a.address else []
    argv += ["--dhcpd", a.dhcpd] if a.dhcpd else []
    argv += ["--run"] if a.run else []
    return _run(argv, a)


def _media_options(ap: argparse.ArgumentParser) -> None:
    _opt(ap, "append", action="append", default=[], metavar="STRING")
    _opt(ap, "config", metavar="FILE", help="a local.cfg for the agent")
    _dropped(ap, "--kernel", "--initrd", "--flavor")


def _media_argv(a: argparse.Namespace) -> list[str]:
    argv: list[str] = []
    for s in a.append:
        argv += ["--append", s]
    argv += ["--local-cfg", a.config] if a.config else []
    return argv


def si_mkautoinstallcd(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mkautoinstallcd", "Make a boot ISO (sysclone media iso).")
    _opt(ap, "out-file", required=True, metavar="FILE")
    _media_options(ap)
    a = ap.parse_args(args)
    return _run(["media", "iso", "--output", a.out_file, *_media_argv(a)], a)


def si_mkautoinstalldisk(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mkautoinstalldisk", "Make a USB boot disk (sysclone media usb).")
    _opt(ap, "device", metavar="DEV")
    _opt(ap, "out-file", metavar="FILE")
    _opt(ap, "force", action="store_true")
    _media_options(ap)
    a = ap.parse_args(args)
    argv = ["media", "usb"]
    argv += ["--device", a.device] if a.device else []
    argv += ["--output", a.out_file] if a.out_file else []
    argv += ["--force"] if a.force else []
    return _run([*argv, *_media_argv(a)], a)


def si_mkclientnetboot(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mkclientnetboot", "Set clients to install, or to boot their disk, at "
                                       "their next network boot (sysclone media pxe).")
    _opt(ap, "netboot", action="store_true")
    _opt(ap, "localboot", action="store_true")
    _opt(ap, "clients", action="append", default=[], metavar="CLIENTS",
         help="MACs, addresses or networks, space- or comma-separated")
    _opt(ap, "append", action="append", default=[], metavar="STRING")
    _dropped(ap, "--flavor")
    a = ap.parse_args(args)
    if a.netboot == a.localboot:
        ap.error("give --netboot or --localboot")
    argv = ["media", "pxe"]
    for s in a.append:
        argv += ["--append", s]
    for c in _words(a.clients):
        argv += ["--local", c] if a.localboot else ["--client", c, ""]
    return _run(argv, a)
