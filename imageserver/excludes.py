"""What a capture leaves out, as rsync filter rules, and why.

In the order rsync applies them (the first rule that matches a path wins):

 1. contents of the golden client's pseudo, network and bind mounts
    (found in its mount list; see prepare.golden.skipped_mounts) -- never
    part of an image, whatever the other rules say;
 2. --exclude PATTERN and --exclude-from FILE, in the order given;
 3. /etc/sysclone/capture.exclude on the image server, if it exists;
 4. the built-in defaults below (--no-default-excludes drops them).

Exclude files use rsync's filter syntax, the part of it that makes sense
for a capture: `- PATTERN` (exclude), `+ PATTERN` (include, to re-include
something a later rule excludes), `exclude PATTERN`, `include PATTERN`, a
bare PATTERN (an exclude, as in --exclude-from), and `#` or `;` comments.
Merge rules, `!` and the receiver-side rules (protect, risk) are refused:
they would silently change what the other rules mean.  A file that does not
parse stops the capture before it starts, naming the file and line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from imageserver.prepare.golden import mount_rules, rsync_escape
from sysclone.errors import ConfigError

SERVER_FILE = Path("/etc/sysclone/capture.exclude")

# (rule, why): printed by `image capture --help` and recorded with each capture.
DEFAULTS: tuple[tuple[str, str], ...] = (
    ("- /proc/**", "kernel views, even where nothing is mounted"),
    ("- /sys/**", "kernel views, even where nothing is mounted"),
    ("- /run/**", "runtime state, rebuilt at every boot"),
    ("- /tmp/**", "temporary files"),
    ("- /var/tmp/**", "temporary files"),
    ("- /var/cache/apt/archives/*.deb", "downloaded packages"),
    ("- /var/cache/apt/archives/partial/**", "downloaded packages"),
    ("- /var/cache/dnf/**", "downloaded packages"),
    ("- /var/cache/yum/**", "downloaded packages"),
    ("- /etc/machine-id", "this machine's identity: stored empty, each clone makes its own"),
    ("- /var/lib/dbus/machine-id", "this machine's identity"),
    ("- /var/lib/systemd/random-seed", "this machine's random seed"),
    ("- /swapfile", "swap files hold memory contents"),
    ("- /swap.img", "swap files hold memory contents"),
)

_RULE = re.compile(r"^(?P<kind>[-+])(?:,?(?P<mods>[/!srpx]+))? (?P<pat>.*)\Z|"
                   r"^(?P<word>exclude|include)(?:,(?P<wmods>[/!srpx]+))? (?P<wpat>.*)\Z")
_REFUSED = re.compile(r"^(?:[.:!PRHS]|merge|dir-merge|protect|risk|hide|show|clear)(?:[ ,]|\Z)")
MAX_PATTERN = 4096


@dataclass(frozen=True)
class Rule:
    text: str  # a normalized rsync filter rule: "- PATTERN" or "+ PATTERN"
    origin: str  # where it came from, for messages and the version's record


def _check_pattern(pat: str, where: str) -> None:
    if not pat.strip():
        raise ConfigError(f"{where}: empty pattern")
    if len(pat.encode()) > MAX_PATTERN:
        raise ConfigError(f"{where}: pattern longer than {MAX_PATTERN} bytes")
    depth = 0
    escaped = False
    for c in pat:
        if escaped:
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == "[" and depth == 0:
            depth = 1
        elif c == "]" and depth:
            depth = 0
    if escaped:
        raise ConfigError(f"{where}: pattern {pat!r} ends with a lone backslash")
    if depth:
        raise ConfigError(f"{where}: pattern {pat!r} has a '[' without its ']'",
                          hint="escape a literal bracket as \\[")


def parse_rule(line: str, where: str) -> Rule | None:
    """One line of an exclude file (or one --exclude); None for comments."""
    if "\0" in line:
        raise ConfigError(f"{where}: NUL byte in a rule")
    if not line.strip() or line.lstrip().startswith(("#", ";")):
        return None
    m = _RULE.match(line)
    if m:
        sign = m.group("kind") or ("-" if m.group("word") == "exclude" else "+")
        mods = m.group("mods") or m.group("wmods") or ""
        pat = m.group("pat") if m.group("kind") else m.group("wpat")
        _check_pattern(pat, where)
        return Rule(f"{sign}{',' + mods if mods else ''} {pat}", where)
    if line[0] in "+-":
        raise ConfigError(f"{where}: {line[:60]!r} does not parse as a filter rule",
                          hint="write '- PATTERN' or '+ PATTERN' (a space after the sign)")
    if _REFUSED.match(line):
        raise ConfigError(f"{where}: {line[:60]!r}: only include and exclude rules are "
                          "allowed in a capture's filter")
    _check_pattern(line, where)
    return Rule(f"- {line}", where)


def read_file(path: Path) -> list[Rule]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read exclude file {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    rules = []
    for i, line in enumerate(text.splitlines(), 1):
        r = parse_rule(line.rstrip("\r"), f"{path}:{i}")
        if r:
            rules.append(r)
    return rules


def default_rules() -> list[Rule]:
    return [Rule(rule, f"default: {why}") for rule, why in DEFAULTS]


def skipped_mount_rules(skipped: Iterable[tuple[str, str]]) -> list[Rule]:
    skipped = list(skipped)
    try:
        texts = mount_rules(skipped)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return [Rule(t, f"mount {target}: {why}")
            for t, (target, why) in zip(texts, skipped, strict=True)]


def literal_exclude(path: str, why: str) -> Rule:
    """Exclude everything below an absolute path (the store itself, when the
    image server captures its own root)."""
    return Rule(f"- {rsync_escape(path.rstrip('/'))}/**", why)


@dataclass(frozen=True)
class ExcludeOptions:
    patterns: tuple[str, ...] = ()  # --exclude
    files: tuple[Path, ...] = ()  # --exclude-from
    defaults: bool = True
    server_file: Path | None = SERVER_FILE


def user_rules(opts: ExcludeOptions) -> list[Rule]:
    """Steps 2-4 above; every file is read and checked now, before anything runs."""
    rules: list[Rule] = []
    for i, pat in enumerate(opts.patterns, 1):
        r = parse_rule(pat, f"--exclude #{i}")
        if r:
            rules.append(r)
    for f in opts.files:
        rules += read_file(f)
    if opts.server_file and opts.server_file.is_file():
        rules += read_file(opts.server_file)
    if opts.defaults:
        rules += default_rules()
    return rules


def render(rules: Iterable[Rule]) -> str:
    """A filter file for rsync's --filter='merge FILE'."""
    return "".join(r.text + "\n" for r in rules)


def help_text() -> str:
    width = max(len(r) for r, _ in DEFAULTS)
    lines = [f"  {r.ljust(width)}  {why}" for r, why in DEFAULTS]
    return "\n".join(lines)
