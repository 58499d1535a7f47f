"""Debian version numbers and dependency fields.

Versions compare the way dpkg compares them (epoch, then upstream version,
then Debian revision; `~` sorts before everything, even the end of the
string), which is what "the newest version" and `(>= 4.3~)` mean in the
archive.  Dependency fields are parsed into alternatives of relations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cmp_to_key

_VERSION_RE = re.compile(r"^(?:(\d+):)?([0-9][A-Za-z0-9.+~:-]*?)(?:-([A-Za-z0-9.+~]+))?$")


def _order(c: str) -> int:
    # dpkg's order for the non-digit parts: `~` first, then the end of the
    # part, then letters, then everything else.
    if c == "~":
        return -1
    if c.isalpha():
        return ord(c)
    return ord(c) + 256


def _compare_part(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        first_diff = 0
        while (i < len(a) and not a[i].isdigit()) or (j < len(b) and not b[j].isdigit()):
            ac = _order(a[i]) if i < len(a) and not a[i].isdigit() else 0
            bc = _order(b[j]) if j < len(b) and not b[j].isdigit() else 0
            if ac != bc:
                return -1 if ac < bc else 1
            i += 1
            j += 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        while i < len(a) and a[i].isdigit() and j < len(b) and b[j].isdigit():
            if not first_diff:
                first_diff = ord(a[i]) - ord(b[j])
            i += 1
            j += 1
        if i < len(a) and a[i].isdigit():
            return 1
        if j < len(b) and b[j].isdigit():
            return -1
        if first_diff:
            return -1 if first_diff < 0 else 1
    return 0


def split_version(version: str) -> tuple[int, str, str]:
    """(epoch, upstream, revision); ValueError if it is not a Debian version."""
    m = _VERSION_RE.match(version.strip())
    if not m:
        raise ValueError(f"not a Debian version: {version!r}")
    epoch, upstream, revision = m.groups()
    return int(epoch or 0), upstream, revision or ""


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as dpkg --compare-versions orders `a` and `b`."""
    ea, ua, ra = split_version(a)
    eb, ub, rb = split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _compare_part(ua, ub) or _compare_part(ra, rb)


version_key = cmp_to_key(compare_versions)

_OPS = {
    "<<": lambda c: c < 0,
    "<=": lambda c: c <= 0,
    "=": lambda c: c == 0,
    ">=": lambda c: c >= 0,
    ">>": lambda c: c > 0,
    # Obsolete spellings that dpkg still reads as <= and >=.
    "<": lambda c: c <= 0,
    ">": lambda c: c >= 0,
}


@dataclass(frozen=True)
class Relation:
    """One `name:arch (op version)` of a dependency field."""

    name: str
    op: str | None = None
    version: str | None = None
    arch: str | None = None  # the `:any` / `:native` / `:amd64` qualifier

    def satisfied_by(self, version: str) -> bool:
        if self.op is None or self.version is None:
            return True
        return bool(_OPS[self.op](compare_versions(version, self.version)))

    def __str__(self) -> str:
        name = f"{self.name}:{self.arch}" if self.arch else self.name
        return f"{name} ({self.op} {self.version})" if self.op else name


_RELATION_RE = re.compile(
    r"""^\s*
    (?P<name>[a-z0-9][a-z0-9+.-]*)
    (?::(?P<arch>[a-z0-9-]+))?
    \s*(?:\(\s*(?P<op><<|<=|>=|>>|=|<|>)\s*(?P<version>[0-9A-Za-z][^\s)]*)\s*\))?
    \s*(?:\[[^\]]*\])?            # architecture restriction (source packages)
    \s*(?:<[^>]*>\s*)*            # build profiles (source packages)
    $""",
    re.VERBOSE,
)


def parse_relations(field: str) -> list[tuple[Relation, ...]]:
    """Parse a Depends-like field into a list of groups of alternatives:
    `a (>= 1) | b:any, c` -> [(a>=1, b), (c,)].  ValueError if malformed."""
    groups: list[tuple[Relation, ...]] = []
    for group in " ".join(field.split()).split(","):
        if not group.strip():
            continue
        alternatives = []
        for alt in group.split("|"):
            m = _RELATION_RE.match(alt)
            if not m:
                raise ValueError(f"malformed relation {alt.strip()!r} in {field!r}")
            alternatives.append(
                Relation(m["name"], m["op"], m["version"], m["arch"])
            )
        groups.append(tuple(alternatives))
    return groups
