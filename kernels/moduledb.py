"""What a kernel's modules are, from the indexes in lib/modules/<kver>.

    modules.dep              module path: the paths it needs (depmod)
    modules.alias            alias PATTERN module (depmod; fnmatch patterns)
    modules.softdep          softdep module pre: ... post: ... (depmod)
    modules.builtin          paths of the modules built into the kernel
    modules.builtin.modinfo  their modinfo, NUL-separated `name.key=value`
    modules.firmware         ours: module: the firmware files it declares

modules.firmware is written when a kernel is added (`write_firmware_index`,
one modinfo run over every module), so a boot environment build and
`bootenv check` read it instead of opening thousands of modules.  The
lookups follow libkmod's: a modalias matches every module one of whose
alias patterns it fits (fnmatch), built-in modules included; names
compare with '-' and '_' alike.
"""

from __future__ import annotations

import fnmatch
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from sysclone.errors import ConfigError
from sysclone.run import run

log = logging.getLogger(__name__)

FIRMWARE_INDEX = "modules.firmware"
MODINFO_BATCH = 400  # module files per modinfo run (argv stays far below ARG_MAX)
# How much of an alias pattern's literal head indexes it: "pci:v00008086d0"
# leaves a few dozen candidates of thousands for an Intel device.
_HEAD = 15


def module_name(path: str) -> str:
    """kernel/drivers/net/virtio_net.ko.xz -> virtio_net"""
    return normalize(path.rsplit("/", 1)[-1].split(".ko", 1)[0])


def normalize(name: str) -> str:
    return name.replace("-", "_")


@dataclass(frozen=True)
class Module:
    name: str
    path: str  # relative to lib/modules/<kver>; "" for a built-in one
    depends: tuple[str, ...] = ()  # names
    aliases: tuple[str, ...] = ()  # patterns
    firmware: tuple[str, ...] = ()  # files it declares (relative to /lib/firmware)
    soft_pre: tuple[str, ...] = ()  # names or aliases
    soft_post: tuple[str, ...] = ()

    @property
    def builtin(self) -> bool:
        return not self.path


@dataclass(frozen=True)
class AliasTable:
    """Alias patterns of some modules, looked up as libkmod does.  Patterns
    are grouped by their literal head (up to the first wildcard) so a
    lookup tries only those that can match."""

    patterns: tuple[tuple[str, str], ...]  # (pattern, module name)
    _index: dict[str, list[tuple[str, re.Pattern[str], str]]] = field(
        default_factory=dict, compare=False, repr=False)

    def _build(self) -> None:
        for pattern, mod in self.patterns:
            head = re.split(r"[*?\[]", pattern, maxsplit=1)[0][:_HEAD]
            self._index.setdefault(head, []).append(
                (pattern, re.compile(fnmatch.translate(pattern)), mod))

    def lookup(self, modalias: str) -> list[str]:
        """Module names whose patterns `modalias` fits, in table order."""
        if not self._index and self.patterns:
            self._build()
        out: list[str] = []
        for n in range(min(_HEAD, len(modalias)) + 1):
            for _pattern, rx, mod in self._index.get(modalias[:n], ()):
                if mod not in out and rx.match(modalias):
                    out.append(mod)
        return out

    def __len__(self) -> int:
        return len(self.patterns)


def parse_dep(text: str) -> dict[str, tuple[str, ...]]:
    """modules.dep: path -> paths it needs."""
    deps: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        if ":" in line:
            mod, rest = line.split(":", 1)
            deps[mod.strip()] = tuple(rest.split())
    return deps


def parse_alias(text: str) -> list[tuple[str, str]]:
    """modules.alias: (pattern, module) in file order."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            out.append((parts[1], normalize(parts[2])))
    return out


def parse_softdep(text: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """modules.softdep: module -> (pre, post)."""
    out: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 2 or parts[0] != "softdep":
            continue
        pre: list[str] = []
        post: list[str] = []
        cur: list[str] | None = None
        for w in parts[2:]:
            if w == "pre:":
                cur = pre
            elif w == "post:":
                cur = post
            elif cur is not None:
                cur.append(w)
        old = out.get(normalize(parts[1]), ((), ()))
        out[normalize(parts[1])] = (old[0] + tuple(pre), old[1] + tuple(post))
    return out


def parse_builtin_modinfo(data: bytes) -> dict[str, list[str]]:
    """modules.builtin.modinfo: built-in module -> its alias patterns (a
    built-in without aliases maps to [])."""
    out: dict[str, list[str]] = {}
    for entry in data.split(b"\0"):
        text = entry.decode("utf-8", "replace")
        name, dot, rest = text.partition(".")
        if not dot or "=" not in rest:
            continue
        key, _, value = rest.partition("=")
        aliases = out.setdefault(normalize(name), [])
        if key == "alias":
            aliases.append(value)
    return out


def parse_firmware_index(text: str) -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        mod, colon, rest = line.partition(":")
        if colon:
            out[normalize(mod.strip())] = tuple(rest.split())
    return out


def parse_modinfo(output: str) -> dict[str, tuple[str, ...]]:
    """`modinfo -0 FILE...`: module name -> the firmware it declares.  Each
    module starts with `filename:  PATH`, then `key=value` entries."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for entry in output.split("\0"):
        entry = entry.strip("\n")
        if entry.startswith("filename:"):
            current = out.setdefault(module_name(entry.split(":", 1)[1].strip()), [])
        elif entry.startswith("firmware=") and current is not None:
            fw = entry.split("=", 1)[1].strip()
            if fw and fw not in current:
                current.append(fw)
    return {k: tuple(v) for k, v in out.items()}


def write_firmware_index(modules_dir: Path) -> dict[str, tuple[str, ...]]:
    """Run modinfo over every module of the tree and write modules.firmware."""
    deps = parse_dep(_read(modules_dir, "modules.dep"))
    found: dict[str, tuple[str, ...]] = {}
    paths = sorted(deps)
    for i in range(0, len(paths), MODINFO_BATCH):
        batch = [str(modules_dir / p) for p in paths[i:i + MODINFO_BATCH]]
        found.update(parse_modinfo(run(["modinfo", "-0", *batch]).stdout))
    lines = [f"{module_name(p)}: {' '.join(found.get(module_name(p), ()))}".rstrip()
             for p in paths]
    tmp = modules_dir / f".{FIRMWARE_INDEX}.tmp"
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(modules_dir / FIRMWARE_INDEX)
    return found


def _read(modules_dir: Path, name: str, required: bool = True) -> str:
    p = modules_dir / name
    if not p.is_file():
        if required:
            raise ConfigError(f"{p} is missing", hint="run depmod for this kernel "
                              "(sysclone kernel add does)")
        return ""
    return p.read_text(errors="replace")


@dataclass(frozen=True)
class ModuleDB:
    """Every module of one kernel, loadable and built in."""

    kver: str
    modules: dict[str, Module]  # by normalized name

    @classmethod
    def load(cls, modules_dir: Path) -> ModuleDB:
        dep = parse_dep(_read(modules_dir, "modules.dep"))
        alias = parse_alias(_read(modules_dir, "modules.alias", required=False))
        soft = parse_softdep(_read(modules_dir, "modules.softdep", required=False))
        fw_file = modules_dir / FIRMWARE_INDEX
        fw = parse_firmware_index(fw_file.read_text()) if fw_file.is_file() \
            else write_firmware_index(modules_dir)
        builtin_file = modules_dir / "modules.builtin.modinfo"
        builtin = parse_builtin_modinfo(builtin_file.read_bytes()) \
            if builtin_file.is_file() else {}
        for p in _read(modules_dir, "modules.builtin", required=False).split():
            builtin.setdefault(module_name(p), [])
        aliases: dict[str, list[str]] = {}
        for pattern, mod in alias:
            aliases.setdefault(mod, []).append(pattern)
        mods: dict[str, Module] = {}
        for name, pats in builtin.items():
            mods[name] = Module(name, "", aliases=tuple(pats))
        for path, needs in dep.items():
            name = module_name(path)
            pre, post = soft.get(name, ((), ()))
            mods[name] = Module(name, path, tuple(module_name(d) for d in needs),
                                tuple(aliases.get(name, ())), fw.get(name, ()), pre, post)
        return cls(modules_dir.name, mods)

    @cached_property
    def aliases(self) -> AliasTable:
        return AliasTable(tuple((p, m.name) for m in self.modules.values() for p in m.aliases))

    def get(self, name: str) -> Module | None:
        return self.modules.get(normalize(name))

    @property
    def loadable(self) -> list[Module]:
        return [m for m in self.modules.values() if not m.builtin]

    def lookup(self, modalias: str) -> list[str]:
        """Module names (built-in ones included) matching a modalias, or the
        module of that name (as modprobe takes either)."""
        if self.get(modalias) is not None:
            return [normalize(modalias)]
        return self.aliases.lookup(modalias)

    def match(self, names_or_globs: Iterable[str]) -> list[str]:
        """Module names for names or shell globs (`mlx5_*`, `drivers/net/*`
        for paths); ConfigError naming any that matches nothing."""
        out: list[str] = []
        unknown: list[str] = []
        for item in names_or_globs:
            key = normalize(item)
            if any(c in item for c in "*?["):
                hits = [m.name for m in self.modules.values()
                        if fnmatch.fnmatchcase(m.name, key)
                        or (m.path and fnmatch.fnmatchcase(m.path, f"kernel/{item}"))]
            else:
                hits = [key] if key in self.modules else []
            if not hits:
                unknown.append(item)
            out += [h for h in sorted(hits) if h not in out]
        if unknown:
            raise ConfigError(f"kernel {self.kver} has no module {', '.join(unknown)}",
                              hint="module names as lsmod prints them, or shell globs; "
                                   "see lib/modules/<kver>/modules.dep of the kernel")
        return out

    def closure(self, names: Iterable[str]) -> list[str]:
        """`names` plus everything they need to load (modules.dep) and their
        soft dependencies (resolved like modprobe does: a name or an alias),
        built-in ones left out."""
        todo = [normalize(n) for n in names]
        done: set[str] = set()
        while todo:
            n = todo.pop()
            if n in done:
                continue
            m = self.modules.get(n)
            if m is None:
                continue
            done.add(n)
            todo += m.depends
            for soft in m.soft_pre + m.soft_post:
                todo += self.lookup(soft)
        return sorted(n for n in done if not self.modules[n].builtin)

    def paths(self, names: Sequence[str]) -> list[str]:
        return [self.modules[n].path for n in names if self.modules[n].path]


def kernel_aliases(modules_dir: Path) -> AliasTable:
    """Every alias pattern of a kernel, loadable and built-in modules alike
    (no firmware index needed): what `bootenv check` names a missing
    driver from."""
    pairs = parse_alias(_read(modules_dir, "modules.alias"))
    builtin_file = modules_dir / "modules.builtin.modinfo"
    if builtin_file.is_file():
        pairs += [(p, m) for m, pats in parse_builtin_modinfo(builtin_file.read_bytes()).items()
                  for p in pats]
    return AliasTable(tuple(pairs))


def loaded_modules(text: str) -> list[str]:
    """Module names from a /proc/modules or `lsmod` listing."""
    names: list[str] = []
    lines = text.splitlines()
    if lines and lines[0].split()[:1] == ["Module"]:
        lines = lines[1:]  # lsmod's header
    for number, line in enumerate(lines, 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not parts[1].isdigit() or not re.match(r"^[\w-]+$", parts[0]):
            raise ConfigError(f"line {number}: expected a /proc/modules or lsmod line "
                              f"(NAME SIZE USES ...), got {line.strip()[:60]!r}")
        names.append(normalize(parts[0]))
    if not names:
        raise ConfigError("the module listing names no module",
                          hint="save /proc/modules or `lsmod` of the golden client")
    return names


def idle_modules(text: str) -> list[str]:
    """The modules of a listing (already accepted by loaded_modules) that
    nothing used: a use count of 0.  A mounted filesystem, an active md
    array or device-mapper table holds a reference on its module, so an
    idle storage module says the client did not use that stack: systemd
    loads dm_mod and loop at every boot (modprobe@dm_mod.service) whether
    or not there is any LVM."""
    lines = text.splitlines()
    if lines and lines[0].split()[:1] == ["Module"]:
        lines = lines[1:]
    return [normalize(parts[0]) for parts in map(str.split, lines)
            if len(parts) >= 3 and parts[2] == "0"]
