"""Freezing the agent: a Python runtime, the agent and its dependencies,
laid out so that a client with no Python installed runs it.

The layout is the host's own: /usr/bin/python3.11 (Debian links libpython
into it statically) and, in /usr/lib/python3.11, exactly the modules the
agent can import, as sourceless optimized bytecode (.pyc, python -OO), plus
the extension modules they need.  /usr/bin/sysclone-agent runs it with
`-I -S`.  In the rescue shell, `python3` works too.

PyInstaller was used first and measured: its onedir bootloader re-executes
itself and runs runtime hooks (inspect, pkgutil, multiprocessing) before
the program starts, ~170 ms natively against ~25 ms for this layout, and
~3 s against ~0.5 s under QEMU's TCG, which alone broke the agent's
start-up budget (ready within 1.5x of a bare busybox initramfs).

Which modules: everything `modulefinder` finds from the agent's own code
(imports inside functions included), plus everything a run of
`sysclone-agent selftest` actually imports — the only source for the
third-party packages (RUNTIME_ONLY), whose static import graphs are far
wider than what the agent loads — and the pure-Python codecs.  The result
is cached under a key made of its inputs, and rebuilt byte for byte: .pyc
files carry a hash of their source, not a timestamp.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import os
import py_compile
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from sysclone.errors import SyscloneError
from sysclone.paths import StateRoot
from sysclone.run import run

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
FORMAT = 4  # bump when the layout below changes (4: with START_FILES)

# Packages whose code is frozen into the agent, and its PyPI dependencies.
SOURCE_PACKAGES = ("agent", "sysclone")
DEPENDENCIES = ("pyudev", "pyparted", "blkinfo", "pyroute2")

# Never used on a client, though something may mention them.
EXCLUDES = (
    "tkinter", "_tkinter", "pydoc", "pydoc_data", "doctest", "lib2to3", "distutils",
    "setuptools", "pip", "ensurepip", "idlelib", "turtle", "turtledemo", "venv", "curses",
    "_curses", "readline", "test", "unittest.test", "_pydecimal", "xmlrpc", "rich",
    "imageserver", "bootenv", "kernels", "mkmedia", "ci", "sysclone.cli", "sysclone.ui",
    "sysclone.demo", "PyInstaller", "IPython", "pytest", "_pytest", "mypy", "ruff",
    # what the build environment's site machinery imported
    "site", "sitecustomize", "_distutils_hack", "_virtualenv",
    "_frozen_importlib", "_frozen_importlib_external",
    # compression formats and East Asian codecs the agent never reads
    "bz2", "_bz2", "lzma", "_lzma", "_codecs_cn", "_codecs_hk", "_codecs_iso2022",
    "_codecs_jp", "_codecs_kr", "_codecs_tw", "_multibytecodec",
    # Imported only on Windows or AIX, or inside the functions of what the
    # agent never does (FTP, SMTP, cookies, macOS plists, process pools:
    # its executors are threads), and the frozen copies of importlib's
    # bootstrap (the interpreter has them built in): modulefinder's static
    # graph reaches them, no run does.
    "asyncio.windows_events", "asyncio.windows_utils", "asyncio.proactor_events",
    "multiprocessing.popen_spawn_win32", "ctypes._aix", "nturl2path", "ftplib", "smtplib",
    "netrc", "plistlib", "http.cookiejar", "getpass", "concurrent.futures.process",
    "importlib._bootstrap", "importlib._bootstrap_external",
    # email.policy and what only it imports (http.client parses headers with
    # the compat32 policy; email.message imports policy inside functions),
    # and statistics (random imports it in its self-test) with fractions.
    "email.policy", "email.headerregistry", "email._header_value_parser",
    "email.contentmanager", "statistics", "fractions",
    # what SCAN itself imports
    "modulefinder",
)

# Entry points beyond agent.main: imported lazily, inside functions.
ENTRY_MODULES = ("agent.main", "agent.flow")

# Third-party packages are taken from the runtime trace only (what selftest
# really imports), never from modulefinder's static graph: pyroute2 alone
# mentions ~330 modules (sqlite3, ssl, unittest...) the agent never loads.
RUNTIME_ONLY = ("pyroute2", "pyudev", "blkinfo", "parted", "_ped")

# Codecs: every pure-Python one.  Tools' output, file names and DHCP options
# can arrive in any of them, and a missing codec is a LookupError deep in a
# phase (an earlier, shorter list lacked utf-16-le, which json needs); the
# East Asian ones need the C modules left out above (_codecs_*).
ENCODINGS_SKIPPED = ("big5", "big5hkscs", "cp932", "cp949", "cp950", "euc_jis_2004",
                     "euc_jisx0213", "euc_jp", "euc_kr", "gb18030", "gb2312", "gbk", "hz",
                     "iso2022_jp", "iso2022_jp_1", "iso2022_jp_2", "iso2022_jp_2004",
                     "iso2022_jp_3", "iso2022_jp_ext", "iso2022_kr", "johab", "shift_jis",
                     "shift_jis_2004", "shift_jisx0213", "mbcs", "oem", "cp65001")

OPTIMIZE = 2  # python -OO: no docstrings or asserts in the bytecode
PYVER = f"{sys.version_info.major}.{sys.version_info.minor}"
WRAPPER = f"""#!/bin/sh
# The sysclone agent, on the boot environment's own Python.
exec /usr/bin/python{PYVER} -I -S -c \\
    'import sys; from agent.main import main; sys.exit(main())' "$@"
"""


# Beside the tree (not merged into the boot environment): the files the
# agent's start imports before its ready marker, one per line, relative to
# /usr/lib/pythonX.Y.
START_FILES = "start-files"

# Run on the frozen tree itself (its sourceless bytecode, the interpreter
# the boot environment gets): what importing agent.main.START_IMPORTS loads
# from it.  What the interpreter's own start loaded before (encodings) is
# the host's, and named in bootenv.squash.PYTHON_STARTUP.
START_SCAN = """
import importlib, sys
stdlib = sys.argv[1]
sys.path[:] = [stdlib, stdlib + "/lib-dynload"]
from agent.main import START_IMPORTS
for name in START_IMPORTS:
    importlib.import_module(name)
files = (getattr(m, "__file__", None) or "" for m in list(sys.modules.values()))
print("\\n".join(sorted(f[len(stdlib) + 1:] for f in files if f.startswith(stdlib + "/"))))
"""


@dataclass(frozen=True)
class FrozenAgent:
    """A tree to merge into the initramfs root, and the host binary to run it."""

    path: Path  # holds usr/lib/python3.X/... and usr/bin/sysclone-agent
    key: str
    python: str  # host path of the interpreter binary to install

    @property
    def executable(self) -> Path:
        return self.path / "usr/bin/sysclone-agent"

    def start_files(self) -> list[str]:
        """START_FILES' paths, relative to /usr/lib/pythonX.Y."""
        f = self.path / START_FILES
        return f.read_text().split() if f.is_file() else []


def python_binary() -> str:
    """The interpreter of this venv, resolved to the real binary."""
    return os.path.realpath(sys.executable)


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}.{sys.version_info.micro}"


def _source_files() -> list[Path]:
    files: list[Path] = []
    for pkg in SOURCE_PACKAGES:
        files += sorted((REPO / pkg).rglob("*.py"))
    return files


def freeze_key() -> str:
    h = hashlib.sha256()
    for f in _source_files():
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes() + b"\0")
    for dep in DEPENDENCIES:
        try:
            h.update(f"{dep}=={importlib.metadata.version(dep)}\n".encode())
        except importlib.metadata.PackageNotFoundError:
            raise SyscloneError(f"{dep} is not installed in this Python",
                                hint="pip install -e .") from None
    h.update(f"{python_binary()} {sys.version} {EXCLUDES} {ENTRY_MODULES} {RUNTIME_ONLY} "
             f"{ENCODINGS_SKIPPED} {OPTIMIZE} {FORMAT} {WRAPPER} {SCAN} {START_SCAN}".encode())
    return h.hexdigest()[:24]


SCAN = """
import json, modulefinder, sys
excludes, runtime_only, entries, skipped, repo = json.loads(sys.argv[1])
import encodings, pkgutil
encs = [m.name for m in pkgutil.iter_modules(encodings.__path__) if m.name not in skipped]
sys.path.insert(0, repo)
found = {}
mf = modulefinder.ModuleFinder(path=list(sys.path), excludes=excludes + runtime_only)
mf.run_script(repo + "/agent/main.py")
for name in entries:
    mf.import_hook(name)
for e in encs:
    mf.import_hook("encodings." + e)
for name, mod in mf.modules.items():
    if mod.__file__ and name != "__main__" and not name.startswith("encodings."):
        found[name] = mod.__file__
from agent.main import selftest
if selftest() != 0:
    sys.exit(3)
for name, mod in list(sys.modules.items()):
    f = getattr(mod, "__file__", None)
    if f and not any(name == e or name.startswith(e + ".") for e in excludes):
        found.setdefault(name, f)
for e in encs:
    found["encodings." + e] = mf.modules["encodings." + e].__file__
print(json.dumps(found, sort_keys=True))
"""


def scan_modules() -> dict[str, str]:
    """module name -> file, for every module the agent may import."""
    arg = json.dumps([list(EXCLUDES), list(RUNTIME_ONLY), list(ENTRY_MODULES),
                      list(ENCODINGS_SKIPPED), str(REPO)])
    out = run([sys.executable, "-I", "-c", SCAN, arg], cwd=REPO).stdout
    found: dict[str, str] = json.loads(out.strip().splitlines()[-1])
    return {n: f for n, f in found.items()
            if not any(n == e or n.startswith(e + ".") for e in EXCLUDES)
            and not n.startswith("__editable__")}  # pip's editable-install hook


def _dest(name: str, src: str) -> str | None:
    """Where a module goes, relative to the stdlib directory."""
    if src.endswith(".py"):
        if os.path.basename(src) == "__init__.py":
            return name.replace(".", "/") + "/__init__.pyc"
        return name.replace(".", "/") + ".pyc"
    if src.endswith(".so"):
        if "/lib-dynload/" in src:
            return "lib-dynload/" + os.path.basename(src)
        parts = name.split(".")
        return "/".join([*parts[:-1], os.path.basename(src)])
    return None


def freeze_agent(state: StateRoot, *, use_cache: bool = True) -> FrozenAgent:
    key = freeze_key()
    out = state.cache("agent", f"{key}")
    python = python_binary()
    if use_cache and (out / "usr/bin/sysclone-agent").is_file():
        return FrozenAgent(out, key, python)
    work = state.cache("agent", f".build-{key}")
    if work.exists():
        shutil.rmtree(work)
    stdlib = work / f"usr/lib/python{PYVER}"
    stdlib.mkdir(parents=True)
    for name, src in sorted(scan_modules().items()):
        rel = _dest(name, src)
        if rel is None:
            continue
        dst = stdlib / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.endswith(".py"):
            # dfile: tracebacks name the module's place in the boot environment.
            py_compile.compile(src, cfile=str(dst), dfile=f"/usr/lib/python{PYVER}/{rel[:-1]}",
                               optimize=OPTIMIZE, doraise=True,
                               invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
        else:
            shutil.copyfile(src, dst)
            dst.chmod(0o755)
            # Debian strips its own (lib-dynload); a wheel's may come with its
            # symbol table: pyparted's _ped, 0.3 MB of its 0.48.  Only what
            # the dynamic linker needs stays; strip is deterministic.
            run(["strip", "--strip-unneeded", str(dst)])
    wrapper = work / "usr/bin/sysclone-agent"
    wrapper.parent.mkdir(parents=True)
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    start = run([python, "-I", "-S", "-c", START_SCAN, str(stdlib)]).stdout
    (work / START_FILES).write_text(start)
    if out.exists():
        shutil.rmtree(out)
    work.rename(out)
    return FrozenAgent(out, key, python)
