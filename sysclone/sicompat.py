"""SystemImager's command names, as thin front ends to `sysclone image`.

    si_getimage --golden-client HOST --image NAME   -> image capture NAME --from ...
    si_prepareclient --server HOST                  -> client prepare --server HOST
    si_lsimage                                      -> image list
    si_rmimage NAME                                 -> image delete NAME
    si_cpimage SRC DEST                             -> image copy SRC DEST
    si_mvimage SRC DEST                             -> image rename SRC DEST

Options are SystemImager 4.x's, with its single-dash spellings and unique
abbreviations (-golden-client, -im).  Options for things sysclone does
differently are accepted and ignored with a note (listed in DROPPED and in
the README), so old scripts keep running.  The state root is
$SYSCLONE_ROOT (default /var/lib/sysclone), as for `sysclone`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sysclone import cli

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
    "--force": "nothing to confirm",
    "--verbose": "sysclone is verbose by default (-q for less)",
    "--server": "si_lsimage lists this server's own store",
}


def _parser(prog: str, description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=description,
                                 epilog="Single-dash spellings (-image) and unique "
                                        "abbreviations (-im) work as in SystemImager.")
    ap.add_argument("-q", "--quiet", "-quiet", action="store_true")
    return ap


def _opt(ap: argparse.ArgumentParser, name: str, **kw: object) -> None:
    ap.add_argument(f"--{name}", f"-{name}", **kw)  # type: ignore[arg-type]


def _dropped(ap: argparse.ArgumentParser, *names: str, flag: bool = False) -> None:
    for n in names:
        kw: dict[str, object] = {} if flag else {"metavar": "VALUE"}
        ap.add_argument(n, "-" + n.lstrip("-"), dest=f"dropped_{n.strip('-')}",
                        action="store_true" if flag else "store",
                        help=f"ignored: {DROPPED[n]}", **kw)  # type: ignore[arg-type]


def _notes(a: argparse.Namespace) -> None:
    for k, v in vars(a).items():
        if k.startswith("dropped_") and v not in (None, False):
            opt = "--" + k.removeprefix("dropped_")
            print(f"{opt}: ignored ({DROPPED.get(opt, 'not used by sysclone')})",
                  file=sys.stderr)


def _run(argv: list[str], a: argparse.Namespace) -> int:
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
    argv = ["image", "capture", a.image]
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
    return _run(argv, a)


def si_prepareclient(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_prepareclient", "Export this golden client once to the image server "
                                     "(sysclone client prepare).")
    _opt(ap, "server", required=True, metavar="HOST")
    _opt(ap, "timeout", type=int, default=3600, metavar="SECONDS")
    _opt(ap, "port", type=int, default=873)
    _opt(ap, "secret-file", metavar="FILE")
    _dropped(ap, "--my-modules", "--no-uyok", "--yes", flag=True)
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
    return _run(["image", "delete", a.image], a)


def si_cpimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_cpimage", "Copy an image (sysclone image copy).")
    ap.add_argument("source")
    ap.add_argument("destination")
    _dropped(ap, "--directory")
    _dropped(ap, "--verbose", flag=True)
    a = ap.parse_args(args)
    return _run(["image", "copy", a.source, a.destination], a)


def si_mvimage(args: Sequence[str] | None = None) -> int:
    ap = _parser("si_mvimage", "Rename an image (sysclone image rename).")
    ap.add_argument("source")
    ap.add_argument("destination")
    _dropped(ap, "--verbose", flag=True)
    a = ap.parse_args(args)
    return _run(["image", "rename", a.source, a.destination], a)
