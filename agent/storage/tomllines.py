"""Where each table and key of a TOML document is: tomllib keeps no
positions, and layout errors name their line."""

from __future__ import annotations

import re
from typing import Any

Key = tuple[Any, ...]

_HEADER = re.compile(r"\s*(\[\[?)\s*([A-Za-z0-9_-]+(?:\s*\.\s*[A-Za-z0-9_-]+)*)\s*\]\]?\s*(#.*)?$")


class Lines:
    """Where each table and key of the document is.  A table is keyed by
    its path with array indexes: ("disk", 0, "part", 2) is the third
    [[disk.part]] of the first [[disk]]; ("bootloader",) a plain table."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()
        self.starts: dict[Key, int] = {}
        self.order: list[int] = []  # header line numbers
        counts: dict[Key, int] = {}
        latest: dict[tuple[str, ...], Key] = {}
        quote: str | None = None
        for n, raw in enumerate(self.lines, 1):
            if quote is not None:  # inside a multi-line string
                if raw.count(quote) % 2:
                    quote = None
                continue
            for q in ('"""', "'''"):
                if raw.count(q) % 2:
                    quote = q
            m = _HEADER.match(raw)
            if not m:
                continue
            path = tuple(p.strip() for p in m.group(2).split("."))
            parent: Key = latest.get(path[:-1], ()) if len(path) > 1 else ()
            if m.group(1) == "[[":
                base = (*parent, path[-1])
                index = counts.get(base, 0)
                counts[base] = index + 1
                key = (*base, index)
                latest[path] = key
            else:
                key = (*parent, path[-1])
            self.starts[key] = n
            self.order.append(n)

    def table(self, key: Key) -> int | None:
        return self.starts.get(key)

    def key(self, table: Key, name: str) -> int | None:
        """The line of `name = ...` inside `table` (the top level for ())."""
        start = self.starts.get(table, 0) if table else 0
        if table and table not in self.starts:
            return None
        end = next((h for h in self.order if h > start), len(self.lines) + 1)
        rx = re.compile(rf"\s*{re.escape(name)}\s*=")
        for n in range(start + 1, end):
            if rx.match(self.lines[n - 1]):
                return n
        return self.starts.get(table) if table else None
