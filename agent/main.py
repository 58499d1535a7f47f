"""The agent's entry point (the frozen `sysclone-agent` binary).

    sysclone-agent run       install, as /init runs it in the boot environment
    sysclone-agent plan      detect and validate, print the plan, touch nothing
    sysclone-agent phases    list the phases (si.break names)
    sysclone-agent params    describe every install parameter
    sysclone-agent selftest  import every module the install can need (build check)

Exit status 0 means the install succeeded.  The post-install action is left
in /run/sysclone/post-action for /init to carry out.
"""

from __future__ import annotations

# Only sys and time at module level (both built into the interpreter): the
# install's clock starts before the rest of the agent is imported, which
# under emulation takes seconds (the ready marker comes after it).
import sys
import time

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging

STARTED = time.monotonic()

RUN_DIR = "/run/sysclone"

# What `run` imports before the ready marker (with what they import): the
# boot environment keeps their bytecode in the archive the kernel unpacks,
# out of the squashfs (bootenv.freeze.start_files), since reading it from
# there cold is a good part of the agent's start under emulation.
START_IMPORTS = ("logging", "pathlib", "agent.report", "agent.start", "agent.params")


def _setup_logging() -> logging.Handler:
    """The log file, and the console at WARNING; returns the console's
    handler (si.debug lowers its level once the parameters are read)."""
    import logging
    from pathlib import Path

    run_dir = Path(RUN_DIR)
    run_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    root.setLevel(logging.DEBUG)
    fh = logging.FileHandler(run_dir / "agent.log")
    fh.setLevel(logging.DEBUG)
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(fh)
    ch = logging.StreamHandler(sys.stdout)
    ch.setLevel(logging.WARNING)
    ch.setFormatter(logging.Formatter("sysclone: %(levelname)s: %(message)s"))
    root.addHandler(ch)
    return ch


def main(argv: list[str] | None = None) -> int:
    args_in = sys.argv[1:] if argv is None else argv
    from pathlib import Path

    if args_in in ([], ["run"]):
        # How /init starts it: no argparse to import (a cold import of it
        # is a good part of a second under emulation).
        command, cmdline = "run", "/proc/cmdline"
    else:
        import argparse

        ap = argparse.ArgumentParser(prog="sysclone-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
        ap.add_argument("command", nargs="?", default="run",
                        choices=("run", "plan", "phases", "params", "selftest"))
        ap.add_argument("--cmdline", default="/proc/cmdline",
                        help="read install parameters from this file instead")
        args = ap.parse_args(args_in)
        command, cmdline = args.command, args.cmdline

    if command == "phases":
        from agent.phases import PHASES

        for p in PHASES:
            aliases = f"  (SystemImager: {', '.join(p.si_names)})" if p.si_names else ""
            print(f"{p.name:<13} {p.title}{aliases}")
        return 0
    if command == "params":
        from agent.params import render_docs

        print(render_docs("text"))
        return 0

    if command == "selftest":
        return selftest()

    console = _setup_logging()
    from agent.report import Reporter

    reporter = Reporter()
    from agent.start import run_install

    try:
        from agent.params import read_cmdline

        if read_cmdline(cmdline).value("si.debug", False):
            import logging  # imported by _setup_logging already

            console.setLevel(logging.DEBUG)
    except Exception:  # a bad cmdline is reported properly inside the flow
        pass
    # The ready marker follows once the parameters are read (agent.session).
    return run_install(reporter, Path(cmdline), plan_only=command == "plan", started=STARTED)


def exit_now(rc: int) -> None:
    """Leave without the interpreter's teardown (the boot environment's
    /init calls this): tearing down touches every object the agent made,
    and a 128 MiB client that swapped during the install must bring them
    all back in to free them -- it spun in reclaim for minutes after the
    install was done instead of rebooting.  Output is flushed first; the
    install's own files were synced in the finish phase."""
    import contextlib
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(rc)


# Imported lazily during an install; a frozen build must contain all of them.
# pyroute2's are in agent.pyroute2_light.MODULES (imported without its __init__).
LAZY_IMPORTS = ("parted", "pyudev", "blkinfo", "ipaddress", "tarfile", "urllib.request")


def selftest() -> int:
    """Import every agent module and every lazily imported dependency."""
    import importlib
    import pkgutil

    import agent
    from agent.frozen import install_find_library

    install_find_library()
    from agent import pyroute2_light

    names = [m.name for m in pkgutil.walk_packages(agent.__path__, "agent.")]
    failed = []
    try:
        pyroute2_light.import_all()
    except Exception as e:
        failed.append(f"pyroute2: {type(e).__name__}: {e}")
    for name in [*names, *LAZY_IMPORTS]:
        try:
            importlib.import_module(name)
        except Exception as e:
            failed.append(f"{name}: {type(e).__name__}: {e}")
    import ctypes
    import ctypes.util

    # Libraries ctypes loads by name (pyudev's libudev, agent.kmod's libkmod):
    # found the way those modules find them, where an initramfs has no
    # ldconfig cache.
    for lib in ("udev", "kmod"):
        soname = ctypes.util.find_library(lib)
        try:
            if not soname:
                raise OSError("not found")
            ctypes.CDLL(soname)
        except OSError as e:
            failed.append(f"library {lib}: {e}")
    import codecs

    # Codecs are looked up by name, not imported: a missing one is a
    # LookupError in the middle of a phase.
    for enc in ("utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32",
                "utf-32-le", "utf-32-be", "latin-1", "ascii", "cp437", "cp1252", "idna",
                "unicode-escape", "raw-unicode-escape"):
        try:
            codecs.lookup(enc)
        except LookupError as e:
            failed.append(f"codec {enc}: {e}")
    for f in failed:
        print(f"selftest: cannot import {f}")
    print(f"selftest: {len(names) + len(LAZY_IMPORTS) - len(failed)} modules imported, "
          f"{len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
