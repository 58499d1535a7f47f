"""Sources of install parameters, each read into a named `Layer`.

A layer holds the typed settings one source gave, with where each came from
(the source's name, a line or option number, the key as spelled).  Values are
checked when the layer is built: a known parameter with a bad value, or an
unknown name in sysclone's namespaces (si., rd.sis., sysclone.), raises
`ConfigError` naming it and the source; unknown local.cfg VARIABLES and
uses of deprecated names only add warnings.  Nothing is read at import.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import MappingProxyType

from agent.params.kinds import BadValue, Kind, Shape, parse_bool
from agent.params.table import CMDLINE_KEYS, LOCAL_KEYS, PARAMS, Alias, Param
from sysclone.errors import ConfigError

# Not typing's: the agent's start does without typing (0.3 s under TCG).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


STRICT_PREFIXES = ("si.", "rd.sis.", "sysclone.")
"""Namespaces that are sysclone's (and SystemImager's): an unknown name in
them is an error wherever it is read, never ignored."""


class Source(IntEnum):
    """Kinds of sources, lowest precedence first: a later one overrides an
    earlier one (SystemImager 4.9: a server config beats the command line;
    local.cfg beats DHCP, and the one on the boot medium -- 4.3's floppy --
    beats the initrd's).  SystemImager also read a /local.cfg left on the
    client's old disk; sysclone does not mount a disk it is about to
    overwrite to look for one."""

    DEFAULT = 0
    DHCP = 1
    CMDLINE = 2
    LOCAL_CFG_INITRD = 3
    LOCAL_CFG_MEDIUM = 5
    SERVER = 6

    @property
    def label(self) -> str:
        return _LABELS[self]

    @property
    def is_local_cfg(self) -> bool:
        return self in (Source.LOCAL_CFG_INITRD, Source.LOCAL_CFG_MEDIUM)


_LABELS = {
    Source.DEFAULT: "default",
    Source.DHCP: "DHCP",
    Source.CMDLINE: "kernel command line",
    Source.LOCAL_CFG_INITRD: "local.cfg in the initrd",
    Source.LOCAL_CFG_MEDIUM: "local.cfg on the boot medium",
    Source.SERVER: "server config",
}


@dataclass(frozen=True)
class Setting:
    """One value of one parameter from one source."""

    param: Param
    value: Any
    raw: str
    key: str  # as spelled in the source: si.image-server, IMAGESERVER, option 140
    source: Source
    layer: str  # the layer's name: "kernel command line", "local.cfg at /local.cfg"
    detail: str | None = None  # line 12, option 140

    @property
    def where(self) -> str:
        """The source for messages: 'local.cfg at /local.cfg, line 12'."""
        return f"{self.layer}, {self.detail}" if self.detail else self.layer

    def describe(self) -> str:
        """Where it came from, with the key when it was not the canonical name."""
        if self.key != self.param.name:
            return f"{self.where} (as {self.key})"
        return self.where


@dataclass(frozen=True)
class Layer:
    """The settings of one source.  For a scalar or list parameter a layer
    holds its last occurrence; for a repeatable one, all of them in order."""

    source: Source
    name: str
    settings: Mapping[str, tuple[Setting, ...]] = field(
        default_factory=lambda: MappingProxyType({}))
    warnings: tuple[str, ...] = ()

    def __contains__(self, name: object) -> bool:
        return name in self.settings

    def get(self, name: str) -> Setting | None:
        """The setting of a scalar or list parameter (its canonical name)."""
        found = self.settings.get(name)
        return found[-1] if found else None

    def value(self, name: str, default: Any = None) -> Any:
        """The typed value this layer gives (for a repeatable: a tuple of all)."""
        found = self.settings.get(name)
        if not found:
            return default
        if found[0].param.shape is Shape.REPEATABLE:
            return tuple(s.value for s in found)
        return found[-1].value


def bad_value(key: str, p: Param, raw: str, reason: str, where: str,
              suggestion: str | None = None, hint: str | None = None) -> ConfigError:
    """The one-line error for a bad value: names the parameter (and its
    canonical name if spelled otherwise), the value, why, and the source."""
    shown = key if key == p.name else f"{key} ({p.name})"
    return ConfigError(
        f"{shown}: {raw!r} {reason} ({where})",
        hint=f"did you mean {suggestion!r}?" if suggestion else hint,
        parameter=p.name, key=key, value=raw, source=where,
    )


class _Builder:
    """Collects a layer's settings, converting each value as it comes."""

    def __init__(self, source: Source, name: str) -> None:
        self.source = source
        self.name = name
        self.settings: dict[str, list[Setting]] = {}
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)

    def set(self, p: Param, alias: Alias | None, key: str, raw: str | None,
            detail: str | None = None) -> None:
        """Record one occurrence.  raw None is a bare flag (no '=')."""
        where = f"{self.name}, {detail}" if detail else self.name
        if alias is not None and alias.flag_value is not None:
            try:
                on = parse_bool(raw or "")
            except BadValue as e:
                raise bad_value(key, p, raw or "", e.reason, where) from None
            if on:
                self._store(p, key, alias.flag_value, p.parse(alias.flag_value), detail)
            return
        if raw is None and p.kind is not Kind.BOOL:
            example = f"{p.name}={p.metavar().split('|')[0]}"
            raise ConfigError(f"{key}: needs a value, as in {example} ({where})",
                              parameter=p.name, key=key, source=where)
        text = "" if raw is None else raw
        if text.strip() == "" and p.kind is not Kind.BOOL:
            # Empty means unset, as `test -z` did in 4.x: forget this source's
            # earlier occurrence, let lower-precedence sources show through.
            # An empty repeatable adds nothing.
            if p.shape is not Shape.REPEATABLE:
                self.settings.pop(p.name, None)
            return
        try:
            value = p.parse(text)
        except BadValue as e:
            raise bad_value(key, p, text, e.reason, where, e.suggestion) from None
        self._store(p, key, text, value, detail)

    def _store(self, p: Param, key: str, raw: str, value: Any, detail: str | None) -> None:
        if p.shape is Shape.REPEATABLE:
            items = self.settings.setdefault(p.name, [])
            for item in value:
                items.append(Setting(p, item, raw, key, self.source, self.name, detail))
        else:
            self.settings[p.name] = [Setting(p, value, raw, key, self.source, self.name, detail)]

    def unknown(self, key: str, known: Iterable[str], detail: str | None = None, *,
                strict: bool = False) -> None:
        """An unknown name: a warning, or with `strict` (names in sysclone's
        own namespaces, where an unknown one is a typo) a ConfigError."""
        where = f"{self.name}, {detail}" if detail else self.name
        if key.startswith("sysclone."):
            raise ConfigError(f"{key}: unknown parameter ({where})",
                              hint="the agent reads no sysclone.* parameters; install "
                                   "parameters are si.* ('sysclone params' lists them)",
                              key=key, source=where)
        from difflib import get_close_matches  # only for a name it does not know

        close = get_close_matches(key, list(known), n=1, cutoff=0.75)
        if strict:
            raise ConfigError(f"{key}: unknown install parameter ({where})",
                              hint=f"did you mean {close[0]}?" if close
                              else "'sysclone params' lists them all", key=key, source=where)
        hint = f"; did you mean {close[0]}?" if close else ""
        self.warn(f"{where}: unknown parameter {key} ignored{hint}")

    def build(self) -> Layer:
        frozen = {name: tuple(items) for name, items in self.settings.items() if items}
        return Layer(self.source, self.name, MappingProxyType(frozen), tuple(self.warnings))


# -- kernel command line -----------------------------------------------------------------------

def split_cmdline(text: str) -> list[str]:
    """Split a kernel command line into words as the kernel does: at white
    space outside double quotes.  The quotes are removed (`a="x y"` and
    `"a=x y"` both give `a=x y`); there are no escapes.  Words after a bare
    (unquoted) `--` are for init, not the kernel, and are dropped."""
    words: list[str] = []
    current: list[str] = []
    in_word = in_quote = quoted = False
    for ch in text + " ":
        if ch == '"':
            in_quote = not in_quote
            in_word = quoted = True
        elif ch.isspace() and not in_quote:
            if in_word:
                word = "".join(current)
                if word == "--" and not quoted:
                    break
                words.append(word)
            current, in_word, quoted = [], False, False
        else:
            current.append(ch)
            in_word = True
    else:
        if in_word:  # an unbalanced quote runs to the end of the line
            words.append("".join(current).rstrip())
    return words


def parse_cmdline(text: str, *, name: str | None = None) -> Layer:
    """The install parameters on a kernel command line (the text of
    /proc/cmdline, or an APPEND line's arguments).

    `si.` names and the legacy aliases (exactly as spelled) are read; every
    other word (console=, initrd=, BOOT_IMAGE=, imageserver=) is ignored.  The
    last occurrence wins, except for repeatables (si.break), which collect
    every occurrence.  A bare boolean name means on.  Unknown `si.` names and
    deprecated names give warnings; a bad value raises ConfigError."""
    b = _Builder(Source.CMDLINE, name or Source.CMDLINE.label)
    if text.count('"') % 2:
        b.warn(f"{b.name}: unbalanced double quote; the rest of the line was read as one value")
    # Only the last occurrence of a scalar counts: earlier ones are not even
    # checked, so a bad value in a boot menu can be fixed by appending.
    occurrences: list[tuple[Param, Alias | None, str, str | None]] = []
    for word in split_cmdline(text):
        key, sep, raw = word.partition("=")
        value = raw if sep else None
        entry = CMDLINE_KEYS.get(key)
        if entry is None:
            # Other words belong to the kernel or init; si., rd.sis. and
            # sysclone. are ours, and an unknown one there is a typo that
            # must not be ignored (si.hostnme=, the old sysclone.bench=).
            if key.startswith(STRICT_PREFIXES):
                b.unknown(key, CMDLINE_KEYS, strict=True)
            continue
        p, alias = entry
        if alias is not None and alias.deprecated:
            b.warn(f"{b.name}: {key} is a deprecated name for {p.name}")
        occurrences.append((p, alias, key, value))
    last = {p.name: i for i, (p, _, _, _) in enumerate(occurrences)}
    for i, (p, alias, key, value) in enumerate(occurrences):
        if p.shape is Shape.REPEATABLE or last[p.name] == i:
            b.set(p, alias, key, value)
    return b.build()


def read_cmdline(path: str | Path = "/proc/cmdline") -> Layer:
    """parse_cmdline() of a file, normally /proc/cmdline."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read the kernel command line from {path}: "
                          f"{e.strerror or e}") from None
    return parse_cmdline(text)


# -- local.cfg (VARIABLE=value, shell style) ------------------------------------------------------

_ASSIGNMENT = re.compile(r"(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*|si\.[A-Za-z0-9.-]+)=")
_VARREF = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class _SyntaxProblem(Exception):
    pass


def _shell_value(text: str, variables: Mapping[str, str]) -> tuple[str, list[str]]:
    """The value of a shell word: quotes removed, $VAR and ${VAR} expanded
    from earlier assignments (never the environment), then an optional
    comment.  Returns the value and the names of undefined variables."""
    out: list[str] = []
    undefined: list[str] = []
    i, n = 0, len(text)

    def expand(at: int) -> int:
        m = _VARREF.match(text, at)
        if m is None:
            if text.startswith("$(", at) or text.startswith("$((", at):
                raise _SyntaxProblem("command substitution $(...) is not supported")
            out.append("$")
            return at + 1
        var = m.group(1) or m.group(2)
        if var in variables:
            out.append(variables[var])
        else:
            undefined.append(var)
        return m.end()

    while i < n:
        ch = text[i]
        if ch in " \t":
            rest = text[i:].strip()
            if rest and not rest.startswith("#"):
                raise _SyntaxProblem(f"unexpected {rest!r} after the value (quote values "
                                     "with spaces)")
            break
        if ch == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise _SyntaxProblem("unterminated single quote")
            out.append(text[i + 1:end])
            i = end + 1
        elif ch == '"':
            i += 1
            while True:
                if i >= n:
                    raise _SyntaxProblem("unterminated double quote")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and i + 1 < n and text[i + 1] in '"\\$`':
                    out.append(text[i + 1])
                    i += 2
                elif c == "$":
                    i = expand(i)
                elif c == "`":
                    raise _SyntaxProblem("command substitution `...` is not supported")
                else:
                    out.append(c)
                    i += 1
        elif ch == "\\":
            if i + 1 < n:
                out.append(text[i + 1])
            i += 2
        elif ch == "$":
            i = expand(i)
        elif ch == "`":
            raise _SyntaxProblem("command substitution `...` is not supported")
        elif ch in ";&|<>()":
            raise _SyntaxProblem(f"unexpected {ch!r}: only VARIABLE=value lines are read")
        else:
            out.append(ch)
            i += 1
    return "".join(out), undefined


def parse_local_cfg(text: str, *, source: Source = Source.LOCAL_CFG_INITRD,
                    name: str | None = None) -> Layer:
    """The install parameters in a local.cfg text: `VARIABLE=value` lines,
    optionally prefixed by `export`, with # comments, single or double
    quotes and $VARIABLE references to earlier lines.  Variables are the
    legacy names (IMAGESERVER, ...), the derived ones (DL_PROTOCOL, ...) and
    the canonical si. names.  The last assignment wins.  Unknown variables
    give warnings (the file may set variables for custom scripts); a line
    that is not an assignment, a bad value or an unknown si. name raises
    ConfigError."""
    if source is Source.DEFAULT:
        raise ValueError("a local.cfg cannot be the defaults layer")
    b = _Builder(source, name or source.label)
    variables: dict[str, str] = {}
    found: dict[str, tuple[Param, Alias | None, str, str, str]] = {}
    repeated: list[tuple[Param, Alias | None, str, str, str]] = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        detail = f"line {number}"
        m = _ASSIGNMENT.match(stripped)
        if m is None:
            if re.fullmatch(r"export([ \t]+[A-Za-z_][A-Za-z0-9_]*)*", stripped):
                continue  # `export A B`: nothing to read
            raise ConfigError(f"{b.name}, {detail}: expected VARIABLE=value, "
                              f"got {_shorten(stripped)!r}", source=b.name)
        key = m.group(1)
        try:
            raw, undefined = _shell_value(stripped[m.end():], variables)
        except _SyntaxProblem as e:
            raise ConfigError(f"{b.name}, {detail}: {key}: {e}", source=b.name) from None
        for var in undefined:
            b.warn(f"{b.name}, {detail}: ${var} is not set earlier in the file; "
                   "it was replaced by nothing")
        variables[key] = raw
        entry = LOCAL_KEYS.get(key)
        if entry is None:
            # A VARIABLE may be meant for a site's own scripts; an si. name
            # can only be meant for us.
            b.unknown(key, LOCAL_KEYS, detail, strict=key.startswith(STRICT_PREFIXES))
            continue
        p, alias = entry
        occurrence = (p, alias, key, raw, detail)
        if p.shape is Shape.REPEATABLE:
            repeated.append(occurrence)
        else:
            found[p.name] = occurrence
    # Only the last assignment of each variable is converted (as sourcing
    # the file would leave it); repeatables keep them all.
    for p, alias, key, raw, detail in [*found.values(), *repeated]:
        b.set(p, alias, key, raw, detail)
    return b.build()


def read_local_cfg(path: str | Path, *, source: Source = Source.LOCAL_CFG_INITRD) -> Layer:
    """parse_local_cfg() of a file; the layer is named 'local.cfg at PATH'."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ConfigError(f"cannot read local.cfg at {path}: {e.strerror or e}") from None
    return parse_local_cfg(text, source=source, name=f"local.cfg at {path}")


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# -- DHCP ---------------------------------------------------------------------------------------

_DHCP_DEPRECATED = {100: 140}  # option 100 is "printer name"; 4.x used it before 140


def dhcp_layer(options: Mapping[int | str, str | bytes | None], *,
               name: str = "DHCP") -> Layer:
    """The install parameters a DHCP lease carried, from its options by
    number: 140 image server, 141 log server port, 142 SSH download URL,
    143 Flamethrower port base (SystemImager's private options), plus 144
    tmpfs staging, 12 host name, 15 domain name and 7 log server (the first),
    and 100 as the image server when 140 is missing (deprecated).  Other
    options are ignored."""
    by_number: dict[int, str] = {}
    for number, value in options.items():
        try:
            key = int(number)
        except ValueError:
            continue
        if value is None:
            continue
        text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        by_number[key] = text.strip().strip('"').strip("\x00").strip()
    b = _Builder(Source.DHCP, name)
    for p in PARAMS:
        for option in p.dhcp:
            raw = by_number.get(option, "")
            if option == 7:
                raw = re.split(r"[\s,]+", raw)[0] if raw else ""
            if option == 12 and raw in ("localhost", "(none)"):
                raw = ""
            if not raw:
                continue
            if option in _DHCP_DEPRECATED:
                b.warn(f"{name}: option {option} is deprecated for {p.name}; "
                       f"use option {_DHCP_DEPRECATED[option]}")
            b.set(p, None, p.name, raw, f"option {option}")
            break
    return b.build()


# -- server config ------------------------------------------------------------------------------

def server_layer(data: Mapping[str, Any], *, name: str = Source.SERVER.label) -> Layer:
    """The install parameters of a config fetched from the image server, as
    a mapping (decoded JSON): keys are canonical names, legacy names or
    local.cfg variables; values are text, numbers, booleans, lists (for list
    and repeatable parameters) or None (unset).  A VARIABLE=value file from
    the server goes through parse_local_cfg(source=Source.SERVER) instead."""
    b = _Builder(Source.SERVER, name)
    for key, value in data.items():
        entry = CMDLINE_KEYS.get(key) or LOCAL_KEYS.get(key)
        if entry is None:
            b.unknown(key, [*CMDLINE_KEYS, *LOCAL_KEYS], strict=key.startswith(STRICT_PREFIXES))
            continue
        if value is None:
            continue
        p, alias = entry
        if isinstance(value, list | tuple):
            if not p.multiple:
                raise bad_value(key, p, repr(value), "is a list, expected a single value",
                                name)
            items = [_scalar_text(key, p, v, name) for v in value]
            if p.shape is Shape.REPEATABLE:
                for item in items:
                    b.set(p, alias, key, item)
            elif items:
                b.set(p, alias, key, ",".join(items))
            continue
        b.set(p, alias, key, _scalar_text(key, p, value, name))
    return b.build()


def _scalar_text(key: str, p: Param, value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int | str):
        return str(value)
    raise bad_value(key, p, repr(value), f"is a {type(value).__name__}, expected text", where)


# -- defaults -----------------------------------------------------------------------------------

def defaults_layer() -> Layer:
    """Every parameter's default, as the lowest layer."""
    b = _Builder(Source.DEFAULT, Source.DEFAULT.label)
    for p in PARAMS:
        if p.default is None or p.default == ():
            continue
        b.settings[p.name] = [Setting(p, p.default, p.format_value(p.default), p.name,
                                      Source.DEFAULT, b.name)]
    return b.build()
